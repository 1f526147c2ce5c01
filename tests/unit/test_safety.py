"""Unit tests of `features.safety`: each rule's boundary, precedence, and frame = rows."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from features import safety
from features.safety import RULES, assess, assess_frame
from features.schema import BY_NAME
from features.validation import validate_records

FLAGS = (
    "psychosis_history",
    "ketamine_misuse_history",
    "other_sud",
    "pregnant_or_breastfeeding",
    "seizure_history",
    "cystitis_or_urinary_symptoms",
)


def _row(**changes: object) -> dict[str, object]:
    """A canonical row that passes every rule."""
    row: dict[str, object] = {
        "sex": "female",
        "systolic_bp_mmhg": 120.0,
        "diastolic_bp_mmhg": 80.0,
        "bmi_kg_m2": 25.0,
        "alt_u_l": 30.0,
        "ast_u_l": 30.0,
        **dict.fromkeys(FLAGS, 0.0),
    }
    row.update(changes)
    return row


def _rules(result: safety.Eligibility, severity: str | None = None) -> list[str]:
    return [r.rule for r in result.reasons if severity is None or r.severity == severity]


def test_baseline_row_is_eligible_without_reasons() -> None:
    assert assess(_row()) == safety.Eligibility("eligible", ())


@pytest.mark.parametrize(
    ("sbp", "dbp", "status", "rule"),
    [
        (139, 80, "eligible", None),
        (140, 80, "caution", "BP-CAUTION"),
        (120, 89, "eligible", None),
        (120, 90, "caution", "BP-CAUTION"),
        (180, 100, "caution", "BP-CAUTION"),
        (181, 100, "contraindicated", "BP-CONTRA"),
        (150, 110, "caution", "BP-CAUTION"),
        (150, 111, "contraindicated", "BP-CONTRA"),
        (130, 111, "contraindicated", "BP-CONTRA"),
        (139.9, 89.9, "eligible", None),
    ],
)
def test_blood_pressure_boundaries(sbp: float, dbp: float, status: str, rule: str | None) -> None:
    result = assess(_row(systolic_bp_mmhg=sbp, diastolic_bp_mmhg=dbp))
    assert result.status == status
    assert _rules(result) == ([rule] if rule else [])


def test_contraindicated_bp_is_not_also_a_caution() -> None:
    assert _rules(assess(_row(systolic_bp_mmhg=200, diastolic_bp_mmhg=95))) == ["BP-CONTRA"]


def test_bp_caution_message_is_plain_words() -> None:
    (reason,) = assess(_row(systolic_bp_mmhg=150, diastolic_bp_mmhg=95)).reasons
    assert reason.message == (
        "Blood pressure 150/95 mmHg is at or above 140/90 mmHg (KARE exclusion: uncontrolled "
        "hypertension); infusion raises BP by about 7/6 mmHg."
    )
    assert reason.fields == ("systolic_bp_mmhg", "diastolic_bp_mmhg")


def test_bp_reason_names_only_the_field_over_the_limit() -> None:
    (reason,) = assess(_row(systolic_bp_mmhg=120, diastolic_bp_mmhg=115)).reasons
    assert reason.fields == ("diastolic_bp_mmhg",) and "120/115 mmHg" in reason.message


@pytest.mark.parametrize(
    ("flag", "status", "rule"),
    [
        ("psychosis_history", "contraindicated", "PSYCHOSIS"),
        ("pregnant_or_breastfeeding", "contraindicated", "PREGNANCY"),
        ("ketamine_misuse_history", "contraindicated", "KETAMINE-MISUSE"),
        ("other_sud", "caution", "OTHER-SUD"),
        ("seizure_history", "caution", "SEIZURE"),
        ("cystitis_or_urinary_symptoms", "caution", "CYSTITIS"),
    ],
)
@pytest.mark.parametrize("true", [1.0, True])
def test_each_flag(flag: str, status: str, rule: str, true: object) -> None:
    result = assess(_row(**{flag: true}))
    assert result.status == status
    (reason,) = result.reasons
    assert (reason.rule, reason.severity, reason.fields) == (rule, status, (flag,))


@pytest.mark.parametrize(
    ("bmi", "status"),
    [(15.9, "caution"), (16, "eligible"), (35, "eligible"), (35.1, "caution"), (None, "eligible")],
)
def test_bmi_boundaries(bmi: float | None, status: str) -> None:
    result = assess(_row(bmi_kg_m2=bmi))
    assert result.status == status
    assert _rules(result) == (["BMI"] if status == "caution" else [])


@pytest.mark.parametrize(
    ("alt", "ast", "fields"),
    [
        (120, 120, ()),
        (120.5, 30, ("alt_u_l",)),
        (30, 121, ("ast_u_l",)),
        (400, 300, ("alt_u_l", "ast_u_l")),
        (math.nan, math.nan, ()),
    ],
)
def test_liver_enzymes_above_three_times_upper_limit(alt: float, ast: float, fields) -> None:
    assert safety.LIVER_ENZYME_ULN_U_L * safety.LIVER_ENZYME_ULN_MULTIPLE == 120
    result = assess(_row(alt_u_l=alt, ast_u_l=ast))
    assert [r.fields for r in result.reasons] == ([fields] if fields else [])
    assert result.status == ("caution" if fields else "eligible")


def test_pregnancy_does_not_apply_to_men() -> None:
    assert assess(_row(sex="male", pregnant_or_breastfeeding=1.0)).status == "eligible"
    assert assess(_row(sex="male", pregnant_or_breastfeeding=math.nan)).status == "eligible"
    assert assess(_row(sex="female", pregnant_or_breastfeeding=math.nan)).status == "unknown"
    assert assess(_row(sex=None, pregnant_or_breastfeeding=None)).status == "unknown"


@pytest.mark.parametrize(
    ("missing", "rule"),
    [
        (("systolic_bp_mmhg",), "BP-CONTRA"),
        (("diastolic_bp_mmhg",), "BP-CONTRA"),
        (("systolic_bp_mmhg", "diastolic_bp_mmhg"), "BP-CONTRA"),
        (("psychosis_history",), "PSYCHOSIS"),
        (("ketamine_misuse_history",), "KETAMINE-MISUSE"),
        (("pregnant_or_breastfeeding",), "PREGNANCY"),
    ],
)
@pytest.mark.parametrize("blank", [None, math.nan])
def test_missing_contraindication_field_is_unknown(missing, rule: str, blank: object) -> None:
    result = assess(_row(**dict.fromkeys(missing, blank)))
    assert result.status == "unknown"
    (reason,) = result.reasons
    assert (reason.rule, reason.severity, reason.fields) == (rule, "unknown", missing)
    assert "not recorded" in reason.message and "cannot be ruled out" in reason.message
    assert BY_NAME[missing[0]].label in reason.message


@pytest.mark.parametrize("field", ["other_sud", "seizure_history", "bmi_kg_m2", "alt_u_l"])
def test_missing_caution_field_does_not_make_unknown(field: str) -> None:
    assert assess(_row(**{field: None})).status == "eligible"


def test_known_high_half_of_bp_decides_even_if_the_other_is_missing() -> None:
    result = assess(_row(systolic_bp_mmhg=None, diastolic_bp_mmhg=115))
    assert result.status == "contraindicated" and _rules(result) == ["BP-CONTRA"]
    assert "systolic not recorded" in result.reasons[0].message
    half = assess(_row(systolic_bp_mmhg=None, diastolic_bp_mmhg=95))
    assert half.status == "unknown"
    assert [(r.rule, r.severity) for r in half.reasons] == [
        ("BP-CONTRA", "unknown"),
        ("BP-CAUTION", "caution"),
    ]


def test_precedence_contraindicated_over_unknown_over_caution() -> None:
    everything = _row(psychosis_history=1.0, ketamine_misuse_history=None, seizure_history=1.0)
    result = assess(everything)
    assert result.status == "contraindicated"
    assert [r.severity for r in result.reasons] == ["contraindicated", "unknown", "caution"]
    assert assess({**everything, "psychosis_history": 0.0}).status == "unknown"
    assert _rules(assess({**everything, "psychosis_history": 0.0}), "caution") == ["SEIZURE"]
    assert assess(_row(seizure_history=1.0)).status == "caution"
    assert assess(_row()).status == "eligible"


def test_empty_row_is_unknown_naming_every_missing_field() -> None:
    result = assess({})
    assert result.status == "unknown"
    named = {f for r in result.reasons for f in r.fields}
    assert named == {
        "systolic_bp_mmhg",
        "diastolic_bp_mmhg",
        "psychosis_history",
        "ketamine_misuse_history",
        "pregnant_or_breastfeeding",
    }


def test_rules_have_unique_ids_and_cite_sources() -> None:
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids)) == 10
    for rule in RULES:
        assert "clinical.md §" in rule.source and rule.description
    assert "NCT05661669" in next(r for r in RULES if r.id == "BP-CONTRA").source
    assert "40 U/L" in next(r for r in RULES if r.id == "LIVER").source


def test_reasons_cite_rule_ids_and_sources() -> None:
    by_id = {r.id: r for r in RULES}
    rows = [
        _row(**dict.fromkeys(FLAGS, 1.0), bmi_kg_m2=40, alt_u_l=500, systolic_bp_mmhg=190),
        _row(systolic_bp_mmhg=145, psychosis_history=None),
    ]
    reasons = [r for row in rows for r in assess(row).reasons]
    assert {r.rule for r in reasons} == set(by_id)
    for reason in reasons:
        assert reason.source == by_id[reason.rule].source
        assert reason.fields and reason.message.endswith(".")


def test_assess_does_not_accept_text_flags() -> None:
    with pytest.raises(TypeError):
        assess(_row(psychosis_history="no"))


# --- assess_frame ---------------------------------------------------------------------------

CASES = [
    _row(),
    _row(systolic_bp_mmhg=140, diastolic_bp_mmhg=89),
    _row(systolic_bp_mmhg=181),
    _row(diastolic_bp_mmhg=None),
    _row(sex="male", pregnant_or_breastfeeding=None),
    _row(pregnant_or_breastfeeding=None),
    _row(psychosis_history=1.0, seizure_history=1.0, bmi_kg_m2=12.5),
    _row(ketamine_misuse_history=None, cystitis_or_urinary_symptoms=1.0, ast_u_l=200.0),
    _row(other_sud=1.0),
]


def test_assess_frame_equals_assess_row_by_row() -> None:
    frame = pd.DataFrame(CASES)
    frame["sex"] = frame["sex"].astype(object)
    assert assess_frame(frame) == [assess(row) for row in CASES]
    assert [e.status for e in assess_frame(frame)] == [
        "eligible",
        "caution",
        "contraindicated",
        "unknown",
        "eligible",
        "unknown",
        "contraindicated",
        "unknown",
        "caution",
    ]


def test_assess_frame_on_a_validated_frame() -> None:
    base = {
        "age_years": 40,
        "sex": "female",
        "audit_total": 20,
        "hdd_90d": 30,
        "drinks_per_drinking_day": 6,
        "infusions_planned": 3,
        "dose_mg_per_kg": 0.8,
        "systolic_bp_mmhg": 150,
        "diastolic_bp_mmhg": 85,
        "psychosis_history": False,
        "ketamine_misuse_history": False,
        "pregnant_or_breastfeeding": False,
    }
    records = [{**base, "patient_id": "a"}, {**base, "patient_id": "b", "psychosis_history": True}]
    frame = validate_records(records).frame
    results = assess_frame(frame)
    assert [e.status for e in results] == ["caution", "contraindicated"]
    assert results == [assess(row) for row in frame.to_dict("records")]


def test_assess_frame_handles_absent_columns_and_empty_frames() -> None:
    assert assess_frame(pd.DataFrame({"sex": pd.Series([], dtype=object)})) == []
    (result,) = assess_frame(pd.DataFrame({"age_years": [40.0]}))
    assert result == assess({})


def test_assess_frame_accepts_nullable_dtypes() -> None:
    frame = pd.DataFrame([_row(), _row()])
    frame["psychosis_history"] = pd.array([False, None], dtype="boolean")
    frame["systolic_bp_mmhg"] = pd.array([120, 190], dtype="Int64")
    assert [e.status for e in assess_frame(frame)] == ["eligible", "contraindicated"]
    assert np.isnan(frame["psychosis_history"].to_numpy(float, na_value=np.nan)[1])
