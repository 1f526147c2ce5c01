"""One training run from a validated frame to a served-model candidate and all its evidence.

No files and no MLflow here (`training.tracking` does the logging): the function takes the
canonical frame and returns the predictor, the evidence a reviewer asks for (sample size,
internal validation, held-out performance, decision curves, fairness) and the figures, so tests
can run it in memory and the CLI logs exactly what it produced.

Order of work, and why:
1. split by patient: a held-out part for the split-sample check and for comparing a candidate
   with the champion on the same patients (the promotion gate);
2. on the development part: the sample-size report (Riley), then `develop_preferring_simple`
   (nested-CV candidate choice, tuning, margin recalibration; the simpler model when the data
   are short), then internal validation repeating that whole function in each fold;
3. bootstrap members for the per-patient interval, reference statistics for warnings;
4. evaluation on the held-out part; decision curves and fairness on out-of-fold predictions
   (every development patient, each scored by a pipeline that never saw them).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from features import transform as tf
from features.schema import OUTCOME
from serving.predictor import Predictor
from training import pipeline, plots
from training.calibration_metrics import loess_calibration
from training.card import build_card
from training.config import TrainConfig
from training.decision_curve import decision_curve_figure, net_benefit_ci
from training.fairness import FairnessReport, fairness_audit, group_columns
from training.internal_validation import (
    InternalValidation,
    develop_preferring_simple,
    internal_validation,
)
from training.metrics import evaluate
from training.reference import reference_stats
from training.sample_size import candidate_parameters, sample_size_report
from training.split import split_by_patient
from training.typicality import fit_typicality
from training.uncertainty import fit_uncertainty


@dataclass
class TrainResult:
    predictor: Predictor
    selection: pipeline.Selection
    hyper: dict[str, float]
    metrics: dict[str, float]
    train_idx: np.ndarray
    test_idx: np.ndarray
    test_probability: np.ndarray
    sample_size: dict[str, Any]
    validation: InternalValidation | None = None
    decision_curve: pd.DataFrame | None = None
    fairness: FairnessReport | None = None
    figures: dict[str, Figure] = field(default_factory=dict)

    def gate_evidence(self) -> dict[str, Any]:
        """What the promotion gate judges (the champion comparison is added at registration)."""
        ev: dict[str, Any] = {"candidate_brier": self.metrics["brier"]}
        if self.validation is not None:
            ev["calibration_slope"] = self.validation.corrected["calibration_slope"].to_dict()
            ev["calibration_intercept"] = self.validation.corrected[
                "calibration_intercept"
            ].to_dict()
        if self.decision_curve is not None:
            ev["net_benefit"] = self.decision_curve[
                ["threshold", "model", "treat_all", "treat_none"]
            ].to_dict("records")
        if self.fairness is not None:
            ev["worst_group_ici"] = worst_group_ici_lower_bound(self.fairness)
        return ev


def worst_group_ici_lower_bound(report: FairnessReport) -> float | None:
    """Largest lower 95% bound of ICI among groups with enough events.

    The bound, not the point estimate: ICI is biased upwards in small groups, so a perfectly
    calibrated model's worst group routinely shows a point ICI near 0.07-0.09; a lower bound
    above the gate's limit is evidence that a group really is miscalibrated.
    """
    lows = [
        float(row["ici_ci_low"])
        for table in report.tables.values()
        for _, row in table.iterrows()
        if not row.get("flag") and pd.notna(row.get("ici_ci_low"))
    ]
    return max(lows) if lows else None


def train(
    frame: pd.DataFrame,
    cfg: TrainConfig,
    *,
    name: str,
    truth: pd.Series | None = None,
    ancestry: pd.Series | None = None,
    synthetic: bool = False,
) -> TrainResult:
    """Split, develop, validate internally, bootstrap, evaluate, audit fairness.

    `truth` (the simulator's true probability, aligned with `frame`) only adds a diagnostic:
    the AUROC an oracle would reach on the same held-out patients. `ancestry`, when recorded,
    adds a fairness table; it is never a predictor.
    """
    train_idx, test_idx = split_by_patient(frame, cfg.test_fraction, cfg.seed)
    X = tf.transform_array(frame)
    y = frame[OUTCOME].to_numpy(dtype=int)
    X_tr, y_tr = X[train_idx], y[train_idx]
    train_frame = frame.iloc[train_idx].reset_index(drop=True)
    test_frame = frame.iloc[test_idx].reset_index(drop=True)

    with threadpool_limits(1, user_api="blas"):
        size = sample_size_report(
            len(y_tr), int(y_tr.sum()), candidate_parameters(X_tr), cfg.anticipated_cstatistic
        )
        selection, fitted = develop_preferring_simple(
            X_tr, y_tr, cfg, cstatistic=cfg.anticipated_cstatistic
        )
        validation = None
        if cfg.validation_folds > 0:
            validation = internal_validation(
                X_tr,
                y_tr,
                cfg,
                folds=cfg.validation_folds,
                repeats=cfg.validation_repeats,
                seed=cfg.seed,
                fitted=fitted,
                develop=develop_preferring_simple,
                resamples=cfg.auroc_ci_resamples,
            )
        members = pipeline.bootstrap_members(fitted.kind, fitted.hyper, X_tr, y_tr, cfg)

    predictor = Predictor(
        scorer=fitted.scorer,
        calibrator=fitted.calibrator,
        members=members,
        reference=reference_stats(train_frame),
        uncertainty=fit_uncertainty(train_frame, n_members=len(members), seed=cfg.seed),
        typicality=fit_typicality(train_frame, seed=cfg.seed, heldout=test_frame),
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
    metrics.update(loess_calibration(y_te, scores.probability))
    metrics["interval_width_heldout"] = float(np.mean(scores.upper - scores.lower))
    if truth is not None:
        t = truth.to_numpy()[test_idx]
        metrics["interval_coverage_of_truth"] = float(
            np.mean((scores.lower <= t) & (t <= scores.upper))
        )
    if truth is not None:
        metrics["truth_auroc"] = float(roc_auc_score(y_te, truth.to_numpy()[test_idx]))
        metrics["auroc_gap_to_truth"] = metrics["truth_auroc"] - metrics["auroc"]
    for kind, loss in selection.mean_log_loss.items():
        metrics[f"cv_log_loss_{kind}"] = loss
    metrics["sample_size_required"] = float(size["required"]["n"])
    metrics["expected_shrinkage"] = float(size["expected_shrinkage"])
    metrics["max_parameters_supported"] = float(size["max_parameters"])

    labels = [f.label for f in tf.FACTORS]
    figures = {
        "calibration_heldout.png": plots.calibration_figure(
            y_te, scores.probability, f"Held-out calibration (n={len(y_te)})"
        ),
        "shap_summary_heldout.png": plots.shap_summary_figure(
            scores.contributions, scores.values, labels
        ),
    }
    decision = fairness = None
    if validation is not None:
        metrics.update(validation.metrics())
        oof = validation.oof_probability.mean(axis=0)
        decision = net_benefit_ci(y_tr, oof, resamples=cfg.auroc_ci_resamples, seed=cfg.seed)
        figures["decision_curve_internal.png"] = decision_curve_figure(
            decision, "Decision curve, out-of-fold predictions (development data)"
        )
        figures["calibration_internal.png"] = plots.calibration_figure(
            y_tr, oof, f"Out-of-fold calibration, whole pipeline (n={len(y_tr)})"
        )
        anc = None if ancestry is None else ancestry.iloc[train_idx].reset_index(drop=True)
        fairness = fairness_audit(
            y_tr,
            oof,
            group_columns(train_frame, anc),
            n_boot=cfg.fairness_resamples,
            seed=cfg.seed,
        )

    result = TrainResult(
        predictor,
        selection,
        fitted.hyper,
        metrics,
        train_idx,
        test_idx,
        scores.probability,
        size,
        validation,
        decision,
        fairness,
        figures,
    )
    predictor.metadata["metrics"] = {k: v for k, v in metrics.items() if np.isfinite(v)}
    predictor.metadata["model_card"] = build_card(result)
    return result


def summary_lines(result: TrainResult) -> list[str]:
    """Key numbers for the terminal, in the order a data scientist reads them."""
    m = result.metrics
    lines = [
        f"sample size: {result.sample_size['verdict']}",
        f"chosen estimator: {result.selection.chosen} "
        + " ".join(f"(CV log-loss {k} {v:.4f})" for k, v in result.selection.mean_log_loss.items()),
    ]
    if result.validation is not None:
        c = result.validation.corrected
        lines.append(
            f"optimism-corrected AUROC {c['auroc'].value:.3f} "
            f"(95% CI {c['auroc'].low:.3f}-{c['auroc'].high:.3f}), slope "
            f"{c['calibration_slope'].value:.3f} "
            f"({c['calibration_slope'].low:.3f}-{c['calibration_slope'].high:.3f}), "
            f"ICI {c['ici'].value:.3f}"
        )
    lines.append(
        f"held-out AUROC {m['auroc']:.3f} (95% CI {m['auroc_ci_low']:.3f}-"
        f"{m['auroc_ci_high']:.3f}), Brier {m['brier']:.4f}, calibration intercept "
        f"{m['calibration_intercept']:+.3f}, slope {m['calibration_slope']:.3f}"
    )
    if "truth_auroc" in m:
        lines.append(
            f"true-probability AUROC on the same patients {m['truth_auroc']:.3f} "
            f"(gap {m['auroc_gap_to_truth']:+.3f})"
        )
    return lines
