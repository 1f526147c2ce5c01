"""Model behaviour in the simulator's own terms: directions, invariances, minimum function.

A model trained on a simulated cohort is probed with counterfactual copies of held-out
patients. Only directions the simulator builds in (features/simulate_ground_truth.md) are
asserted, and only on average, as clinicians would read them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.simulate import simulate_cohort
from features.validation import validate_table
from serving.results import explain
from training.config import LightGBMConfig, TrainConfig
from training.train import train

CFG = TrainConfig(
    validation_folds=0,
    outer_folds=3,
    inner_folds=3,
    n_bootstrap=5,
    auroc_ci_resamples=100,
    lightgbm=LightGBMConfig(max_rounds=600),
)


@pytest.fixture(scope="module", params=["logistic", "lightgbm"])
def model(request: pytest.FixtureRequest):
    frame = validate_table(simulate_cohort(1500, seed=21), training=True).frame
    cfg = TrainConfig(**{**CFG.__dict__, "candidates": (request.param,)})
    result = train(frame, cfg, name="ketamine-aud-response", synthetic=True)
    probe = validate_table(simulate_cohort(400, seed=22)).frame
    return result.predictor, probe


def _mean_probability(predictor, frame: pd.DataFrame, **changes: object) -> float:
    changed = frame.copy()
    for name, value in changes.items():
        changed[name] = value
    return float(predictor.score(changed).probability.mean())


def test_more_heavy_drinking_days_never_raise_predicted_response(model) -> None:
    predictor, probe = model
    means = [_mean_probability(predictor, probe, hdd_90d=float(v)) for v in range(0, 91, 10)]
    assert np.all(np.diff(means) <= 1e-12), means
    assert means[0] - means[-1] > 0.05, "heavy drinking is the strongest simulated predictor"


def test_current_depression_lowers_predicted_response(model) -> None:
    predictor, probe = model
    assert _mean_probability(predictor, probe, current_mdd=1.0) < _mean_probability(
        predictor, probe, current_mdd=0.0
    )


def test_identity_fields_do_not_change_the_prediction(model) -> None:
    predictor, probe = model
    base = predictor.score(probe).probability
    other = probe.assign(patient_id=[f"X-{i}" for i in range(len(probe))], site_id="site-z")
    np.testing.assert_array_equal(predictor.score(other).probability, base)


def test_safety_fields_change_eligibility_not_probability(model) -> None:
    predictor, probe = model
    one = probe.iloc[[0]].reset_index(drop=True)
    flagged = one.assign(psychosis_history=1.0, systolic_bp_mmhg=200.0)
    a, b = explain(predictor, one)[0], explain(predictor, flagged)[0]
    assert a["probability"] == b["probability"]
    assert b["eligibility"]["status"] == "contraindicated"


def test_one_patient_alone_scores_as_in_a_batch(model) -> None:
    predictor, probe = model
    batch = predictor.score(probe).probability
    alone = [
        predictor.score(probe.iloc[[i]].reset_index(drop=True)).probability[0]
        for i in range(0, 400, 40)
    ]
    np.testing.assert_allclose(alone, batch[::40], rtol=0, atol=1e-12)
