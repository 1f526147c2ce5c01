"""The model card that travels with every model version (Mitchell et al.; standards.md §6).

Built from what the run measured, never typed by hand, so it cannot disagree with the metrics
logged beside it. The card is stored in the predictor's metadata (served at `GET /v1/model`)
and logged to MLflow as JSON and Markdown.
"""

from __future__ import annotations

from typing import Any

from serving.uncertainty import METHOD_DESCRIPTION

INTENDED_USE = (
    "Estimate, before a course of ketamine infusions for alcohol use disorder starts, the "
    "probability that the patient has no heavy drinking days in days 91-180 after the first "
    "infusion, to inform a shared decision between clinician and patient."
)
OUT_OF_SCOPE = [
    "Deciding eligibility or safety: the eligibility panel applies published exclusion rules; "
    "the probability does not.",
    "Patients outside the training population (see the training ranges and warnings).",
    "Causal comparison of treatment plans: changing a plan field shows the model's prediction "
    "under that plan, not the effect of the plan.",
    "Any use without clinical judgement: this is decision support, not a decision.",
]
SYNTHETIC_WARNING = (
    "Trained on a synthetic cohort from the ketapredict simulator (effect sizes from "
    "published studies, reference/clinical.md). It has never seen a real patient: use it to "
    "test and demonstrate the service, not to treat anyone."
)


#: Where each TRIPOD+AI item's evidence is, in this card or the training report (standards §1).
TRIPOD_AI: dict[str, str] = {
    "5b, 20a, 21 (flow, n and events per analysis)": "training_data; sample_size; "
    "internal_validation; performance_heldout",
    "7, 11, 20b (missing data and its handling)": "report: predictors and missingness; "
    "training_data.missingness",
    "9a-b, 10 (predictors; sample size)": "data dictionary (features/schema.py); sample_size",
    "12a-c, 13 (split, model types, tuning, internal validation, recalibration)": "development",
    "12e, 23a (discrimination, calibration, utility with CIs, by subgroup)": "internal_validation;"
    " performance_heldout; decision_curve; fairness",
    "12f, 24 (recalibration and performance after it)": "development.recalibration; "
    "internal_validation",
    "12g, 22 (model, API schema, software)": "model; report: software",
    "14, 15 (fairness; output and thresholds)": "fairness; output",
    "27a (poor-quality or missing inputs at deployment)": "applicability",
}


def build_card(result: Any) -> dict[str, Any]:
    """JSON model card from a `training.train.TrainResult` (metadata, metrics, evidence)."""
    meta, metrics = result.predictor.metadata, result.metrics
    synthetic = bool(meta.get("synthetic_data"))
    limitations = [
        "Internal validation only (cross-validation of the whole pipeline and a held-out "
        "split of the development data); no external validation yet.",
        "Small true effects: individual predictions are uncertain; read the interval.",
    ]
    if not result.sample_size["adequate"]:
        limitations.insert(0, "Exploratory model: " + str(result.sample_size["verdict"]))
    if synthetic:
        limitations.insert(0, SYNTHETIC_WARNING)
    card: dict[str, Any] = {
        "model": {
            "name": meta.get("name"),
            "estimator": meta.get("estimator"),
            "hyperparameters": meta.get("hyperparameters"),
            "trained_at": meta.get("trained_at"),
        },
        "intended_use": INTENDED_USE,
        "out_of_scope_uses": OUT_OF_SCOPE,
        "outcome": "response_6m: no heavy drinking days (>=4 drinks female, >=5 male) in days "
        "91-180 after the first infusion; loss to follow-up counts as no response.",
        "output": "Calibrated probability of response (0-1) with an interval; risk bands "
        "low <30%, moderate 30-60%, high >=60% are for communication, not decisions.",
        "probability_interval": METHOD_DESCRIPTION,
        "training_data": {
            "synthetic": synthetic,
            "n": meta.get("n_train"),
            "events": meta.get("events_train"),
            "warning": SYNTHETIC_WARNING if synthetic else None,
            "missingness": {
                k: v["missing_fraction"] for k, v in result.predictor.reference["fields"].items()
            },
        },
        "sample_size": {
            k: result.sample_size[k]
            for k in (
                "n",
                "events",
                "parameters",
                "max_parameters",
                "expected_shrinkage",
                "adequate",
                "verdict",
            )
        },
        "development": {
            "candidates": list(result.selection.mean_log_loss),
            "outer_cv_log_loss": result.selection.mean_log_loss,
            "chosen": result.selection.chosen,
            "recalibration": "logistic recalibration of the margin on out-of-fold margins",
        },
        "performance_heldout": {
            "auroc": [metrics["auroc"], metrics["auroc_ci_low"], metrics["auroc_ci_high"]],
            "brier": metrics["brier"],
            "calibration_intercept": metrics["calibration_intercept"],
            "calibration_slope": metrics["calibration_slope"],
            "ici": metrics.get("ici"),
            "n": metrics["n"],
            "events": metrics["events"],
        },
        "limitations": limitations,
        "tripod_ai": TRIPOD_AI,
        "decision_support_notice": "Decision support, not a decision.",
    }
    if result.validation is not None:
        card["internal_validation"] = result.validation.to_dict()
    if result.fairness is not None:
        card["fairness"] = result.fairness.to_dict()
    return card


