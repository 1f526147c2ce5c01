"""Discrimination, overall accuracy and calibration with patient-bootstrap 95% CIs.

Definitions follow reference/standards.md §3. AUROC is scikit-learn's, calibration-in-the-large
and slope are `training.metrics.calibration_intercept_slope` (statsmodels GLMs), and the
flexible calibration curve is a loess of the outcome on the predicted probability exactly as
rms::val.prob draws it (`lowess(p, y, iter=0)`, span 2/3, delta = 1% of the range of p), from
which ICI (Eavg), E50, E90 and Emax are the mean, median, 90th percentile and maximum absolute
gap between predicted probability and the curve.

Uncertainty comes from resampling patients with replacement (B = 1,000 by default,
standards §3) and taking percentile intervals. A resample with one outcome class has no AUROC
or calibration slope and is skipped, as is any metric that comes out non-finite; small cohorts
(60 patients) lose a few resamples this way and the intervals are computed from the rest.

Cost and large n: one resample costs about 10 ms of CPU at n = 500, 16 ms at 3,000, 55 ms at
20,000 and 0.25 s at 100,000 (the two GLMs dominate; BLAS is held to one thread, since
threading a two-column fit only adds contention). Beyond `FULL_RESAMPLING_N` patients the
number of resamples therefore falls in proportion, to `resamples·FULL_RESAMPLING_N/n` but never
below `MIN_RESAMPLES`, which bounds a call at about a minute of CPU even at n = 100,000. At that
size the intervals are a few thousandths wide, and 200 resamples place their ends well within
that.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import brier_score_loss, roc_auc_score
from statsmodels.nonparametric.smoothers_lowess import lowess
from statsmodels.tools.sm_exceptions import PerfectSeparationError
from threadpoolctl import threadpool_limits

from training.metrics import calibration_intercept_slope

METRICS: tuple[str, ...] = (
    "auroc",
    "brier",
    "scaled_brier",
    "calibration_intercept",
    "calibration_slope",
    "ici",
    "e50",
    "e90",
)
FULL_RESAMPLING_N = 5_000
MIN_RESAMPLES = 200


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its 95% interval (NaN bounds when no resample was usable)."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def loess_calibration(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ICI (Eavg), E50, E90 and Emax from the loess calibration curve (rms::val.prob).

    The loess is not robustified (it=0): robust reweighting would discount precisely the
    patients whose outcome disagrees with their prediction, i.e. the miscalibration.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    spread = float(np.ptp(p))
    if spread == 0:
        curve = np.full_like(p, y.mean())
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            curve = lowess(y, p, frac=2 / 3, it=0, delta=0.01 * spread, return_sorted=False)
    gap = np.abs(p - curve)
    return {
        "ici": float(np.mean(gap)),
        "e50": float(np.median(gap)),
        "e90": float(np.quantile(gap, 0.9)),
        "emax": float(np.max(gap)),
    }


def point_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """The `METRICS` of one prediction vector (no interval)."""
    citl, slope = calibration_intercept_slope(y, p)
    brier = float(brier_score_loss(y, p))
    prevalence = float(np.mean(y))
    loess = loess_calibration(y, p)
    return {
        "auroc": float(roc_auc_score(y, p)),
        "brier": brier,
        "scaled_brier": 1 - brier / (prevalence * (1 - prevalence)),
        "calibration_intercept": citl,
        "calibration_slope": slope,
        "ici": loess["ici"],
        "e50": loess["e50"],
        "e90": loess["e90"],
    }


def _row_mean(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Metrics averaged over the rows of `p` (one row per repeat of cross-validation)."""
    rows = [point_metrics(y, row) for row in p]
    return np.mean([[m[k] for k in METRICS] for m in rows], axis=0)


def effective_resamples(n: int, resamples: int) -> int:
    """Resamples actually drawn: all of them up to `FULL_RESAMPLING_N` patients, fewer beyond."""
    if n <= FULL_RESAMPLING_N:
        return resamples
    return min(resamples, max(MIN_RESAMPLES, math.ceil(resamples * FULL_RESAMPLING_N / n)))


def performance(
    y: np.ndarray, p: np.ndarray, *, resamples: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """`METRICS` with patient-level percentile bootstrap 95% CIs.

    `p` is one probability per patient, or a (repeats, n) array from repeated cross-validation:
    then each metric is the mean over repeats, and a resample draws patients together with all
    their repeated predictions, so the interval reflects patients, not repeats.
    """
    y = np.asarray(y, dtype=int)
    p2 = np.atleast_2d(np.asarray(p, dtype=float))
    n = len(y)
    if p2.shape[1] != n:
        raise ValueError(f"{p2.shape[1]} predictions for {n} outcomes")
    if not 0 < y.sum() < n:
        raise ValueError("performance needs both outcome classes")
    with threadpool_limits(1, user_api="blas"):
        value = _row_mean(y, p2)
        draws = _bootstrap(y, p2, effective_resamples(n, resamples), seed)
    return {k: _estimate(value[j], [d[j] for d in draws]) for j, k in enumerate(METRICS)}


def _bootstrap(y: np.ndarray, p: np.ndarray, resamples: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    n = len(y)
    draws: list[np.ndarray] = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        yy = y[idx]
        if not 0 < yy.sum() < n:
            continue
        try:
            draws.append(_row_mean(yy, p[:, idx]))
        except (ValueError, np.linalg.LinAlgError, PerfectSeparationError):
            continue
    return draws


def _estimate(value: float, draws: list[float]) -> Estimate:
    finite = np.asarray(draws, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size < 2:
        return Estimate(float(value), math.nan, math.nan)
    low, high = np.percentile(finite, [2.5, 97.5])
    return Estimate(float(value), float(low), float(high))


def as_metrics(estimates: dict[str, Estimate], prefix: str = "") -> dict[str, float]:
    """Flat MLflow metric keys: `{prefix}{name}`, `..._ci_low`, `..._ci_high` (finite only)."""
    flat: dict[str, float] = {}
    for name, e in estimates.items():
        for suffix, v in (("", e.value), ("_ci_low", e.low), ("_ci_high", e.high)):
            if math.isfinite(v):
                flat[f"{prefix}{name}{suffix}"] = v
    return flat
