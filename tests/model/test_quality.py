"""Quality against the simulator's truth (issue acceptance numbers), on fresh held-out patients.

Trained with the production configuration on n_train = 3,000; judged on 20,000 new simulated
patients whose true probabilities are known, so the comparison is not limited by the noise of a
small held-out split. The optimism-corrected AUROC from internal validation is compared with
the fresh-cohort AUROC: the correction itself is validated (at n_train 3,000 its sampling error
is about 0.01, so a 0.03 disagreement would be a real bias, not noise).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from features.simulate import simulate_cohort
from features.validation import validate_table
from training.config import TrainConfig
from training.metrics import calibration_intercept_slope
from training.train import train

pytestmark = pytest.mark.slow


def test_auroc_close_to_truth_and_calibration_slope_near_one(record_property) -> None:
    cohort = validate_table(simulate_cohort(4000, seed=101), training=True).frame
    result = train(
        cohort,
        TrainConfig(test_fraction=0.25),
        name="ketamine-aud-response",
        synthetic=True,
    )
    assert len(result.train_idx) == 3000
    fresh_raw = simulate_cohort(20_000, seed=202)
    fresh = validate_table(fresh_raw, training=True).frame
    p = result.predictor.score(fresh).probability
    y = fresh["response_6m"].to_numpy()
    auc = roc_auc_score(y, p)
    truth = roc_auc_score(y, fresh_raw["true_probability"].to_numpy())
    citl, slope = calibration_intercept_slope(y, p)
    corrected = result.validation.corrected["auroc"].value
    report = (
        f"chosen {result.selection.chosen}: AUROC {auc:.3f} vs truth {truth:.3f} "
        f"(gap {truth - auc:.3f}); slope {slope:.3f}; intercept {citl:+.3f}; "
        f"internal held-out AUROC {result.metrics['auroc']:.3f}; optimism-corrected AUROC "
        f"{corrected:.3f} vs fresh {auc:.3f}"
    )
    print(report)
    record_property("quality", report)
    assert truth - auc <= 0.03, report
    assert 0.8 <= slope <= 1.2, report
    assert abs(citl) < 0.15, report
    assert abs(corrected - auc) <= 0.03, report
    assert np.all((p > 0) & (p < 1))
