"""The documents that travel with a model version: card (JSON, Markdown) and HTML report."""

from __future__ import annotations

import json
from importlib import metadata as pkg_metadata
from typing import Any

import pandas as pd

from training.card import SYNTHETIC_WARNING, card_markdown
from training.report import Section, render
from training.train import TrainResult

_SOFTWARE = ("lightgbm", "scikit-learn", "numpy", "pandas", "mlflow", "bentoml", "shap")


def _estimates_table(validation: Any) -> pd.DataFrame:
    rows = []
    for k, c in validation.corrected.items():
        a = validation.apparent[k]
        rows.append(
            {
                "metric": k,
                "apparent": a.value,
                "corrected": c.value,
                "corrected 95% CI": f"{c.low:.3f} to {c.high:.3f}",
            }
        )
    return pd.DataFrame(rows)


def _sections(result: TrainResult, verdict: dict[str, Any]) -> list[Section]:
    m, size = result.metrics, result.sample_size
    out = [
        Section("Sample size (Riley et al.)", [str(size["verdict"])]),
        Section(
            "Development",
            [
                f"Candidates {', '.join(result.selection.mean_log_loss)} compared by nested "
                f"cross-validation log-loss; chosen: {result.selection.chosen} "
                f"({json.dumps(result.hyper)}). Logistic recalibration of the margin on "
                "out-of-fold margins keeps SHAP additive in calibrated log-odds."
            ],
            tables=[("Outer-fold log-loss", pd.DataFrame(result.selection.outer_log_loss))],
        ),
    ]
    if result.validation is not None:
        out.append(
            Section(
                "Internal validation",
                [result.validation.method + "."],
                tables=[
                    (
                        "Apparent and optimism-corrected performance",
                        _estimates_table(result.validation),
                    )
                ],
                figures=[
                    (n.removesuffix(".png").replace("_", " "), f)
                    for n, f in result.figures.items()
                    if "internal" in n
                ],
            )
        )
    out.append(
        Section(
            "Held-out performance (split sample)",
            [
                f"AUROC {m['auroc']:.3f} "
                f"(95% CI {m['auroc_ci_low']:.3f}-{m['auroc_ci_high']:.3f}); "
                f"Brier {m['brier']:.4f}; calibration intercept {m['calibration_intercept']:+.3f}, "
                f"slope {m['calibration_slope']:.3f}; {m['n']:.0f} patients, {m['events']:.0f} "
                "responders."
            ],
            figures=[
                (n.removesuffix(".png").replace("_", " "), f)
                for n, f in result.figures.items()
                if "heldout" in n
            ],
        )
    )
    if result.decision_curve is not None:
        out.append(
            Section(
                "Decision curve (out-of-fold)",
                tables=[("Net benefit by threshold", result.decision_curve)],
            )
        )
    if result.fairness is not None:
        out.append(
            Section(
                "Performance by group",
                ["One table per attribute; groups with few events are flagged, not hidden."],
                tables=list(result.fairness.tables.items()),
            )
        )
    out.append(
        Section(
            f"Promotion gate (criteria {verdict['criteria_version']}): "
            + ("passed" if verdict["passed"] else "not passed"),
            tables=[("Criteria", pd.DataFrame(verdict["checks"])[["name", "passed", "detail"]])],
        )
    )
    missing = pd.DataFrame(
        [
            {"field": k, "missing fraction": v["missing_fraction"]}
            for k, v in result.predictor.reference["fields"].items()
        ]
    )
    out.append(Section("Predictors and missingness", tables=[("Training data", missing)]))
    out.append(
        Section("Software", [", ".join(f"{p} {pkg_metadata.version(p)}" for p in _SOFTWARE)])
    )
    return out


def build_documents(result: TrainResult, verdict: dict[str, Any]) -> dict[str, str]:
    """`model_card.json`, `model_card.md` and `report.html` for this run."""
    card = dict(result.predictor.metadata["model_card"], gate=verdict)
    fairness_md = result.fairness.to_markdown() if result.fairness is not None else ""
    notices = ["Decision support, not a decision."]
    if card["training_data"]["synthetic"]:
        notices.insert(0, SYNTHETIC_WARNING)
    title = f"Training report: {card['model']['name']} ({card['model']['estimator']})"
    return {
        "model_card.json": json.dumps(card, indent=1, default=str),
        "model_card.md": card_markdown(card, fairness_md=fairness_md, verdict=verdict),
        "report.html": render(title, notices, _sections(result, verdict)),
    }
