"""Internal validation of the whole pipeline: honest, robust at 60 patients, cheap at 20,000.

The slow test at the end is the acceptance check: the optimism-corrected AUROC from 500
simulated patients must agree with the developed model's AUROC on 20,000 fresh patients.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from features import transform as tf
from features.simulate import simulate_cohort
from features.validation import validate_table
from serving.predictor import Calibrator
from training import candidates, pipeline
from training.calibration_metrics import METRICS
from training.config import LightGBMConfig, TrainConfig
from training.internal_validation import (
    InternalValidation,
    develop_preferring_simple,
    fold_config,
    internal_validation,
    outer_folds,
    prefer_simple,
)

FAST = TrainConfig(
    outer_folds=2,
    inner_folds=2,
    n_bootstrap=5,
    logistic_c_grid=(0.01, 0.1, 1.0),
    lightgbm=LightGBMConfig(grid=((4, 0.05),), max_rounds=150, num_threads=1),
)
LOGISTIC_ONLY = replace(FAST, candidates=("logistic",))


def _cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    raw = simulate_cohort(n, seed=seed)
    frame = validate_table(raw, training=True).frame
    X = tf.transform(frame).to_numpy(dtype=float)
    return X, frame["response_6m"].to_numpy(dtype=int), raw["true_probability"].to_numpy()


def test_sixty_patients_give_a_complete_json_ready_result() -> None:
    X, y, _ = _cohort(60, 1)
    iv = internal_validation(X, y, FAST, seed=3, resamples=100)
    assert isinstance(iv, InternalValidation)
    assert 2 <= iv.folds <= 5 and iv.repeats == 1
    assert iv.oof_probability.shape == (1, 60)
    assert np.all((iv.oof_probability > 0) & (iv.oof_probability < 1))
    assert set(iv.apparent) == set(iv.corrected) == set(METRICS)
    assert len(iv.chosen) == iv.folds
    assert "cross-validation" in iv.method
    payload = json.loads(json.dumps(iv.to_dict()))
    assert payload["corrected"]["auroc"]["value"] == pytest.approx(iv.corrected["auroc"].value)
    assert "oof_probability" not in payload  # no per-patient data in logged text
    flat = iv.metrics()
    assert flat["optimism_auroc"] == pytest.approx(
        iv.apparent["auroc"].value - iv.corrected["auroc"].value
    )
    assert {"corrected_auroc_ci_low", "apparent_brier", "corrected_ici"} <= set(flat)


def test_few_events_reduce_folds_and_never_crash() -> None:
    X, _, truth = _cohort(60, 2)
    rank = np.argsort(np.argsort(truth))
    y = (rank >= 51).astype(int)  # 9 responders among 60, the most likely ones
    assert outer_folds(y, 5) == 2
    iv = internal_validation(X, y, FAST, seed=0, resamples=50)
    assert np.isfinite(iv.oof_probability).all()
    with pytest.raises(ValueError, match="at least 8 patients"):
        internal_validation(X, (rank >= 53).astype(int), FAST, seed=0)


def test_fold_config_keeps_every_nested_training_part_two_class() -> None:
    cfg = TrainConfig()
    small = fold_config(cfg, np.array([1] * 6 + [0] * 40))
    assert (small.outer_folds, small.inner_folds) == (3, 2)
    assert fold_config(cfg, np.array([1] * 200 + [0] * 200)).outer_folds == 3
    full = fold_config(cfg, np.array([1] * 200 + [0] * 200), light=False)
    assert (full.outer_folds, full.inner_folds) == (cfg.outer_folds, cfg.inner_folds)


def _memorise(
    X: np.ndarray, y: np.ndarray, cfg: TrainConfig
) -> tuple[pipeline.Selection, pipeline.Fitted]:
    """A deliberately overfitting development: weak penalty, no recalibration."""
    scorer = candidates.fit("logistic", X, y, {"C": 10.0}, cfg, cfg.seed)
    fitted = pipeline.Fitted("logistic", {"C": 10.0}, scorer, Calibrator(1.0, 0.0))
    return pipeline.Selection("logistic", {"logistic": []}), fitted


def test_corrected_estimate_removes_the_optimism_of_an_overfitted_model() -> None:
    # Outcome independent of X: the apparent AUROC is pure optimism, the honest one is 0.5.
    X, _, _ = _cohort(200, 4)
    y = np.random.default_rng(0).permutation(np.repeat([0, 1], 100))
    iv = internal_validation(X, y, LOGISTIC_ONLY, seed=1, develop=_memorise, resamples=200)
    assert iv.apparent["auroc"].value > 0.75
    assert iv.corrected["auroc"].value < 0.6
    assert iv.corrected["auroc"].low < 0.5 < iv.corrected["auroc"].high
    assert iv.corrected["calibration_slope"].value < 0.5  # out-of-fold predictions too extreme
    assert iv.optimism["auroc"] > 0.2


def test_repeats_fill_one_row_each_and_reuse_a_given_final_model() -> None:
    X, y, _ = _cohort(120, 5)
    calls: list[int] = []

    def spy(X_: np.ndarray, y_: np.ndarray, cfg: TrainConfig):
        calls.append(len(y_))
        return pipeline.develop(X_, y_, cfg)

    _, final = pipeline.develop(X, y, LOGISTIC_ONLY)
    iv = internal_validation(
        X, y, LOGISTIC_ONLY, folds=3, repeats=2, seed=0, fitted=final, develop=spy, resamples=30
    )
    assert iv.oof_probability.shape == (2, 120)
    assert np.isfinite(iv.oof_probability).all()
    assert calls == [80] * 6  # six fold pipelines on two thirds each; no refit of the final
    apparent = roc_auc_score(y, pipeline.predict_proba(final, X))
    assert iv.apparent["auroc"].value == pytest.approx(apparent)


def test_large_cohort_takes_the_two_fold_path() -> None:
    X, y, _ = _cohort(20_000, 6)
    iv = internal_validation(X, y, LOGISTIC_ONLY, seed=0, resamples=20)
    assert iv.folds == 2
    assert "large-n" in iv.method
    assert abs(iv.apparent["auroc"].value - iv.corrected["auroc"].value) < 0.01


def _selection(logistic: list[float], lightgbm: list[float]) -> pipeline.Selection:
    losses = {"logistic": logistic, "lightgbm": lightgbm}
    return pipeline.Selection(min(losses, key=lambda k: np.mean(losses[k])), losses)


def test_prefer_simple_keeps_lightgbm_only_for_a_clear_gain_on_small_data() -> None:
    short, enough = {"adequate": False}, {"adequate": True}
    noisy = _selection([0.60, 0.62, 0.64], [0.59, 0.63, 0.62])  # gain 0.007, SE ~0.009
    clear = _selection([0.60, 0.62, 0.64], [0.57, 0.59, 0.61])  # gain 0.03 every fold
    assert noisy.chosen == clear.chosen == "lightgbm"
    assert prefer_simple(noisy, short) == "logistic"
    assert prefer_simple(noisy, enough) == "lightgbm"
    assert prefer_simple(clear, short) == "lightgbm"
    assert prefer_simple(_selection([0.5, 0.5], [0.6, 0.6]), short) == "logistic"


def test_develop_preferring_simple_names_the_model_it_fitted() -> None:
    X, y, _ = _cohort(80, 7)
    selection, fitted = develop_preferring_simple(X, y, FAST)
    assert selection.chosen == fitted.kind
    assert set(selection.outer_log_loss) == {"logistic", "lightgbm"}


@pytest.mark.slow
def test_corrected_auroc_agrees_with_fresh_patients(record_property) -> None:
    """Default pipeline settings, except one LightGBM thread (results are identical:
    `deterministic=True`; two threads on this shared 2-core machine were ten times slower)."""
    cfg = replace(TrainConfig(), lightgbm=replace(TrainConfig().lightgbm, num_threads=1))
    X, y, _ = _cohort(500, 11)
    _, final = pipeline.develop(X, y, cfg)
    iv = internal_validation(X, y, cfg, seed=cfg.seed, fitted=final)
    X_new, y_new, _ = _cohort(20_000, 12)
    fresh = roc_auc_score(y_new, pipeline.predict_proba(final, X_new))
    c = iv.corrected["auroc"]
    report = (
        f"corrected AUROC {c.value:.3f} ({c.low:.3f}-{c.high:.3f}), apparent "
        f"{iv.apparent['auroc'].value:.3f}, fresh n=20,000 {fresh:.3f}; folds chose {iv.chosen}"
    )
    print(report)
    record_property("internal_validation", report)
    assert abs(c.value - fresh) < 0.03, report
    assert iv.apparent["auroc"].value >= c.value - 0.01, report
