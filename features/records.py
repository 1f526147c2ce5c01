"""Canonical frame rows as JSON records, the shape `POST /v1/predict` accepts.

The inverse of `features.validation.validate_records`: integers become JSON integers, flags
JSON booleans, and missing optional values are omitted rather than sent as null.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from features.schema import INPUT_FIELDS


def _json(kind: str, value: Any) -> Any:
    if kind == "integer":
        return int(value)
    if kind == "boolean":
        return bool(value)
    if kind == "number":
        return float(value)
    return str(value)


def to_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """One dict per row, input fields only, in schema order."""
    out = []
    for row in frame.to_dict(orient="records"):
        record = {}
        for f in INPUT_FIELDS:
            v = row.get(f.name)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            record[f.name] = _json(f.kind, v)
        out.append(record)
    return out
