"""One training run from a validated frame to a served-model candidate and its evidence.

No files and no MLflow here (`training.tracking` does the logging): the function takes the
canonical frame and returns the predictor, held-out metrics and figures, so tests can run it
in memory and the CLI can log exactly what it produced.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from features import transform as tf
from features.schema import OUTCOME
from serving.predictor import Predictor
from training import pipeline, plots
from training.card import build_card
from training.config import TrainConfig
from training.metrics import evaluate
from training.reference import reference_stats
from training.split import split_by_patient


@dataclass
class TrainResult:
    predictor: Predictor
    selection: pipeline.Selection
    hyper: dict[str, float]
    metrics: dict[str, float]
    train_idx: np.ndarray
    test_idx: np.ndarray
    test_probability: np.ndarray
    figures: dict[str, Figure] = field(default_factory=dict)


def train(
    frame: pd.DataFrame,
    cfg: TrainConfig,
    *,
    name: str,
    truth: pd.Series | None = None,
    synthetic: bool = False,
) -> TrainResult:
    """Split, select, fit, recalibrate, bootstrap, evaluate on the held-out part.

    `truth` (the simulator's true probability, aligned with `frame`) only adds a diagnostic:
    the AUROC an oracle would reach on the same held-out patients.
    """
    train_idx, test_idx = split_by_patient(frame, cfg.test_fraction, cfg.seed)
    X = tf.transform(frame).to_numpy(dtype=float)
    y = frame[OUTCOME].to_numpy(dtype=int)
    X_tr, y_tr = X[train_idx], y[train_idx]

    selection, fitted = pipeline.develop(X_tr, y_tr, cfg)
    members = pipeline.bootstrap_members(fitted.kind, fitted.hyper, X_tr, y_tr, cfg)
    train_frame = frame.iloc[train_idx].reset_index(drop=True)
    test_frame = frame.iloc[test_idx].reset_index(drop=True)
    predictor = Predictor(
        scorer=fitted.scorer,
        calibrator=fitted.calibrator,
        members=members,
        reference=reference_stats(train_frame),
        metadata={
            "name": name,
            "estimator": fitted.kind,
            "hyperparameters": fitted.hyper,
            "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "n_train": len(train_idx),
            "events_train": int(y_tr.sum()),
            "synthetic_data": synthetic,
        },
    )

    scores = predictor.score(test_frame)
    y_te = y[test_idx]
    metrics = evaluate(y_te, scores.probability, resamples=cfg.auroc_ci_resamples, seed=cfg.seed)
    if truth is not None:
        metrics["truth_auroc"] = float(roc_auc_score(y_te, truth.to_numpy()[test_idx]))
        metrics["auroc_gap_to_truth"] = metrics["truth_auroc"] - metrics["auroc"]
    for kind, loss in selection.mean_log_loss.items():
        metrics[f"cv_log_loss_{kind}"] = loss
    predictor.metadata["metrics"] = {k: v for k, v in metrics.items() if np.isfinite(v)}
    predictor.metadata["model_card"] = build_card(predictor.metadata, metrics)

    labels = [f.label for f in tf.FACTORS]
    figures = {
        "calibration_heldout.png": plots.calibration_figure(
            y_te, scores.probability, f"Held-out calibration (n={len(y_te)})"
        ),
        "shap_summary_heldout.png": plots.shap_summary_figure(
            scores.contributions, scores.values, labels
        ),
    }
    return TrainResult(
        predictor,
        selection,
        fitted.hyper,
        metrics,
        train_idx,
        test_idx,
        scores.probability,
        figures,
    )


def summary_lines(result: TrainResult) -> list[str]:
    """Key numbers for the terminal, in the order a data scientist reads them."""
    m = result.metrics
    lines = [
        f"chosen estimator: {result.selection.chosen} "
        + " ".join(f"(CV log-loss {k} {v:.4f})" for k, v in result.selection.mean_log_loss.items()),
        f"held-out AUROC {m['auroc']:.3f} (95% CI {m['auroc_ci_low']:.3f}-{m['auroc_ci_high']:.3f})"
        f", Brier {m['brier']:.4f}, calibration intercept {m['calibration_intercept']:+.3f}, "
        f"slope {m['calibration_slope']:.3f}",
    ]
    if "truth_auroc" in m:
        lines.append(
            f"true-probability AUROC on the same patients {m['truth_auroc']:.3f} "
            f"(gap {m['auroc_gap_to_truth']:+.3f})"
        )
    return lines
