"""Small trained models shared by the unit tests (trained once per test process)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from features.simulate import simulate_cohort
from features.validation import validate_table
from serving.predictor import Predictor
from training.config import LightGBMConfig, TrainConfig
from training.train import train

#: Training settings that keep a unit test's model to seconds.
FAST = TrainConfig(
    validation_folds=2,
    fairness_resamples=20,
    outer_folds=2,
    inner_folds=2,
    n_bootstrap=8,
    auroc_ci_resamples=100,
    logistic_c_grid=(0.01, 0.1, 1.0),
    lightgbm=LightGBMConfig(grid=((4, 0.05),), max_rounds=300),
)


def small_model(kind: str) -> Predictor:
    """A model of one estimator kind on 400 simulated patients, without internal validation."""
    frame = validate_table(simulate_cohort(400, seed=9), training=True).frame
    config = replace(FAST, candidates=(kind,), validation_folds=0)
    return train(frame, config, name="ketamine-aud-response", synthetic=True).predictor


@pytest.fixture(scope="session")
def logistic_predictor() -> Predictor:
    return small_model("logistic")


@pytest.fixture(scope="session", params=["logistic", "lightgbm"])
def each_kind(request: pytest.FixtureRequest, logistic_predictor: Predictor) -> Predictor:
    return logistic_predictor if request.param == "logistic" else small_model("lightgbm")
