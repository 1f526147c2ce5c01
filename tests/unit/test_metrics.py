"""Held-out metrics against hand-computable cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from training.metrics import auroc_ci, calibration_intercept_slope, evaluate


def test_auroc_of_a_hand_case() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    # 9 positive-negative pairs; only (0.35 vs 0.4) is misordered -> 8/9
    auc, lo, hi = auroc_ci(y, p, resamples=200, seed=1)
    assert auc == pytest.approx(8 / 9)
    assert lo <= auc <= hi


def test_perfectly_calibrated_predictions_have_slope_one_intercept_zero() -> None:
    rng = np.random.default_rng(0)
    lp = rng.normal(0, 1.2, 200_000)
    y = (rng.random(lp.size) < expit(lp)).astype(int)
    citl, slope = calibration_intercept_slope(y, expit(lp))
    assert citl == pytest.approx(0, abs=0.02)
    assert slope == pytest.approx(1, abs=0.02)


def test_overconfident_predictions_have_slope_below_one() -> None:
    rng = np.random.default_rng(1)
    lp = rng.normal(0, 1, 100_000)
    y = (rng.random(lp.size) < expit(lp)).astype(int)
    _, slope = calibration_intercept_slope(y, expit(2 * lp + 0.5))
    assert slope == pytest.approx(0.5, abs=0.02)


def test_brier_and_scaled_brier() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.5, 0.5, 0.5, 0.5])
    m = evaluate(y, p, resamples=50)
    assert m["brier"] == pytest.approx(0.25)
    assert m["scaled_brier"] == pytest.approx(0.0)
    assert m["events"] == 2 and m["n"] == 4
