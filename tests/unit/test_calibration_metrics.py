"""Loess calibration (ICI, E50, E90, Emax) and bootstrap performance with CIs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score
from statsmodels.nonparametric.smoothers_lowess import lowess

from training.calibration_metrics import (
    METRICS,
    Estimate,
    as_metrics,
    effective_resamples,
    loess_calibration,
    performance,
)


def _cohort(n: int, seed: int, *, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from expit(lp); predictions expit(scale·lp) (scale 1 = calibrated)."""
    rng = np.random.default_rng(seed)
    lp = rng.normal(-0.2, 1.0, n)
    y = (rng.random(n) < expit(lp)).astype(int)
    return y, expit(scale * lp)


def test_loess_metrics_are_gaps_to_an_unrobustified_loess_curve() -> None:
    y, p = _cohort(400, 3, scale=1.8)
    curve = lowess(y, p, frac=2 / 3, it=0, delta=0.01 * np.ptp(p), return_sorted=False)
    gap = np.abs(p - curve)
    m = loess_calibration(y, p)
    assert m["ici"] == pytest.approx(gap.mean())
    assert m["e50"] == pytest.approx(np.median(gap))
    assert m["e90"] == pytest.approx(np.quantile(gap, 0.9))
    assert m["emax"] == pytest.approx(gap.max())
    # robust reweighting (statsmodels' default it=3) gives a different curve
    robust = np.abs(p - lowess(y, p, frac=2 / 3, return_sorted=False)).mean()
    assert m["ici"] != pytest.approx(robust, rel=1e-3)


def test_calibrated_predictions_have_small_ici_and_overconfident_ones_do_not() -> None:
    y, p = _cohort(20_000, 1)
    good = loess_calibration(y, p)
    y, p_bad = _cohort(20_000, 1, scale=2.0)
    bad = loess_calibration(y, p_bad)
    assert good["ici"] < 0.01
    assert bad["ici"] > 0.05
    assert good["e50"] <= good["e90"] <= good["emax"]


def test_loess_of_constant_predictions_is_the_observed_rate() -> None:
    y = np.array([1, 0, 0, 1, 0])
    m = loess_calibration(y, np.full(5, 0.3))
    assert m["ici"] == pytest.approx(0.1)


def test_performance_has_every_metric_with_a_covering_interval_at_n60() -> None:
    y, p = _cohort(60, 11)
    est = performance(y, p, resamples=100, seed=0)
    assert tuple(est) == METRICS
    for name, e in est.items():
        assert isinstance(e, Estimate)
        assert math.isfinite(e.low) and math.isfinite(e.high), name
        assert e.low <= e.high
    assert est["auroc"].value == pytest.approx(roc_auc_score(y, p))
    assert est["auroc"].low < est["auroc"].value < est["auroc"].high
    assert est["brier"].value == pytest.approx(np.mean((p - y) ** 2))


def test_interval_narrows_with_n_and_is_reproducible() -> None:
    y_small, p_small = _cohort(100, 2)
    y_big, p_big = _cohort(3000, 2)
    small = performance(y_small, p_small, resamples=60, seed=5)
    big = performance(y_big, p_big, resamples=60, seed=5)
    width = {k: (v.high - v.low) for k, v in small.items()}
    for k, v in big.items():
        assert v.high - v.low < width[k], k
    again = performance(y_small, p_small, resamples=60, seed=5)
    assert again == small
    assert performance(y_small, p_small, resamples=60, seed=6) != small


def test_overconfidence_shows_as_slope_below_one() -> None:
    y, p = _cohort(3000, 4, scale=2.0)
    est = performance(y, p, resamples=40, seed=0)
    assert est["calibration_slope"].high < 0.6
    assert est["ici"].low > 0.03


def test_degenerate_resamples_are_skipped() -> None:
    # 2 events in 12: many resamples have no event; the rest still give an interval
    y = np.array([1, 1] + [0] * 10)
    p = np.linspace(0.9, 0.05, 12)
    est = performance(y, p, resamples=100, seed=0)
    assert est["auroc"].value == 1.0
    assert math.isfinite(est["auroc"].low)


def test_repeated_predictions_average_over_repeats() -> None:
    y, p = _cohort(200, 6)
    _, p2 = _cohort(200, 6, scale=1.3)
    both = performance(y, np.vstack([p, p2]), resamples=10, seed=0)
    one = performance(y, p, resamples=10, seed=0)
    two = performance(y, p2, resamples=10, seed=0)
    expected = (one["brier"].value + two["brier"].value) / 2
    assert both["brier"].value == pytest.approx(expected)


def test_single_class_and_shape_errors() -> None:
    with pytest.raises(ValueError, match="both outcome classes"):
        performance(np.zeros(10, int), np.full(10, 0.2), resamples=10)
    with pytest.raises(ValueError, match="predictions"):
        performance(np.array([0, 1, 1]), np.array([0.2, 0.3]), resamples=10)


def test_large_n_caps_resamples() -> None:
    assert effective_resamples(5000, 1000) == 1000
    assert effective_resamples(100_000, 1000) < 1000
    assert effective_resamples(10**7, 1000) == 200


def test_large_n_runs() -> None:
    y, p = _cohort(100_000, 8)
    est = performance(y, p, resamples=3, seed=0)
    assert est["auroc"].value == pytest.approx(roc_auc_score(y, p))
    assert est["calibration_slope"].value == pytest.approx(1.0, abs=0.03)
    assert est["ici"].value < 0.01


def test_as_metrics_flattens_and_drops_nan() -> None:
    estimates = {"auroc": Estimate(0.7, 0.6, 0.8), "ici": Estimate(0.02, math.nan, 0.1)}
    flat = as_metrics(estimates, "x_")
    assert flat == {
        "x_auroc": 0.7,
        "x_auroc_ci_low": 0.6,
        "x_auroc_ci_high": 0.8,
        "x_ici": 0.02,
        "x_ici_ci_high": 0.1,
    }
