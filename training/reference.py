"""Training reference statistics: what the model has seen, for applicability warnings at serving."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.schema import PREDICTORS


def reference_stats(frame: pd.DataFrame) -> dict[str, Any]:
    """Per predictor field: observed range (or levels) and missing fraction, JSON-ready.

    The range is the training support: trees predict a constant beyond their last split and a
    linear model extrapolates, so a value outside it is flagged, never silently trusted.
    """
    fields: dict[str, Any] = {}
    for f in PREDICTORS:
        col = frame[f.name]
        entry: dict[str, Any] = {"missing_fraction": float(col.isna().mean())}
        present = col.dropna()
        if f.kind == "category":
            entry["levels"] = sorted(str(v) for v in present.unique())
        elif len(present):
            values = present.to_numpy(dtype=float)
            entry.update(
                min=float(values.min()),
                max=float(values.max()),
                p01=float(np.percentile(values, 1)),
                p99=float(np.percentile(values, 99)),
            )
        fields[f.name] = entry
    return {"n": len(frame), "fields": fields}
