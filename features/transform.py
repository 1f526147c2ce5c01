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

from collections.abc import Callable
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


def to_factors(column_values: np.ndarray) -> np.ndarray:
    """(n, columns) contributions summed into (n, factors), in `FACTOR_NAMES` order.

    Each factor sums its own columns in a fixed order, row by row, so a patient's factor
    contributions do not depend on which other patients share the batch (a matrix product
    with a 0/1 column-to-factor matrix would, in the last bit).
    """
    out = np.empty((column_values.shape[0], len(FACTORS)))
    for k, columns in enumerate(_FACTOR_COLUMNS):
        out[:, k] = column_values[:, columns].sum(axis=1)
    return out


def factor_values(frame: pd.DataFrame) -> pd.DataFrame:
    """The value shown beside each factor: the entered value, or the derived quantity."""
    out = {f.name: frame[f.name] for f in PREDICTORS}
    derived = _derived(frame)
    out.update({d.name: derived[d.name] for d in DERIVED_FACTORS})
    return pd.DataFrame(out, index=frame.index)


def _derived(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return derived_values(lambda name: frame[name].to_numpy(dtype=float, na_value=np.nan))


def _plan() -> tuple[list[str], list[tuple[str, str, str]]]:
    """How each of `COLUMNS` is made, read off the columns themselves: ("num", field, ""),
    ("log1p", field, ""), ("level", field, level) or ("derived", factor, "")."""
    numeric = [f.name for f in PREDICTORS if f.kind != "category"]
    derived = {d.name for d in DERIVED_FACTORS}
    steps: list[tuple[str, str, str]] = []
    for c in COLUMNS:
        if c.name in derived:
            steps.append(("derived", c.name, ""))
        elif c.name == "female":
            steps.append(("level", "sex", "female"))
        elif "=" in c.name:
            field, level = c.name.split("=", 1)
            steps.append(("level", field, level))
        elif c.name.startswith("log1p_"):
            steps.append(("log1p", c.factor, ""))
        else:
            steps.append(("num", c.name, ""))
    return numeric, steps


_NUMERIC, STEPS = _plan()
_FACTOR_COLUMNS = [[j for j, c in enumerate(COLUMNS) if c.factor == name] for name in FACTOR_NAMES]
_CATEGORIES = sorted({name for kind, name, _ in STEPS if kind == "level"})


def derived_values(value: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
    """The derived factors from a field accessor: one formula for the model and the display."""
    return {
        "ast_alt_ratio": value("ast_u_l") / value("alt_u_l"),
        "aud_duration_years": value("age_years") - value("aud_onset_age_years"),
    }


def transform_array(frame: pd.DataFrame) -> np.ndarray:
    """Model matrix (float64, NaN = missing), columns in `FEATURE_NAMES` order.

    `frame` is a canonical frame from `features.validation`; the transform is pure and
    row-wise, so scoring one patient gives the same numbers as scoring them in a batch. The
    frame is read once as a float block and once per category field: per-column pandas calls
    would cost more than the model itself for a single patient.
    """
    num = frame[_NUMERIC].to_numpy(dtype=float, na_value=np.nan)
    raw = {name: num[:, j] for j, name in enumerate(_NUMERIC)}
    raw |= {name: frame[name].to_numpy(dtype=object) for name in _CATEGORIES}
    derived = derived_values(raw.__getitem__)
    out = np.empty((len(frame), len(COLUMNS)))
    for j, step in enumerate(STEPS):
        kind, name, _ = step
        out[:, j] = derived[name] if kind == "derived" else step_values(step, raw[name])
    return out


def step_values(step: tuple[str, str, str], raw: np.ndarray) -> np.ndarray:
    """One model column from its source field's raw values, any shape (not derived columns).

    Also used by `serving.uncertainty` on imputed values, so a filled-in value is transformed
    exactly as an entered one.
    """
    kind, _, level = step
    if kind == "num":
        return raw.astype(float)
    if kind == "log1p":
        return np.log1p(raw.astype(float))
    return np.where(pd.isna(raw), np.nan, (raw == level).astype(float))


def transform(frame: pd.DataFrame) -> pd.DataFrame:
    """`transform_array` as a frame with columns `FEATURE_NAMES` (for training and reports)."""
    return pd.DataFrame(transform_array(frame), index=frame.index, columns=list(FEATURE_NAMES))


def factor_label(name: str) -> str:
    """Human label of a factor (field label or derived-factor label)."""
    for f in DERIVED_FACTORS:
        if f.name == name:
            return f.label
    return BY_NAME[name].label
