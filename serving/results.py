"""From scores to what callers receive: per-patient results for the API, tables for the CLI.

Every route (REST, batch CLI, MLflow pyfunc) goes through `Predictor.score` and the functions
here, so the same patient gets the same numbers, factors, eligibility and warnings everywhere.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from features import safety
from features import transform as tf
from features.schema import BY_NAME, ID_FIELD
from serving import typicality as typ
from serving.applicability import warnings_for
from serving.predictor import Predictor, Scores

#: Bands of the predicted probability of *response* (not of harm), for communication only.
#: Cut-offs at 30% and 60% bracket the 40-50% base rate of the published trials
#: (clinical.md §2, §7): "low" is clearly below what an average patient can expect,
#: "high" clearly above. Decisions belong to the clinician, not to these cut-offs.
RISK_BANDS: tuple[tuple[float, str], ...] = ((0.30, "low"), (0.60, "moderate"), (1.01, "high"))
TOP_FACTORS = 5


def risk_band(p: float) -> str:
    return next(name for upper, name in RISK_BANDS if p < upper)


def _json_value(name: str, value: object) -> object:
    """A factor's value as JSON: int for counts, bool for flags, None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    field = BY_NAME.get(name)
    if field is not None and field.kind == "boolean":
        return bool(value)
    if field is not None and field.kind == "integer":
        return int(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def _factor_units() -> dict[str, str]:
    return {f.name: f.unit for f in tf.FACTORS}


def value_text(contribution: dict[str, Any]) -> str:
    """A factor's value as a clinician reads it: "48 days", "yes", "relapse prevention"."""
    v = contribution.get("value")
    if v is None:
        return "not recorded"
    if isinstance(v, bool):
        return "yes" if v else "no"
    shown = f"{v:g}" if isinstance(v, float) else str(v).replace("_", " ")
    return f"{shown} {contribution['unit']}" if contribution.get("unit") else shown


def model_info(predictor: Predictor) -> dict[str, str]:
    meta = predictor.metadata
    return {"name": str(meta.get("name", "")), "version": str(meta.get("version", ""))}


def explain(
    predictor: Predictor,
    frame: pd.DataFrame,
    scores: Scores | None = None,
) -> list[dict[str, Any]]:
    """Full per-patient results (the `/v1/predict` payload items)."""
    scores = scores or predictor.score(frame)
    eligibility, blocks, warnings = _assessments(predictor, frame)
    units = _factor_units()
    labels = [f.label for f in tf.FACTORS]
    values = scores.values.to_numpy(dtype=object)  # scalar access on a DataFrame is slow
    ids = frame[ID_FIELD].to_numpy(dtype=object)
    model = model_info(predictor)
    out = []
    for i in range(len(frame)):
        contrib = scores.contributions[i]
        order = np.argsort(-np.abs(contrib), kind="stable")
        out.append(
            {
                "patient_id": ids[i],
                "probability": float(scores.probability[i]),
                "probability_interval": [float(scores.lower[i]), float(scores.upper[i])],
                "risk_band": risk_band(float(scores.probability[i])),
                "logit": float(scores.logit[i]),
                "base_log_odds": float(scores.base_log_odds[i]),
                "contributions": [
                    {
                        "feature": tf.FACTOR_NAMES[j],
                        "label": labels[j],
                        "value": _json_value(tf.FACTOR_NAMES[j], values[i, j]),
                        "unit": units[tf.FACTOR_NAMES[j]],
                        "shap": float(contrib[j]),
                    }
                    for j in order
                ],
                "eligibility": eligibility[i],
                "applicability": blocks[i],
                "warnings": warnings[i],
                "model": model,
            }
        )
    return out


def _assessments(
    predictor: Predictor, frame: pd.DataFrame
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Per patient: eligibility, applicability block and warnings, for every result shape.

    The warnings are derived from the applicability block (its outside-training-support list
    and typicality), so that check runs once per patient.
    """
    eligibility = [eligibility_dict(e) for e in safety.assess_frame(frame)]
    blocks = predictor.applicability(frame)
    return eligibility, blocks, patient_warnings(predictor, frame, blocks)


def patient_warnings(
    predictor: Predictor, frame: pd.DataFrame, blocks: list[dict[str, Any]]
) -> list[list[dict[str, Any]]]:
    """Per patient of `frame`: missing-input and outside-training-data warnings, then those its
    applicability block (`blocks[i]`) gives: atypical patient, unseen missingness pattern."""
    outside = [b["outside_training_support"] for b in blocks]
    return [
        w + typ.warnings_from(b)
        for w, b in zip(warnings_for(frame, predictor.reference, outside), blocks, strict=True)
    ]


def eligibility_dict(e: safety.Eligibility) -> dict[str, Any]:
    return {
        "status": e.status,
        "reasons": [
            {
                "rule": r.rule,
                "severity": r.severity,
                "message": r.message,
                "source": r.source,
                "fields": list(r.fields),
            }
            for r in e.reasons
        ],
    }


def scores_frame(predictor: Predictor, frame: pd.DataFrame) -> pd.DataFrame:
    """Numeric scores per patient (the MLflow pyfunc output, also usable on Spark)."""
    s = predictor.score(frame)
    out = pd.DataFrame(
        {
            "patient_id": frame[ID_FIELD].astype(object).to_numpy(),
            "probability": s.probability,
            "probability_lower": s.lower,
            "probability_upper": s.upper,
            "logit": s.logit,
            "base_log_odds": s.base_log_odds,
        }
    )
    app = predictor.applicability_columns(frame)
    out["typical"] = app.typical.astype(bool)
    out["typicality_percentile"] = app.percentile
    shap_cols = pd.DataFrame(s.contributions, columns=[f"shap__{n}" for n in tf.FACTOR_NAMES])
    return pd.concat([out, shap_cols], axis=1)


def value_cell(name: str, value: object) -> str:
    """A factor's value as the batch table writes it: the JSON value as text, "" when missing."""
    v = _json_value(name, value)
    return "" if v is None else str(v)


def batch_table(
    predictor: Predictor,
    frame: pd.DataFrame,
    top: int = TOP_FACTORS,
    *,
    results: list[dict[str, Any]] | None = None,
) -> pd.DataFrame:
    """One row per patient for `ketapredict predict`: flat columns plus JSON text for lists.

    `results` lets a caller that already has `explain`'s output (to audit it) reuse it.
    """
    rows = []
    for r in results if results is not None else explain(predictor, frame):
        row: dict[str, Any] = {
            "patient_id": r["patient_id"],
            "probability": r["probability"],
            "probability_lower": r["probability_interval"][0],
            "probability_upper": r["probability_interval"][1],
            "risk_band": r["risk_band"],
            "base_log_odds": r["base_log_odds"],
        }
        for k, c in enumerate(r["contributions"][:top], start=1):
            row[f"factor_{k}"] = c["label"]
            row[f"factor_{k}_value"] = "" if c["value"] is None else str(c["value"])
            row[f"factor_{k}_shap"] = c["shap"]
        a = r["applicability"]
        row["typical"] = a["typical"]
        row["typicality_percentile"] = a["typicality_percentile"]
        row["unseen_missingness_pattern"] = a["unseen_missingness_pattern"]
        row["applicability"] = json.dumps(a)
        row["eligibility"] = r["eligibility"]["status"]
        row["eligibility_reasons"] = json.dumps(r["eligibility"]["reasons"])
        row["warnings"] = json.dumps(r["warnings"])
        row["model_name"] = r["model"]["name"]
        row["model_version"] = r["model"]["version"]
        rows.append(row)
    return pd.DataFrame(rows)
