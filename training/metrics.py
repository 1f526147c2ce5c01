"""Held-out performance: discrimination with a CI, Brier, calibration-in-the-large and slope.

Definitions follow reference/standards.md §3: the calibration intercept is `a` in
logit P(y=1) = a + offset(LP) and the slope is `b` in logit P(y=1) = a + b·LP, with LP the
logit of the predicted probability (statsmodels GLM, as that section recommends).
"""

from __future__ import annotations

import warnings

import numpy as np
import statsmodels.api as sm
from scipy.special import logit
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

_EPS = 1e-12


def auroc_ci(
    y: np.ndarray, p: np.ndarray, *, resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """AUROC and a percentile bootstrap 95% CI (patients resampled with their predictions).

    Resamples that happen to contain one class only have no AUROC and are skipped, which
    matters for the small cohorts this product must handle (60 patients and up).
    """
    auc = float(roc_auc_score(y, p))
    rng = np.random.default_rng(seed)
    n = len(y)
    stats_: list[float] = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        yy = y[idx]
        if 0 < yy.sum() < n:
            stats_.append(float(roc_auc_score(yy, p[idx])))
    if not stats_:
        return auc, float("nan"), float("nan")
    lo, hi = np.percentile(stats_, [2.5, 97.5])
    return auc, float(lo), float(hi)


def calibration_intercept_slope(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Calibration-in-the-large (target 0) and calibration slope (target 1)."""
    lp = logit(np.clip(p, _EPS, 1 - _EPS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        citl = sm.GLM(y, np.ones_like(lp), family=sm.families.Binomial(), offset=lp).fit()
        slope = sm.GLM(y, sm.add_constant(lp), family=sm.families.Binomial()).fit()
    return float(citl.params[0]), float(slope.params[1])


def evaluate(
    y: np.ndarray,
    p: np.ndarray,
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """The held-out metrics logged with every run (names are the MLflow metric keys)."""
    auc, lo, hi = auroc_ci(y, p, resamples=resamples, seed=seed)
    citl, slope = calibration_intercept_slope(y, p)
    brier = float(brier_score_loss(y, p))
    prevalence = float(np.mean(y))
    return {
        "auroc": auc,
        "auroc_ci_low": lo,
        "auroc_ci_high": hi,
        "brier": brier,
        "scaled_brier": 1 - brier / (prevalence * (1 - prevalence)) if 0 < prevalence < 1 else 0.0,
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "calibration_intercept": citl,
        "calibration_slope": slope,
        "observed_rate": prevalence,
        "mean_predicted": float(np.mean(p)),
        "n": float(len(y)),
        "events": float(np.sum(y)),
    }
