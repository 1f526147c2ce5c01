"""Warnings about what the model does not know: missing optional inputs, values it never saw."""

from __future__ import annotations

import numpy as np

from features.simulate import simulate_cohort
from features.validation import validate_table
from serving.applicability import warnings_for
from training.reference import reference_stats


def _frames():
    frame = validate_table(simulate_cohort(300, seed=1), training=True).frame
    return frame.iloc[:200].reset_index(drop=True), frame.iloc[200:].reset_index(drop=True)


def test_value_beyond_the_training_range_is_named_with_its_bound() -> None:
    train, new = _frames()
    ref = reference_stats(train)
    one = new.iloc[[0]].reset_index(drop=True).assign(ggt_u_l=ref["fields"]["ggt_u_l"]["max"] + 1)
    codes = {(w["code"], tuple(w["fields"])) for w in warnings_for(one, ref)[0]}
    assert ("outside_training_data", ("ggt_u_l",)) in codes
    message = next(w["message"] for w in warnings_for(one, ref)[0] if w["fields"] == ["ggt_u_l"])
    assert "above the highest value" in message and "U/L" in message


def test_unseen_category_and_missing_group_are_reported() -> None:
    train, new = _frames()
    train = train.assign(psychotherapy="cbt")
    ref = reference_stats(train)
    one = (
        new.iloc[[0]]
        .reset_index(drop=True)
        .assign(psychotherapy="mindfulness", il6_pg_ml=np.nan, hscrp_mg_l=np.nan)
    )
    warnings = warnings_for(one, ref)[0]
    assert any(
        w["fields"] == ["psychotherapy"] and "did not occur" in w["message"] for w in warnings
    )
    missing = [w for w in warnings if w["code"] == "missing_input"]
    assert any({"il6_pg_ml", "hscrp_mg_l"} <= set(w["fields"]) for w in missing)


def test_a_typical_complete_patient_gets_no_range_warning() -> None:
    train, _ = _frames()
    ref = reference_stats(train)
    assert not [
        w
        for w in warnings_for(train.iloc[[5]].reset_index(drop=True), ref)[0]
        if w["code"] == "outside_training_data"
    ]
