"""The model card that travels with every model version (Mitchell et al.; standards.md §6).

Built from what the run measured, never typed by hand, so it cannot disagree with the metrics
logged beside it. The card is stored in the predictor's metadata (served at `GET /v1/model`)
and logged to MLflow as JSON and Markdown.
"""

from __future__ import annotations

from typing import Any

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


def build_card(metadata: dict[str, Any], metrics: dict[str, float]) -> dict[str, Any]:
    """JSON model card from the run's metadata and held-out metrics."""
    synthetic = bool(metadata.get("synthetic_data"))
    limitations = [
        "Internal validation only (held-out split of the development data); no external "
        "validation yet.",
        "Small true effects: individual predictions are uncertain; read the interval.",
    ]
    if synthetic:
        limitations.insert(0, SYNTHETIC_WARNING)
    return {
        "model": {
            "name": metadata.get("name"),
            "estimator": metadata.get("estimator"),
            "hyperparameters": metadata.get("hyperparameters"),
            "trained_at": metadata.get("trained_at"),
        },
        "intended_use": INTENDED_USE,
        "out_of_scope_uses": OUT_OF_SCOPE,
        "outcome": "response_6m: no heavy drinking days (>=4 drinks female, >=5 male) in days "
        "91-180 after the first infusion; loss to follow-up counts as no response.",
        "training_data": {
            "synthetic": synthetic,
            "n": metadata.get("n_train"),
            "events": metadata.get("events_train"),
            "warning": SYNTHETIC_WARNING if synthetic else None,
        },
        "performance_heldout": {
            "auroc": [metrics["auroc"], metrics["auroc_ci_low"], metrics["auroc_ci_high"]],
            "brier": metrics["brier"],
            "calibration_intercept": metrics["calibration_intercept"],
            "calibration_slope": metrics["calibration_slope"],
            "n": metrics["n"],
            "events": metrics["events"],
        },
        "limitations": limitations,
        "decision_support_notice": "Decision support, not a decision.",
    }


def card_markdown(card: dict[str, Any]) -> str:
    """The same card for people: Markdown logged next to the JSON."""
    perf = card["performance_heldout"]
    auc, lo, hi = perf["auroc"]
    lines = [
        f"# Model card: {card['model']['name']} ({card['model']['estimator']})",
        "",
        f"Trained {card['model']['trained_at']}.",
        "",
        "## Intended use",
        card["intended_use"],
        "",
        "## Out of scope",
        *[f"- {u}" for u in card["out_of_scope_uses"]],
        "",
        "## Training data",
        f"{card['training_data']['n']} patients, {card['training_data']['events']} responders."
        + (
            f" **{card['training_data']['warning']}**" if card["training_data"]["synthetic"] else ""
        ),
        "",
        "## Held-out performance",
        f"- AUROC {auc:.3f} (95% CI {lo:.3f}-{hi:.3f})",
        f"- Brier {perf['brier']:.4f}",
        f"- Calibration intercept {perf['calibration_intercept']:+.3f}, "
        f"slope {perf['calibration_slope']:.3f}",
        f"- {perf['n']:.0f} patients, {perf['events']:.0f} responders",
        "",
        "## Limitations",
        *[f"- {x}" for x in card["limitations"]],
        "",
        card["decision_support_notice"],
        "",
    ]
    return "\n".join(lines)
