"""Training settings: one typed, frozen object, so a run logs its parameters as used."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from training.sample_size import ANTICIPATED_CSTATISTIC


def _c_grid() -> tuple[float, ...]:
    return tuple(float(c) for c in np.logspace(-3, 1, 9))


@dataclass(frozen=True)
class LightGBMConfig:
    """Small-data LightGBM settings (reference/mlops.md §4 and LightGBM's over-fitting advice).

    `grid` varies the two settings that matter most at a few hundred to a few thousand
    patients; the number of boosting rounds is chosen by early stopping on CV log-loss.
    """

    learning_rate: float = 0.03
    max_rounds: int = 1500
    early_stopping_rounds: int = 60
    max_bin: int = 63
    lambda_l2: float = 5.0
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    grid: tuple[tuple[int, float], ...] = ((4, 0.03), (8, 0.03), (8, 0.08))
    """(num_leaves, min_data_in_leaf as a fraction of the rows) pairs."""
    num_threads: int = 1
    """One thread: on this 2-core class of machine, threaded LightGBM on a few thousand rows was
    about ten times slower under load, and `deterministic=True` gives identical models."""
    monotone: tuple[tuple[str, int], ...] = (
        ("hdd_90d", -1),
        ("log1p_hdd_90d", -1),
        ("drinks_per_drinking_day", -1),
    )
    """Directions the model may not contradict, holding the rest fixed: more heavy drinking
    never predicts more response. Baseline consumption is the most consistent predictor of a
    worse outcome (clinical.md §3, Adamson 2009); a tree that learned the opposite from noise
    in a few hundred patients would be wrong and would cost clinicians' trust."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run decides before it looks at the data."""

    seed: int = 20261127
    test_fraction: float = 0.25
    outer_folds: int = 5
    inner_folds: int = 3
    logistic_c_grid: tuple[float, ...] = field(default_factory=_c_grid)
    lightgbm: LightGBMConfig = field(default_factory=LightGBMConfig)
    candidates: tuple[str, ...] = ("logistic", "lightgbm")
    n_bootstrap: int = 100
    """Bootstrap members for the interval: with 30 a patient's spread is off by about 13%
    (1/sqrt(2(B-1))), with 100 by 7%; 200 barely changes coverage (benchmarks/INTERVALS.md)
    but doubles the serving cost."""
    auroc_ci_resamples: int = 1000
    anticipated_cstatistic: float = ANTICIPATED_CSTATISTIC
    validation_folds: int = 5
    """Outer folds of internal validation (0 skips it: tests that do not need the evidence)."""
    validation_repeats: int = 1
    fairness_resamples: int = 200

    def as_params(self) -> dict[str, str]:
        """Flat string parameters for MLflow (which stores params as text)."""
        flat: dict[str, str] = {}
        for key, value in asdict(self).items():
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": str(v) for k, v in value.items()})
            else:
                flat[key] = str(value)
        return flat
