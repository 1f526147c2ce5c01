"""The per-patient probability interval: bootstrap estimation spread plus missing-input spread.

Why this method (benchmarks/INTERVALS.md has the numbers): on simulated cohorts with known true
probabilities, Venn–Abers [p0, p1] intervals contained the true probability for only 5-40% of
patients, because their width measures how much calibration data there was, not how wrong the
model may be for this patient. The bootstrap ensemble (the whole pipeline refitted on
resamples, each recalibrated on its out-of-bag patients) was far more honest, and a normal
interval on the logit scale matched or beat the percentile interval at every size. It still
missed most for patients with many missing inputs: the true probability depends on values the
model never saw, and no amount of training data removes that. So the served interval adds a
second, independent source of spread on the logit scale: how much the served estimate moves
when each missing input takes values typical of the development patients. That raised coverage
by 1.4-7 points and lowered the interval score at every size for both estimators.

    total SD = sqrt(SD of bootstrap member logits² + SD of logits over imputations²)
    interval = expit(served logit ± z·total SD)

It is centred on the served logit, so it always contains the served probability. What it does
not cover, and the method description says so: error from the model's form (a smooth or
regularised model missing a threshold or an interaction), which stays when n grows.

Everything here is a pure function of arrays, frames and the JSON state written by
`training.uncertainty.fit_uncertainty`; no model objects, so the predictor decides how to score.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from features import transform as tf
from features.schema import BY_NAME, PREDICTORS

STATE_FORMAT = 1
METHOD = "bootstrap_normal_logit_plus_missing_inputs"
Z_95 = 1.959963984540054

#: One sentence for the model card and the clinician page.
METHOD_DESCRIPTION = (
    "The 95% range combines how much the estimate changes when the whole model is rebuilt on "
    "resampled development data (bootstrap refits) with how much it changes when inputs that "
    "were not provided take values typical of the development patients; it leaves out error "
    "from the model's form, so in simulation it contained the true probability for 77-87% of "
    "patients rather than 95% (benchmarks/INTERVALS.md)."
)

LogitOf = Callable[[np.ndarray], np.ndarray]
"""Served calibrated logit of a model matrix (rows of `features.transform.transform`)."""


def member_sd(member_logits: np.ndarray) -> np.ndarray:
    """Per-patient SD (ddof=1) of the bootstrap members' logits, shape (B, n) -> (n,).

    Fewer than two members carry no spread; the result is zeros, never NaN.
    """
    member_logits = np.atleast_2d(np.asarray(member_logits, dtype=float))
    if member_logits.shape[0] < 2:
        return np.zeros(member_logits.shape[1])
    # one contiguous row per patient: numpy sums a contiguous row the same way whatever the
    # number of rows, while a reduction down axis 0 changes its summation order with the
    # number of columns (so a patient's interval would depend on who shares the batch)
    return np.ascontiguousarray(member_logits.T).std(axis=1, ddof=1)


def interval(
    logit: np.ndarray,
    member_logits: np.ndarray,
    missing_sd: np.ndarray | None = None,
    *,
    z: float = Z_95,
) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) probability bounds around the served logit.

    `member_logits` is (B, n) calibrated logits of the bootstrap members; `missing_sd` the
    per-patient output of `missing_input_sd` (None or zeros for complete inputs). The two
    spreads are added in variance because they come from different sources (sample and
    unobserved inputs).
    """
    logit = np.asarray(logit, dtype=float)
    var = member_sd(member_logits) ** 2
    if missing_sd is not None:
        var = var + np.asarray(missing_sd, dtype=float) ** 2
    half = z * np.sqrt(var)
    return expit(logit - half), expit(logit + half)


_NUMERIC = [f.name for f in PREDICTORS if f.kind != "category"]
_CATEGORY = [f.name for f in PREDICTORS if f.kind == "category"]


def imputed_copies(
    frame: pd.DataFrame, state: Mapping[str, Any]
) -> tuple[pd.DataFrame, np.ndarray]:
    """K copies of every patient with a missing optional input, the gaps filled from the state.

    Returns the expanded frame (predictor fields only, float or object columns, as
    `features.transform.transform` reads them) and, per expanded row, the position of its
    patient in `frame`. Copy k fills field f with `values[f][k]`: the stored values are training
    quantiles in a fixed per-field order, so different fields are paired as if independent and
    every call gives the same copies (no random numbers at serving). Age at AUD onset is capped
    at the patient's age, the one cross-field rule of the schema.
    """
    values: Mapping[str, list[Any]] = state["missing_inputs"]["values"]
    k = int(state["missing_inputs"]["k"])
    num = frame[_NUMERIC].astype(float).to_numpy()
    cat = frame[_CATEGORY].astype(object).to_numpy()
    cat_missing = pd.isna(cat)
    fillable = [values.get(n) for n in _NUMERIC]
    has_gap = np.zeros(len(frame), dtype=bool)
    for j, fill in enumerate(fillable):
        if fill:
            has_gap |= np.isnan(num[:, j])
    for j, name in enumerate(_CATEGORY):
        if values.get(name):
            has_gap |= cat_missing[:, j]
    rows = np.repeat(np.flatnonzero(has_gap), k)
    copy = np.tile(np.arange(k), int(has_gap.sum()))
    num, cat = num[rows], cat[rows].copy()
    for j, fill in enumerate(fillable):
        if fill:
            num[:, j] = np.where(
                np.isnan(num[:, j]), np.asarray(fill, dtype=float)[copy], num[:, j]
            )
    for j, name in enumerate(_CATEGORY):
        fill, gap = values.get(name), pd.isna(cat[:, j])
        if fill and gap.any():
            cat[gap, j] = np.asarray(fill, dtype=object)[copy[gap]]
    out: dict[str, np.ndarray] = dict(zip(_NUMERIC, num.T, strict=True))
    out |= dict(zip(_CATEGORY, cat.T, strict=True))
    out["aud_onset_age_years"] = np.fmin(out["aud_onset_age_years"], out["age_years"])
    return pd.DataFrame(out)[[f.name for f in PREDICTORS]], rows


