"""The feature transformer: canonical frame in, model matrix out, identical in training and serving.

Every choice is fixed by the schema, so the transformer learns nothing from data and cannot drift
between a training run and a serving process: category levels come from `Field.levels`, not
from whatever a training file happened to contain. Missing values stay NaN (LightGBM routes them
natively; the logistic candidate imputes inside its own pipeline).

Derived features, each with its reason:
- `female`: the sex category as 0/1 (two levels, one column).
- one 0/1 column per non-"none" level of `psychotherapy` and `concurrent_medication`
  ("none" is the reference); all NaN when the category is missing.
- `log(x + 1)` for the right-skewed, roughly log-normal laboratory values (GGT, AST, ALT, PEth,
  hs-CRP, IL-6, TNF-α, IL-1β): their effects act on a multiplicative scale, which a linear
  model only sees after the log; trees are unaffected by a monotone transform.
- `ast_alt_ratio`: AST/ALT above 2 marks alcoholic liver disease (clinical.md §4, Gough 2015).
- `log1p_hdd_90d` beside `hdd_90d`: heavy drinking days are a right-skewed count bounded by
  90; on the log scale a linear model can express an effect that is steep among occasional
  heavy drinkers and flattens among daily ones (explained under the `hdd_90d` factor).
- `aud_duration_years`: age minus age at onset; chronicity is a recognised severity marker
  (Adamson 2009, clinical.md §3) that neither age nor onset carries alone.

Each output column belongs to one *display factor* (`Column.factor`): one-hot columns and the
log columns fold back to the field a clinician entered, so explanations name "Psychotherapy" or
"GGT", never "psychotherapy_cbt" or "log GGT". Sums over a factor keep SHAP additivity exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.schema import BY_NAME, PREDICTORS

TRANSFORM_VERSION = "2"

LOG_FIELDS: frozenset[str] = frozenset(
    {
        "ggt_u_l",
        "ast_u_l",
        "alt_u_l",
        "peth_ng_ml",
        "hscrp_mg_l",
        "il6_pg_ml",
        "tnfa_pg_ml",
        "il1b_pg_ml",
    }
)


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the model matrix and the display factor it is explained under."""

    name: str
    factor: str


@dataclass(frozen=True, slots=True)
class Factor:
    """A factor as a clinician sees it: a data-dictionary field or a named derived quantity."""

    name: str
    label: str
    unit: str
    fields: tuple[str, ...]


DERIVED_FACTORS: tuple[Factor, ...] = (
    Factor("ast_alt_ratio", "AST/ALT ratio", "", ("ast_u_l", "alt_u_l")),
    Factor("aud_duration_years", "Years with AUD", "years", ("age_years", "aud_onset_age_years")),
)


def _columns() -> tuple[Column, ...]:
    cols: list[Column] = []
    for f in PREDICTORS:
        if f.name == "sex":
            cols.append(Column("female", "sex"))
        elif f.kind == "category":
            cols.extend(Column(f"{f.name}={lv}", f.name) for lv in f.levels if lv != "none")
        elif f.name in LOG_FIELDS:
            cols.append(Column(f"log1p_{f.name}", f.name))
        else:
            cols.append(Column(f.name, f.name))
            if f.name == "hdd_90d":
                cols.append(Column("log1p_hdd_90d", f.name))
    cols.extend(Column(d.name, d.name) for d in DERIVED_FACTORS)
    return tuple(cols)


COLUMNS: tuple[Column, ...] = _columns()
FEATURE_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
FACTORS: tuple[Factor, ...] = (
    tuple(Factor(f.name, f.label, f.unit_label, (f.name,)) for f in PREDICTORS) + DERIVED_FACTORS
)
FACTOR_NAMES: tuple[str, ...] = tuple(f.name for f in FACTORS)


def factor_matrix() -> np.ndarray:
    """0/1 matrix (n_columns, n_factors) that sums column contributions into factor ones."""
    index = {name: i for i, name in enumerate(FACTOR_NAMES)}
    m = np.zeros((len(COLUMNS), len(FACTORS)))
    for j, col in enumerate(COLUMNS):
        m[j, index[col.factor]] = 1.0
    return m


def factor_values(frame: pd.DataFrame) -> pd.DataFrame:
    """The value shown beside each factor: the entered value, or the derived quantity."""
    out = {f.name: frame[f.name] for f in PREDICTORS}
    derived = _derived(frame)
    out.update({d.name: derived[d.name] for d in DERIVED_FACTORS})
    return pd.DataFrame(out, index=frame.index)


def _derived(frame: pd.DataFrame) -> dict[str, pd.Series]:
    ast, alt = frame["ast_u_l"].astype(float), frame["alt_u_l"].astype(float)
    onset, age = frame["aud_onset_age_years"].astype(float), frame["age_years"].astype(float)
    return {"ast_alt_ratio": ast / alt, "aud_duration_years": age - onset}


def transform(frame: pd.DataFrame) -> pd.DataFrame:
    """Model matrix (float64, NaN = missing) with columns `FEATURE_NAMES`.

    `frame` is a canonical frame from `features.validation`; the transform is pure and
    row-wise, so scoring one patient gives the same numbers as scoring them in a batch.
    """
    out: dict[str, np.ndarray] = {}
    for f in PREDICTORS:
        col = frame[f.name]
        if f.name == "sex":
            out["female"] = _one_hot(col, "female")
        elif f.kind == "category":
            for lv in f.levels:
                if lv != "none":
                    out[f"{f.name}={lv}"] = _one_hot(col, lv)
        elif f.name in LOG_FIELDS:
            out[f"log1p_{f.name}"] = np.log1p(col.to_numpy(dtype=float))
        else:
            out[f.name] = col.to_numpy(dtype=float)
            if f.name == "hdd_90d":
                out["log1p_hdd_90d"] = np.log1p(out[f.name])
    out.update({k: v.to_numpy(dtype=float) for k, v in _derived(frame).items()})
    return pd.DataFrame(out, index=frame.index, columns=list(FEATURE_NAMES))


def _one_hot(col: pd.Series, level: str) -> np.ndarray:
    missing = col.isna().to_numpy()
    return np.where(missing, np.nan, (col == level).to_numpy(dtype=float))


def factor_label(name: str) -> str:
    """Human label of a factor (field label or derived-factor label)."""
    for f in DERIVED_FACTORS:
        if f.name == name:
            return f.label
    return BY_NAME[name].label
