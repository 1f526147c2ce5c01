"""Warnings that tell a clinician what the model does not know about this patient.

Two kinds for now: optional inputs that were not provided (the model then falls back on its
handling of missing values, so the prediction is less specific), and values or categories
outside what the training data contained (trees are flat beyond their last split, a linear
model extrapolates: either way the number is less trustworthy). Safety-screen fields are not
listed here: their absence is reported by the eligibility assessment, which knows which of
them matter for which patient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from features.schema import BY_NAME, GROUP_LABELS, PREDICTORS
from serving.typicality import outside_support


def _fmt(value: float, unit: str) -> str:
    text = f"{value:g}"
    return f"{text} {unit}".strip()


def _missing(row: dict[str, Any]) -> list[dict[str, Any]]:
    by_group: dict[str, list[str]] = {}
    for f in PREDICTORS:
        v = row[f.name]
        if not f.required and (v is None or (isinstance(v, float) and math.isnan(v))):
            by_group.setdefault(f.group, []).append(f.name)
    out = []
    for group, names in by_group.items():
        labels = ", ".join(next(f.label for f in PREDICTORS if f.name == n) for n in names)
        out.append(
            {
                "code": "missing_input",
                "fields": names,
                "message": f"{GROUP_LABELS[group]} not provided: {labels}. The model used its "
                "handling of missing values, so the prediction is less specific.",
            }
        )
    return out


def _outside(
    row: dict[str, Any], names: list[str], reference: dict[str, Any]
) -> list[dict[str, Any]]:
    """One warning, in words, per field `typicality.outside_support` found for this patient."""
    out = []
    for name in names:
        f, v, ref = BY_NAME[name], row[name], reference["fields"].get(name, {})
        if f.kind == "category":
            message = f"{f.label} '{v}' did not occur in the training data."
        elif "min" not in ref:
            message = f"{f.label} was never recorded in the training data."
        else:
            side, bound = (
                ("below the lowest", ref["min"])
                if v < ref["min"]
                else ("above the highest", ref["max"])
            )
            message = (
                f"{f.label} {_fmt(v, f.unit_label)} is {side} value in the training "
                f"data ({_fmt(bound, f.unit_label)}); the model extrapolates."
            )
        out.append({"code": "outside_training_data", "fields": [name], "message": message})
    return out


def warnings_for(
    frame: pd.DataFrame,
    reference: dict[str, Any],
    outside: Sequence[list[str]] | None = None,
) -> list[list[dict[str, Any]]]:
    """Per patient: missing-input and outside-training-data warnings, in schema order.

    `outside` is `typicality.outside_support(frame, reference)` when the caller already has it
    (the applicability block carries it), so it is computed once per patient.
    """
    if outside is None:
        outside = outside_support(frame, reference)
    records = frame.to_dict(orient="records")
    return [
        _missing(r) + _outside(r, names, reference)
        for r, names in zip(records, outside, strict=True)
    ]