def _ci(e: dict[str, float]) -> str:
    return f"{e['value']:.3f} (95% CI {e['low']:.3f}-{e['high']:.3f})"


def card_markdown(
    card: dict[str, Any], *, fairness_md: str = "", verdict: dict[str, Any] | None = None
) -> str:
    """The same card for people: Markdown logged next to the JSON and served."""
    perf = card["performance_heldout"]
    auc, lo, hi = perf["auroc"]
    lines = [
        f"# Model card: {card['model']['name']} ({card['model']['estimator']})",
        "",
        f"Trained {card['model']['trained_at']}. {card['decision_support_notice']}",
        "",
        "## Intended use",
        card["intended_use"],
        "",
        "## Out of scope",
        *[f"- {u}" for u in card["out_of_scope_uses"]],
        "",
        "## Output",
        card["output"],
        "",
        "## Training data",
        f"{card['training_data']['n']} patients, {card['training_data']['events']} responders."
        + (
            f" **{card['training_data']['warning']}**" if card["training_data"]["synthetic"] else ""
        ),
        "",
        "## Sample size",
        card["sample_size"]["verdict"],
        "",
    ]
    iv = card.get("internal_validation")
    if iv:
        c = iv["corrected"]
        lines += [
            "## Internal validation (optimism-corrected)",
            iv["method"] + ".",
            "",
            "| metric | apparent | corrected |",
            "|---|---|---|",
            *[f"| {k} | {_ci(iv['apparent'][k])} | {_ci(c[k])} |" for k in c],
            "",
        ]
    lines += [
        "## Held-out performance (split sample)",
        f"- AUROC {auc:.3f} (95% CI {lo:.3f}-{hi:.3f})",
        f"- Brier {perf['brier']:.4f}",
        f"- Calibration intercept {perf['calibration_intercept']:+.3f}, "
        f"slope {perf['calibration_slope']:.3f}",
        f"- {perf['n']:.0f} patients, {perf['events']:.0f} responders",
        "",
    ]
    if fairness_md:
        lines += ["## Performance by group", fairness_md, ""]
    if verdict:
        lines += [
            f"## Promotion gate (criteria {verdict['criteria_version']}): "
            + ("passed" if verdict["passed"] else "not passed"),
            "",
        ]
        lines += [
            f"- {'pass' if c['passed'] else 'FAIL'}: {c['name']}: {c['detail']}"
            for c in verdict["checks"]
        ]
        lines.append("")
    lines += [
        "## Limitations",
        *[f"- {x}" for x in card["limitations"]],
        "",
        "## TRIPOD+AI items",
        "| item | where |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in card["tripod_ai"].items()],
        "",
    ]
    return "\n".join(lines)
