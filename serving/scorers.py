"""The two estimator kinds at prediction time, with exact additive explanations of their margin.

Both expose `margin(X)` and `contributions(X) -> (phi, base)` such that
`phi.sum(axis=1) + base == margin(X)` to floating-point precision:
- `TreeScorer`: LightGBM's TreeSHAP (`pred_contrib=True`), bit-identical to shap's
  path-dependent TreeExplainer (reference/mlops.md §3) and cheap enough per request.
- `LinearScorer`: a penalised logistic regression evaluated with numpy alone, so serving needs
  no scikit-learn. Its contributions are coefᵢ·(zᵢ) with z the standardised, imputed input; the
  standardisation centres each column on its training mean, so this is the DESIGN's
  coefᵢ·(xᵢ − reference meanᵢ). A missing-value indicator's term is credited to its column.

Both serialise to plain text (a LightGBM model string, or JSON of coefficients): no pickle, no
skops, nothing that executes code on load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import lightgbm as lgb
import numpy as np


class Scorer(Protocol):
    kind: str

    def margin(self, X: np.ndarray) -> np.ndarray: ...

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def dumps(self) -> str: ...


@dataclass(frozen=True)
class LinearScorer:
    """Median imputation + missing indicators + standardisation + logistic coefficients.

    `indicator_of[k]` is the input column whose missingness the k-th indicator encodes.
    `mean`/`scale`/`coef` cover the imputed columns followed by the indicators.
    """

    impute: np.ndarray
    indicator_of: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    kind: str = "logistic"

    def _z(self, X: np.ndarray) -> np.ndarray:
        missing = np.isnan(X)
        filled = np.where(missing, self.impute, X)
        ind = missing[:, self.indicator_of].astype(float)
        return (np.hstack([filled, ind]) - self.mean) / self.scale

    @cached_property
    def folded(self) -> tuple[np.ndarray, np.ndarray, float]:
        """The model folded into weights on the raw input (NaN read as 0) and on its missing
        mask, plus one offset: imputation, indicators and standardisation are all linear, so
        the margin needs two matrix-vector products and no (n, p + k) intermediate."""
        p = len(self.impute)
        w = self.coef[:p] / self.scale[:p]
        v = self.coef[p:] / self.scale[p:]
        on_missing = self.impute * w
        np.add.at(on_missing, self.indicator_of, v)
        offset = self.intercept - float(self.mean[:p] @ w) - float(self.mean[p:] @ v)
        return w, on_missing, offset

    def margin(self, X: np.ndarray) -> np.ndarray:
        w, on_missing, offset = self.folded
        missing = np.isnan(X)
        observed = np.where(missing, 0.0, X)
        return rowwise_dot(observed, w) + rowwise_dot(missing.astype(float), on_missing) + offset

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        terms = self._z(X) * self.coef
        p = X.shape[1]
        phi = terms[:, :p].copy()
        np.add.at(phi.T, self.indicator_of, terms[:, p:].T)
        return phi, np.full(X.shape[0], self.intercept)

    def dumps(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "impute": self.impute.tolist(),
                "indicator_of": self.indicator_of.tolist(),
                "mean": self.mean.tolist(),
                "scale": self.scale.tolist(),
                "coef": self.coef.tolist(),
                "intercept": self.intercept,
            }
        )

    @classmethod
    def loads(cls, text: str) -> LinearScorer:
        d = json.loads(text)
        return cls(
            impute=np.asarray(d["impute"], dtype=float),
            indicator_of=np.asarray(d["indicator_of"], dtype=int),
            mean=np.asarray(d["mean"], dtype=float),
            scale=np.asarray(d["scale"], dtype=float),
            coef=np.asarray(d["coef"], dtype=float),
            intercept=float(d["intercept"]),
        )


class TreeScorer:
    """A LightGBM booster; one thread, because each BentoML worker runs its own copy."""

    kind = "lightgbm"

    def __init__(self, booster: lgb.Booster) -> None:
        self.booster = booster

    def margin(self, X: np.ndarray) -> np.ndarray:
        return self.booster.predict(X, raw_score=True, num_threads=1)

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.booster.predict(X, pred_contrib=True, num_threads=1)
        return out[:, :-1], out[:, -1]

    def dumps(self) -> str:
        return self.booster.model_to_string()

    @classmethod
    def loads(cls, text: str) -> TreeScorer:
        return cls(lgb.Booster(model_str=text))


def rowwise_dot(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """X @ W computed so that each row's result does not depend on the other rows.

    BLAS blocks a product differently for different numbers of rows, so a patient scored in a
    batch could differ in the last bit from the same patient alone; einsum's loops sum every
    row in the same order. Same speed here: the matrices are thin and the model single-threaded.
    """
    if W.ndim == 1:
        return np.einsum("ij,j->i", X, W)
    return np.einsum("ij,jk->ik", X, W)


def stacked_linear_logits(
    scorers: Sequence[LinearScorer], slopes: np.ndarray, intercepts: np.ndarray, X: np.ndarray
) -> np.ndarray:
    """Calibrated logits of many linear scorers at once, shape (len(scorers), n).

    The bootstrap members of a logistic model differ only in their weights, so all of them are
    two matrix products over the same input instead of one pass each (the interval's cost).
    """
    folded = [s.folded for s in scorers]
    w = np.column_stack([f[0] for f in folded]) * slopes
    on_missing = np.column_stack([f[1] for f in folded]) * slopes
    offset = np.array([f[2] for f in folded]) * slopes + intercepts
    missing = np.isnan(X)
    observed = np.where(missing, 0.0, X)
    return (rowwise_dot(observed, w) + rowwise_dot(missing.astype(float), on_missing) + offset).T


def load_scorer(kind: str, text: str) -> Scorer:
    """Rebuild a scorer from its serialised text; an unknown kind is a corrupt artifact."""
    if kind == LinearScorer.kind:
        return LinearScorer.loads(text)
    if kind == TreeScorer.kind:
        return TreeScorer.loads(text)
    raise ValueError(f"unknown estimator kind {kind!r} in model artifact")
