"""The table of `ketapredict predict` (and of the Spark engine), built column by column.

Its content is `results.batch_table(results.explain(...))`'s, to the character (a test holds
them equal); what differs is the cost. A million patients with explanations must score in about
a minute, and per-patient dicts and `json.dumps` calls were most of the time. Here the arrays
are sorted and gathered once, and what patients share is written once: patients who lack the
same inputs share their missing-input warnings and much of their applicability JSON, patients
with the same eligibility verdict share its JSON. Atypical patients and values outside the
training data (a few percent) take the per-patient path.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from features import safety
from features import transform as tf
from features.schema import BY_NAME, ID_FIELD, PREDICTORS
from serving import typicality as typ
from serving.applicability import missing_input_warnings
from serving.audit.keys import output_summary_texts
from serving.predictor import Predictor, Scores
from serving.results import (
    RISK_BANDS,
    TOP_FACTORS,
    eligibility_dict,
    model_info,
    patient_warnings,
    value_cell,
)

_PERCENTILE_MARK = "\x00typicality_percentile\x00"
_OPTIONAL = np.array([not f.required for f in PREDICTORS])
_PREDICTOR_NAMES = np.array([f.name for f in PREDICTORS])


def batch_scores(
    predictor: Predictor,
    frame: pd.DataFrame,
    top: int = TOP_FACTORS,
    *,
    scores: Scores | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """The output table and, per patient, the audit's output summary as JSON text
    (`serving.audit.keys.output_summary_texts`, for `AuditStore.prepare_table`)."""
    scores = scores or predictor.score(frame)
    n = len(frame)
    app = predictor.applicability_columns(frame)
    verdicts, eligibility, reasons_json = _eligibility(frame)
    simple = app.typical & np.array([not o for o in app.outside], dtype=bool)
    warnings, warnings_json, applicability_json = _warnings_and_applicability(
        predictor, frame, app, simple
    )
    bands = np.select(
        [scores.probability < upper for upper, _ in RISK_BANDS],
        [name for _, name in RISK_BANDS],
        default=RISK_BANDS[-1][1],
    )
    model = model_info(predictor)
    table: dict[str, Any] = {
        "patient_id": frame[ID_FIELD].to_numpy(dtype=object),
        "probability": scores.probability,
        "probability_lower": scores.lower,
        "probability_upper": scores.upper,
        "risk_band": bands,
        "base_log_odds": scores.base_log_odds,
    }
    order = np.argsort(-np.abs(scores.contributions), axis=1, kind="stable")[:, :top]
    cells = _value_cells(scores.values, order)
    labels = np.array([f.label for f in tf.FACTORS], dtype=object)
    rows = np.arange(n)
    for k in range(order.shape[1]):
        table[f"factor_{k + 1}"] = labels[order[:, k]]
        table[f"factor_{k + 1}_value"] = cells[:, k]
        table[f"factor_{k + 1}_shap"] = scores.contributions[rows, order[:, k]]
    table["typical"] = app.typical.astype(bool)
    table["typicality_percentile"] = app.percentile
    table["unseen_missingness_pattern"] = app.unseen[app.pattern]
    table["applicability"] = applicability_json
    table["eligibility"] = [e["status"] for e in eligibility]
    table["eligibility_reasons"] = reasons_json
    table["warnings"] = warnings_json
    table["model_name"] = model["name"]
    table["model_version"] = model["version"]
    # patients alike in eligibility rules and missingness (and nothing unusual) share the
    # non-numeric part of their audit summary
    alike: list[Hashable] = [
        (verdict, p) if s else ("patient", i)
        for i, (verdict, p, s) in enumerate(
            zip(verdicts, app.pattern.tolist(), simple, strict=True)
        )
    ]
    outputs = output_summary_texts(
        scores.probability, (scores.lower, scores.upper), bands, eligibility, warnings, alike
    )
    return pd.DataFrame(table), outputs


def _eligibility(
    frame: pd.DataFrame,
) -> tuple[list[tuple[str, ...]], list[dict[str, Any]], list[str]]:
    """Per patient: its verdict's status and rule ids (what the audit keeps of it), the
    verdict as a dict, and its reasons' JSON. Patients with equal verdicts share the dict:
    read it, do not change it."""
    shared: dict[safety.Eligibility, tuple[tuple[str, ...], dict[str, Any], str]] = {}
    out = []
    for e in safety.assess_frame(frame):
        verdict = shared.get(e)
        if verdict is None:
            d = eligibility_dict(e)
            rules = (e.status, *(r.rule for r in e.reasons))
            verdict = shared[e] = (rules, d, json.dumps(d["reasons"]))
        out.append(verdict)
    return [v[0] for v in out], [v[1] for v in out], [v[2] for v in out]


def _warnings_and_applicability(
    predictor: Predictor, frame: pd.DataFrame, app: typ.Applicability, simple: np.ndarray
) -> tuple[list[list[dict[str, Any]]], list[str], list[str]]:
    """Per patient: warnings, their JSON, and the applicability block's JSON.

    A simple patient (typical, nothing outside the training data) has exactly the warnings
    and block of its missingness pattern, apart from its typicality percentile: each pattern's
    are written once and the percentile put in. The others go the per-patient way.
    """
    n = len(frame)
    warnings: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    warnings_json = [""] * n
    applicability_json = [""] * n
    by_pattern: dict[int, tuple[list[dict[str, Any]], str, tuple[str, str]]] = {}
    # what the block's JSON holds of a pattern: its missing groups, and whether it was seen
    by_groups: dict[tuple[tuple[str, ...], bool], tuple[str, str]] = {}
    percent = app.percentile.tolist()
    for i in np.flatnonzero(simple).tolist():
        g = int(app.pattern[i])
        shared = by_pattern.get(g)
        if shared is None:
            block = app.block(i)
            missing = _PREDICTOR_NAMES[app.patterns[g] & _OPTIONAL].tolist()
            w = missing_input_warnings(missing) + typ.warnings_from(block)
            key = (tuple(block["missing_groups"]), block["unseen_missingness_pattern"])
            if key not in by_groups:
                text = json.dumps({**block, "typicality_percentile": _PERCENTILE_MARK})
                head, tail = text.split(json.dumps(_PERCENTILE_MARK))
                by_groups[key] = (head, tail)
            shared = by_pattern[g] = (w, _list_json(w), by_groups[key])
        warnings[i], warnings_json[i] = shared[0], shared[1]
        head, tail = shared[2]
        applicability_json[i] = f"{head}{percent[i]!r}{tail}"
    others = np.flatnonzero(~simple)
    if len(others):
        blocks = [app.block(i) for i in others.tolist()]
        found = patient_warnings(predictor, frame.iloc[others], blocks)
        for i, block, w in zip(others.tolist(), blocks, found, strict=True):
            warnings[i] = w
            warnings_json[i] = json.dumps(w)
            applicability_json[i] = json.dumps(block)
    return warnings, warnings_json, applicability_json


def _list_json(warnings: list[dict[str, Any]]) -> str:
    """`json.dumps(warnings)`, each warning's text made once: patterns share their groups'."""
    return "[" + ", ".join(map(_warning_json, warnings)) + "]"


def _warning_json(w: dict[str, Any]) -> str:
    if list(w) != ["code", "fields", "message"]:
        return json.dumps(w)
    return _warning_text(w["code"], tuple(w["fields"]), w["message"])


@lru_cache(maxsize=16384)
def _warning_text(code: str, fields: tuple[str, ...], message: str) -> str:
    return json.dumps({"code": code, "fields": list(fields), "message": message})


def _value_cells(values: pd.DataFrame, order: np.ndarray) -> np.ndarray:
    """(n, top) text of the shown factors' values, as `batch_table` writes them: the JSON value
    as text ("True", "3", "0.25", "relapse_prevention"), "" when missing. Only the cells shown
    are formatted, a factor column at a time."""
    out = np.empty(order.shape, dtype=object)
    for c in np.unique(order).tolist():
        shown = order == c
        rows = np.flatnonzero(shown.any(axis=1))
        texts = _texts(tf.FACTOR_NAMES[c], values.iloc[rows, c].to_numpy())
        at = np.full(len(order), -1)
        at[rows] = np.arange(len(rows))
        r, k = np.nonzero(shown)
        out[r, k] = texts[at[r]]
    return out


def _texts(name: str, values: np.ndarray) -> np.ndarray:
    """`results.value_cell` of each value of one factor."""
    field = BY_NAME.get(name)
    if values.dtype.kind != "f":  # categories: few distinct values
        cache: dict[Any, str] = {}
        out = []
        for v in values.tolist():
            if v not in cache:
                cache[v] = value_cell(name, v)
            out.append(cache[v])
        return np.array(out, dtype=object)
    missing = np.isnan(values)
    if field is not None and field.kind == "boolean":
        text = np.where(values != 0, "True", "False").astype(object)
    elif field is not None and field.kind == "integer":
        whole = np.where(missing, 0, values).astype(np.int64)
        text = np.array(list(map(str, whole.tolist())), dtype=object)
    else:
        text = np.array(list(map(float.__repr__, values.tolist())), dtype=object)
    text[missing] = ""
    return text
