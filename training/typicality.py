"""Fit the typicality check of `serving.typicality` on the training part; JSON state only.

Three things are learned, each from data the check is honest about:
1. the model (per-field CDF knots and the pairwise correlation of normal scores) from the
   training rows;
2. the cut-off (by default the 99th percentile) and the percentile knots from *held-out*
   unusualness scores only: out-of-fold scores over the training rows (each row scored by a
   model fitted without it) and, if given, `heldout` rows scored by the final model. A model
   scored on its own fitting rows finds them more typical than new patients, which would put
   the cut-off too low and flag too few;
3. the missingness patterns (which data-dictionary groups are entirely missing) that occurred
   in the training rows, so a pattern the model never met can be flagged.

Why not sklearn's MinCovDet on median-imputed columns, as first planned: on a simulated cohort
(n=1000) the MCD subset had zero spread in the ADH1B genotype column, the covariance's smallest
eigenvalue was 0 (to 1e-16) and the median robust distance was 42 for 38 columns, where ~6 is
expected; see the module docstring of `serving.typicality`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from features.schema import PREDICTOR_GROUPS, PREDICTORS
from serving.typicality import METHOD, STATE_FORMAT, missing_groups, normal_scores, unusualness

#: Numeric, count, score and flag predictors: every predictor field but the categories (an
#: unseen level is already an outside-support flag, and one-hot levels carry no order).
COLUMNS: tuple[str, ...] = tuple(f.name for f in PREDICTORS if f.kind != "category")
KNOTS = 201
QUANTILE_KNOTS = 201
#: Shrinkage of the correlation towards the identity: pairwise estimates from a few hundred
#: patients are noisy, and near-deterministic pairs (hdd vs days abstinent) would otherwise give
#: tiny eigenvalues that let one field dominate every distance.
SHRINKAGE = 0.1
EIGEN_FLOOR = 1e-3
MIN_OBSERVED = 10


def cdf_knots(values: np.ndarray) -> dict[str, list[float]]:
    """Mid-rank empirical CDF at up to KNOTS observed values (all of them if fewer distinct).

    Mid-ranks put a tied value (a genotype of 0 held by 80% of patients) in the middle of its
    step, so the commonest value scores near the centre rather than at an end.
    """
    values = np.sort(values)
    uniq, counts = np.unique(values, return_counts=True)
    mid = (np.cumsum(counts) - counts / 2.0) / len(values)
    if len(uniq) > KNOTS:
        at = np.unique(np.quantile(values, np.linspace(0, 1, KNOTS), method="inverted_cdf"))
        keep = np.searchsorted(uniq, at)
        uniq, mid = uniq[keep], mid[keep]
    return {"x": [float(v) for v in uniq], "cdf": [float(v) for v in mid]}


def regularised_correlation(z: np.ndarray) -> np.ndarray:
    """Pairwise-complete correlation, repaired to positive definite and shrunk to the identity."""
    r = pd.DataFrame(z).corr(min_periods=MIN_OBSERVED).fillna(0.0).to_numpy(copy=True)
    np.fill_diagonal(r, 1.0)
    w, v = np.linalg.eigh(r)
    r = (v * np.maximum(w, EIGEN_FLOOR)) @ v.T
    d = np.sqrt(np.diag(r))
    r = r / np.outer(d, d)
    return (1 - SHRINKAGE) * r + SHRINKAGE * np.eye(len(r))


def fit_model(frame: pd.DataFrame) -> dict[str, Any]:
    """CDF knots and correlation of the normal scores; columns seen < MIN_OBSERVED times drop."""
    columns, knots = [], {}
    for name in COLUMNS:
        x = frame[name].astype(float).to_numpy()
        present = x[~np.isnan(x)]
        if len(present) >= MIN_OBSERVED:
            columns.append(name)
            knots[name] = cdf_knots(present)
    model: dict[str, Any] = {"columns": columns, "n": len(frame), "knots": knots}
    corr = regularised_correlation(normal_scores(frame, model))
    model["correlation"] = corr.round(6).tolist()
    return model


def missingness_patterns(frame: pd.DataFrame) -> list[list[str]]:
    """Distinct sets of entirely missing predictor groups, in data-dictionary group order."""
    seen = {tuple(g) for g in missing_groups(frame)}
    order = {g: i for i, g in enumerate(PREDICTOR_GROUPS)}
    return sorted((list(p) for p in seen), key=lambda p: (len(p), [order[g] for g in p]))


def heldout_unusualness(
    frame: pd.DataFrame, *, seed: int, folds: int = 5, heldout: pd.DataFrame | None = None
) -> np.ndarray:
    """Unusualness of rows never used to fit the model that scores them.

    Out-of-fold over `frame` when `folds >= 2`, plus `heldout` scored by a model on all of
    `frame`.
    """
    parts = []
    if folds >= 2:
        splitter = KFold(folds, shuffle=True, random_state=seed)
        for fit_idx, out_idx in splitter.split(np.zeros(len(frame))):
            model = fit_model(frame.iloc[fit_idx])
            parts.append(unusualness(frame.iloc[out_idx], model))
    if heldout is not None and len(heldout):
        parts.append(unusualness(heldout, fit_model(frame)))
    if not parts:
        raise ValueError("no held-out rows for the cut-off: use folds >= 2 or pass heldout")
    return np.concatenate(parts)


def _source(folds: int, heldout: pd.DataFrame | None) -> str:
    parts = [f"{folds}-fold out-of-fold"] if folds >= 2 else []
    if heldout is not None and len(heldout):
        parts.append("held-out development rows")
    return " + ".join(parts)


def fit_typicality(
    frame: pd.DataFrame,
    *,
    seed: int,
    folds: int = 5,
    heldout: pd.DataFrame | None = None,
    cutoff_quantile: float = 0.99,
) -> dict[str, Any]:
    """The JSON state of the typicality check, fitted on the training part `frame`."""
    scores = heldout_unusualness(frame, seed=seed, folds=folds, heldout=heldout)
    levels = np.linspace(0, 1, QUANTILE_KNOTS)
    return {
        "format": STATE_FORMAT,
        "method": METHOD,
        "model": fit_model(frame),
        "cutoff_quantile": cutoff_quantile,
        "cutoff": float(np.quantile(scores, cutoff_quantile)),
        "heldout": {
            "n": len(scores),
            "source": _source(folds, heldout),
            "quantiles": [float(v) for v in np.quantile(scores, levels)],
        },
        "missingness_patterns": missingness_patterns(frame),
    }
