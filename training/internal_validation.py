"""Optimism-corrected performance: cross-validate the *whole* development pipeline.

Method (reference/standards.md §1, PROBAST "overfitting and optimism accounted for"): an outer
stratified K-fold around `develop` — candidate choice by nested CV, tuning, recalibration and
the final fit all happen inside each outer training part, and the held-out part is scored by
the pipeline that never saw it. Pooling those out-of-fold probabilities gives the corrected
estimates; their CIs come from a patient bootstrap of the pooled predictions
(`training.calibration_metrics.performance`). "Apparent" performance is the final model scored
on its own training data, and apparent − corrected is the optimism.

Why cross-validation, not Harrell's bootstrap optimism: bootstrap optimism needs ≥ 200 refits of
the pipeline. Measured on the shared 2-core machine (BLAS and LightGBM on one thread each), one
`develop` takes about 9 s at n = 500 and 22 s at n = 3,000, so 200 refits would take 30-70 min.
Five folds cost five lighter `develop` runs: the whole `internal_validation` (folds plus two
bootstrap `performance` calls of 1,000 resamples) took 47 s at n = 500 and 77 s at n = 3,000.
Cross-validation is slightly pessimistic (each fold trains on 80% of the patients), which errs
on the safe side. Inside the folds the candidate choice uses a lighter configuration by default
(`fold_config`: three outer folds instead of five); that makes the choice a little noisier,
again making the estimate conservative rather than flattering. BLAS is held to one thread
here: the logistic fits are 58-column problems, and on a busy two-core machine threaded BLAS
made them over ten times slower without changing a digit.

Small and large n. Folds are stratified on the outcome and reduced so that every test fold
holds at least `MIN_EVENTS_PER_FOLD` patients of the rarer class, and the nested splits inside
`develop` are capped so that no inner training part can lose a class; fewer than 8 patients of
the rarer class cannot be validated this way and raise. Beyond `LARGE_N` patients a split-half
estimate is already precise (its standard error for AUROC is below 0.01), so two folds are used
and the bootstrap CIs use fewer resamples (`calibration_metrics.effective_resamples`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold
from threadpoolctl import threadpool_limits

from training import pipeline
from training.calibration_metrics import Estimate, as_metrics, performance
from training.config import TrainConfig
from training.sample_size import ANTICIPATED_CSTATISTIC, candidate_parameters, sample_size_report

LARGE_N = 20_000
MIN_EVENTS_PER_FOLD = 5
MIN_MINORITY = 8

Develop = Callable[
    [np.ndarray, np.ndarray, TrainConfig], tuple[pipeline.Selection, pipeline.Fitted]
]


@dataclass(frozen=True)
class InternalValidation:
    """Apparent and optimism-corrected performance of the whole pipeline.

    `oof_probability` has one row per repeat: row r holds, for every patient, the probability
    from the fold-r pipeline that did not see that patient. `chosen` lists the candidate each
    fold's pipeline chose, which shows how stable the choice itself is.
    """

    apparent: dict[str, Estimate]
    corrected: dict[str, Estimate]
    oof_probability: np.ndarray
    method: str
    folds: int
    repeats: int
    chosen: tuple[str, ...]

    @property
    def optimism(self) -> dict[str, float]:
        return {k: self.apparent[k].value - self.corrected[k].value for k in self.corrected}

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: `apparent_*`, `corrected_*` (with CI bounds), `optimism_*`."""
        flat = as_metrics(self.apparent, "apparent_") | as_metrics(self.corrected, "corrected_")
        flat.update({f"optimism_{k}": v for k, v in self.optimism.items() if math.isfinite(v)})
        return flat

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (no per-patient predictions: they stay out of logged text)."""
        return {
            "method": self.method,
            "folds": self.folds,
            "repeats": self.repeats,
            "chosen_per_fold": list(self.chosen),
            "apparent": {k: e.to_dict() for k, e in self.apparent.items()},
            "corrected": {k: e.to_dict() for k, e in self.corrected.items()},
            "optimism": self.optimism,
        }


def _minority(y: np.ndarray) -> int:
    events = int(np.sum(y))
    return min(events, len(y) - events)


def outer_folds(y: np.ndarray, folds: int) -> int:
    """Folds actually used: 2 beyond `LARGE_N`, fewer when the rarer class is small."""
    m = _minority(y)
    if m < MIN_MINORITY:
        raise ValueError(
            f"internal validation needs at least {MIN_MINORITY} patients with each outcome; "
            f"the rarer outcome has {m}"
        )
    if len(y) >= LARGE_N:
        return 2
    return max(2, min(folds, m // MIN_EVENTS_PER_FOLD))


def fold_config(cfg: TrainConfig, y_train: np.ndarray, *, light: bool = True) -> TrainConfig:
    """The configuration `develop` runs with inside one outer training part.

    `light` uses at most three folds for the candidate choice (the dominant cost). The caps on
    outer and inner folds keep at least one patient of each class in every nested training part,
    so a 60-patient cohort never hands LightGBM or the logistic fit a single-class sample.
    """
    m = _minority(y_train)
    k_outer = max(2, min(cfg.outer_folds, 3 if light else cfg.outer_folds, m // 2))
    k_inner = max(2, min(cfg.inner_folds, (m * (k_outer - 1)) // (2 * k_outer)))
    return replace(cfg, outer_folds=k_outer, inner_folds=k_inner)


def internal_validation(
    X: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    *,
    folds: int = 5,
    repeats: int = 1,
    seed: int,
    fitted: pipeline.Fitted | None = None,
    develop: Develop = pipeline.develop,
    light: bool = True,
    resamples: int = 1000,
) -> InternalValidation:
    """Cross-validate `develop` (the whole pipeline) and score the final model on its own data.

    `fitted` is the model developed on all of X (as `train()` serves it); without it the final
    development is run here. Pass the same `develop` the final model came from, e.g.
    `develop_preferring_simple`, so that every rule that shaped the model is validated.
    """
    y = np.asarray(y, dtype=int)
    k = outer_folds(y, folds)
    with threadpool_limits(1, user_api="blas"):
        if fitted is None:
            _, fitted = develop(X, y, cfg)
        oof, chosen = _out_of_fold(X, y, cfg, k, repeats, seed, develop, light)
    apparent = performance(y, pipeline.predict_proba(fitted, X), resamples=resamples, seed=seed)
    corrected = performance(y, oof, resamples=resamples, seed=seed)
    size = "large-n path, " if len(y) >= LARGE_N else ""
    method = (
        f"{k}-fold stratified cross-validation ({size}{repeats} repeat(s)) of the whole "
        "development pipeline (nested-CV candidate choice, tuning, recalibration) "
        f"{'with a light 3-fold candidate choice ' if light else ''}"
        "inside each training part; CIs by patient bootstrap of the out-of-fold predictions"
    )
    return InternalValidation(apparent, corrected, oof, method, k, repeats, tuple(chosen))


def _out_of_fold(
    X: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    k: int,
    repeats: int,
    seed: int,
    develop: Develop,
    light: bool,
) -> tuple[np.ndarray, list[str]]:
    """Out-of-fold probabilities (repeats, n) and the candidate each fold's pipeline chose."""
    splitter = RepeatedStratifiedKFold(n_splits=k, n_repeats=repeats, random_state=seed)
    oof = np.full((repeats, len(y)), np.nan)
    chosen: list[str] = []
    for i, (fit_idx, test_idx) in enumerate(splitter.split(X, y)):
        inner_cfg = replace(fold_config(cfg, y[fit_idx], light=light), seed=seed + 1000 * (i + 1))
        selection, fold_model = develop(X[fit_idx], y[fit_idx], inner_cfg)
        oof[i // k, test_idx] = pipeline.predict_proba(fold_model, X[test_idx])
        chosen.append(selection.chosen)
    return oof, chosen


def prefer_simple(selection: pipeline.Selection, sample_size_report: dict[str, object]) -> str:
    """The candidate to serve, preferring penalised logistic regression when data are short.

    When Riley's criteria are met the nested-CV choice stands. Otherwise LightGBM is kept only
    if its outer-fold log-loss beats the logistic model's by more than the standard error of
    the paired fold-wise differences: a gain smaller than the fold-to-fold noise is not worth
    a model that needs more data and is harder to explain.
    """
    if sample_size_report["adequate"] or selection.chosen == "logistic":
        return selection.chosen
    losses = selection.outer_log_loss
    if "logistic" not in losses or len(losses["logistic"]) < 2:
        return selection.chosen
    diff = np.asarray(losses["logistic"]) - np.asarray(losses[selection.chosen])
    se = float(np.std(diff, ddof=1) / math.sqrt(len(diff)))
    return selection.chosen if float(np.mean(diff)) > se else "logistic"


def develop_preferring_simple(
    X: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    *,
    cstatistic: float = ANTICIPATED_CSTATISTIC,
) -> tuple[pipeline.Selection, pipeline.Fitted]:
    """`pipeline.develop` with the small-data rule: Riley report on these data, `prefer_simple`.

    The returned selection keeps the outer log-losses but names the candidate actually fitted.
    """
    selection = pipeline.select_candidate(X, y, cfg)
    report = sample_size_report(len(y), int(np.sum(y)), candidate_parameters(X), cstatistic)
    kind = prefer_simple(selection, report)
    return replace(selection, chosen=kind), pipeline.fit_pipeline(kind, X, y, cfg, cfg.seed)