def missing_input_sd(
    frame: pd.DataFrame, logit_of: LogitOf, state: Mapping[str, Any]
) -> np.ndarray:
    """Per patient: SD of the served logit over the K imputations of its missing inputs.

    Zero for a patient with every optional input present. `logit_of` is the served model
    (e.g. `lambda X: calibrator(scorer.margin(X))`), called once on all copies.
    """
    sd = np.zeros(len(frame))
    expanded, rows = imputed_copies(frame, state)
    if len(rows) == 0:
        return sd
    logits = logit_of(tf.transform_array(expanded))
    k = int(state["missing_inputs"]["k"])
    per_patient = logits.reshape(-1, k)
    sd[rows[::k]] = per_patient.std(axis=1, ddof=1)
    return sd


def check_state(state: Mapping[str, Any]) -> None:
    """Refuse a state this code cannot apply (a corrupt or newer artifact), naming the problem."""
    if state.get("format") != STATE_FORMAT or state.get("method") != METHOD:
        raise ValueError(
            f"uncertainty state {state.get('method')!r} v{state.get('format')} is not "
            f"{METHOD!r} v{STATE_FORMAT}"
        )
    values = state["missing_inputs"]["values"]
    k = int(state["missing_inputs"]["k"])
    for name, v in values.items():
        if name not in BY_NAME or (v and len(v) != k):
            raise ValueError(f"uncertainty state: bad imputation values for {name!r}")


#: Filled values of this field are capped at the patient's age in every copy (the schema's one
#: cross-field rule), so its columns depend on the patient and are computed per copy.
_CAPPED = "aud_onset_age_years"


def missing_input_sd_linear(
    frame: pd.DataFrame,
    X: np.ndarray,
    weights: np.ndarray,
    on_missing: np.ndarray,
    slope: float,
    state: Mapping[str, Any],
) -> np.ndarray:
    """`missing_input_sd` for a linear margin, without building the K copies.

    The margin is `where(missing, 0, X) @ weights + missing @ on_missing + offset` (the folded
    `LinearScorer`), so filling one field only changes that field's columns: copy k's margin is
    the patient's margin plus, for each filled field, a term that depends on the copy's value
    alone, which is one (patients × fields) @ (fields × K) product. Columns that mix fields (the
    derived factors) or depend on the patient (the age-capped onset) are computed per copy
    exactly as `imputed_copies` makes them. Same numbers as the general path to rounding, at a
    small fraction of its cost: for a million patients the copies would be 32 million rows.
    """
    values: Mapping[str, list[Any]] = state["missing_inputs"]["values"]
    k = int(state["missing_inputs"]["k"])
    fill = {f.name: values[f.name] for f in PREDICTORS if values.get(f.name)}
    sd = np.zeros(len(frame))
    if not fill:
        return sd
    names = list(fill)
    missing = frame[names].isna().to_numpy()
    rows = np.flatnonzero(missing.any(axis=1))
    if len(rows) == 0:
        return sd
    gaps = dict(zip(names, missing[rows].T, strict=True))
    delta = np.zeros((len(rows), k))
    special: list[int] = []
    for j, step in enumerate(tf.STEPS):
        kind, name, _ = step
        if kind == "derived" or name == _CAPPED:
            special.append(j)
        elif name in fill:
            filled = tf.step_values(step, np.asarray(fill[name], dtype=object))
            effect = np.where(np.isnan(filled), on_missing[j], weights[j] * filled)
            delta += np.outer(gaps[name], effect - on_missing[j])
    per_copy = _values_per_copy(frame, rows, fill, k)
    derived = tf.derived_values(per_copy)
    for j in special:
        kind, name, _ = tf.STEPS[j]
        v = derived[name] if kind == "derived" else tf.step_values(tf.STEPS[j], per_copy(name))
        base = X[rows, j]
        before = np.where(np.isnan(base), on_missing[j], weights[j] * base)
        after = np.where(np.isnan(v), on_missing[j], weights[j] * v)
        delta += after - before[:, None]
    sd[rows] = abs(slope) * delta.std(axis=1, ddof=1)
    return sd


def _values_per_copy(
    frame: pd.DataFrame, rows: np.ndarray, fill: Mapping[str, list[Any]], k: int
) -> Callable[[str], np.ndarray]:
    """Accessor: a numeric field's value in each copy, shape (len(rows), K), as in
    `imputed_copies` (gaps filled with the k-th stored value; onset capped at age)."""

    def value(name: str) -> np.ndarray:
        x = frame[name].to_numpy(dtype=float, na_value=np.nan)[rows][:, None]
        if name in fill:
            x = np.where(np.isnan(x), np.asarray(fill[name], dtype=float)[None, :], x)
        x = np.broadcast_to(x, (len(rows), k))
        if name == _CAPPED:
            return np.fmin(x, value("age_years"))
        return x

    return value
