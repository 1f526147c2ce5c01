"""Fit-side state of the served interval (`serving.uncertainty`): plain JSON, no model objects.

The bootstrap members themselves are fitted by `training.pipeline.bootstrap_members`; this
module only records how many there are and, for the missing-input part of the interval, K
"typical values" per optional predictor: training quantiles at (k + 0.5)/K, taken from the
observed values themselves (`inverted_cdf`), so an imputed count stays a whole number and an
imputed category is a level that occurred, in proportion to how often it occurred. Each field's
values are put in a fixed random order (seeded by the training seed and the field's position)
so that copy k pairs fields as if independent rather than all-low-together.

The quantiles summarise the marginal distribution only; they are aggregate statistics like the
reference ranges, not patient rows, so the artifact carries no individual's record.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from features.schema import PREDICTORS
from serving.uncertainty import METHOD, STATE_FORMAT, Z_95

#: Imputations per patient with missing inputs. The SD from K copies has a relative standard
#: error of about 1/sqrt(2(K-1)) (13% at 32): small next to the spread it measures.
DEFAULT_K = 32
#: Members the interval was designed for (standards.md §4: B >= 200). In the study the normal
#: interval's coverage moved by at most 1.4 points from 30 to 200 members, but with 30 each
#: patient's SD was off by 8-9% (median) from its 200-member value (benchmarks/INTERVALS.md).
RECOMMENDED_MEMBERS = 200


def typical_values(col: pd.Series, kind: str, k: int, rng: np.random.Generator) -> list[Any]:
    """K observed values at evenly spaced quantiles, in a random (seeded) order; [] if none."""
    present = col.dropna()
    if present.empty:
        return []
    q = (np.arange(k) + 0.5) / k
    if kind == "category":
        levels = np.sort(present.astype(str).to_numpy())
        picked = levels[np.minimum((q * len(levels)).astype(int), len(levels) - 1)]
        return [str(v) for v in rng.permutation(picked)]
    picked = np.quantile(present.to_numpy(dtype=float), q, method="inverted_cdf")
    return [float(v) for v in rng.permutation(picked)]


def fit_uncertainty(
    train_frame: pd.DataFrame, *, n_members: int, seed: int, k: int = DEFAULT_K
) -> dict[str, Any]:
    """The JSON state of the served interval, from the training part only.

    `n_members` is the number of bootstrap members actually fitted (recorded so the card can
    say what the interval rests on).
    """
    if k < 2:
        raise ValueError(f"need at least 2 imputations per patient, got {k}")
    values: dict[str, list[Any]] = {}
    for i, f in enumerate(PREDICTORS):
        if f.required:
            continue
        rng = np.random.default_rng([seed, i])
        values[f.name] = typical_values(train_frame[f.name], f.kind, k, rng)
    return {
        "format": STATE_FORMAT,
        "method": METHOD,
        "level": 0.95,
        "z": Z_95,
        "n_members": int(n_members),
        "missing_inputs": {"k": k, "values": values},
    }
