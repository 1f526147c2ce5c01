"""Warnings that tell a clinician what the model does not know about this patient.

Two kinds for now: optional inputs that were not provided (the model then falls back on its
handling of missing values, so the prediction is less specific), and values or categories
outside what the training data contained (trees are flat beyond their last split, a linear
model extrapolates: either way the number is less trustworthy). Safety-screen fields are not
listed here: their absence is reported by the eligibility assessment, which knows which of
them matter for which patient.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from features.schema import BY_NAME, GROUP_LABELS, PREDICTORS
from serving.typicality import outside_support


def _fmt(value: float, unit: str) -> str:
    text = f"{value:g}"
    return f"{text} {unit}".strip()


_OPTIONAL = [f.name for f in PREDICTORS if not f.required]


def missing_input_warnings(names: Sequence[str]) -> list[dict[str, Any]]:
    """One warning per data-dictionary group with missing optional inputs."""
    return [
        {"code": "missing_input", "fields": list(fields), "message": message}
        for fields, message in _missing_texts(tuple(names))
    ]


@lru_cache(maxsize=4096)
def _missing_texts(names: tuple[str, ...]) -> tuple[tuple[tuple[str, ...], str], ...]:
    """(fields, message) per group; cached, since a batch repeats few missingness patterns."""
    by_group: dict[str, list[str]] = {}
    for name in names:
        by_group.setdefault(BY_NAME[name].group, []).append(name)
    return tuple(
        (
            tuple(group_names),
            f"{GROUP_LABELS[group]} not provided: "
            f"{', '.join(BY_NAME[n].label for n in group_names)}. The model used its "
            "handling of missing values, so the prediction is less specific.",
        )
        for group, group_names in by_group.items()
    )


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
    gaps = frame[_OPTIONAL].isna().to_numpy()
    out = []
    for i in range(len(frame)):
        warnings = missing_input_warnings([_OPTIONAL[j] for j in np.flatnonzero(gaps[i])])
        if outside[i]:
            row = {name: frame[name].iat[i] for name in outside[i]}
            warnings += _outside(row, outside[i], reference)
        out.append(warnings)
    return out
