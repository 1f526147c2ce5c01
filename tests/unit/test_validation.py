"""Unit tests of `features.validation` on small in-code tables and records."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest

from features.schema import BY_NAME, INPUT_FIELDS, OUTCOME
from features.validation import (
    FALSE_TEXTS,
    RECORD,
    TRUE_TEXTS,
    WHOLE,
    InvalidInput,
    Problem,
    canonical_columns,
    canonical_frame,
    validate_records,
    validate_table,
)

SECRET_ID = "ZQXSECRET7741"  # distinctive: must never appear in any message
SECRET_SITE = "SITEQQSECRET"
NUMERIC_FIELDS = [f for f in INPUT_FIELDS if f.kind in ("integer", "number")]


def _record(i: int = 0, **changes: object) -> dict[str, object]:
    """A valid prediction record; `changes` override or (with value ...) delete keys."""
    record: dict[str, object] = {
        "patient_id": f"P-{i:03d}",
        "site_id": "site-1",
        "age_years": 45,
        "sex": "female",
        "bmi_kg_m2": 24.5,
        "audit_total": 25,
        "hdd_90d": 40,
        "drinks_per_drinking_day": 8.0,
        "aud_onset_age_years": 25,
        "family_history_aud": True,
        "psychosis_history": False,
        "infusions_planned": 3,
        "dose_mg_per_kg": 0.8,
        "psychotherapy": "relapse_prevention",
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not ...}


def _table(n: int = 3, **columns: object) -> pd.DataFrame:
    frame = pd.DataFrame([_record(i) for i in range(n)])
    for name, values in columns.items():
        frame[name] = values
    return frame


def _problems(call, *args, **kwargs) -> tuple[Problem, ...]:
    with pytest.raises(InvalidInput) as info:
        call(*args, **kwargs)
    return info.value.problems


def _where(problems: tuple[Problem, ...]) -> set[tuple[int, str]]:
    return {(p.index, p.field) for p in problems}


def _all_text(problems: tuple[Problem, ...]) -> str:
    return "\n".join([p.message for p in problems] + [p.describe() for p in problems])


# --- canonical frame -----------------------------------------------------------------------


def test_records_give_the_canonical_frame() -> None:
    frame = validate_records([_record(0), _record(1, sex="male", family_history_aud=False)]).frame
    assert list(frame.columns) == [f.name for f in INPUT_FIELDS]
    assert isinstance(frame.index, pd.RangeIndex) and list(frame.index) == [0, 1]
    for field in INPUT_FIELDS:
        expected = "float64" if field.kind in ("integer", "number", "boolean") else "object"
        assert frame[field.name].dtype == expected, field.name
    assert frame["family_history_aud"].tolist() == [1.0, 0.0]
    assert frame["sex"].tolist() == ["female", "male"]
    assert frame["concurrent_medication"].tolist() == [None, None]
    assert math.isnan(frame["ggt_u_l"].iat[0])
    assert type(frame["patient_id"].iat[0]) is str


def test_table_and_records_give_the_same_frame() -> None:
    records = [_record(0), _record(1, ptsd=False, ggt_u_l=80.5)]
    from_records = validate_records(records).frame
    from_table = validate_table(pd.DataFrame(records)).frame
    pd.testing.assert_frame_equal(from_records, from_table)


def test_training_frame_ends_with_the_outcome() -> None:
    frame = validate_table(_table(2, response_6m=[1, 0]), training=True).frame
    assert list(frame.columns) == [*canonical_columns(), OUTCOME]
    assert frame[OUTCOME].dtype == "float64" and frame[OUTCOME].tolist() == [1.0, 0.0]


def test_canonical_frame_fills_absent_columns_with_missing() -> None:
    frame = canonical_frame({"age_years": np.array([40.0])}, n_rows=1)
    assert frame["age_years"].tolist() == [40.0]
    assert frame["sex"].tolist() == [None] and frame["sex"].dtype == object
    assert math.isnan(frame["hdd_90d"].iat[0])


@pytest.mark.parametrize(
    "values",
    [
        pd.array([40, None, 10], dtype="Int64"),
        np.array([40.0, np.nan, 10.0]),
        pd.Series([40, None, "10"], dtype=object),
        pd.Series(["40", "", " 10 "], dtype="str"),
    ],
    ids=["Int64", "float-nan", "object", "pandas-str"],
)
def test_table_reads_integers_from_each_pandas_dtype(values: object) -> None:
    frame = validate_table(_table(3, prior_detox_count=values)).frame
    assert frame["prior_detox_count"].dtype == "float64"
    assert frame["prior_detox_count"].iloc[[0, 2]].tolist() == [40.0, 10.0]
    assert math.isnan(frame["prior_detox_count"].iat[1])


def test_table_index_is_replaced_and_problems_use_positions() -> None:
    table = _table(3, hdd_90d=[10, 120, 20])
    table.index = [7, 8, 9]
    problems = _problems(validate_table, table)
    assert _where(problems) == {(1, "hdd_90d")}
    table["hdd_90d"] = [10, 12, 20]
    assert list(validate_table(table).frame.index) == [0, 1, 2]


def test_category_accepts_pandas_str_dtype_and_blank_is_missing() -> None:
    sex = pd.Series(["female", "male", "female"], dtype="str")
    therapy = pd.Series(["cbt", "", None], dtype=object)
    frame = validate_table(_table(3, sex=sex, psychotherapy=therapy)).frame
    assert frame["sex"].tolist() == ["female", "male", "female"]
    assert frame["psychotherapy"].tolist() == ["cbt", None, None]
    assert frame["psychotherapy"].dtype == object


# --- one problem kind at a time (both doors) ------------------------------------------------


CELL_PROBLEMS = [
    ("bmi_kg_m2", "abc", '"abc" is not a number'),
    ("hdd_90d", 2.5, "2.5 is not a whole number"),
    ("hdd_90d", 120, "120 is above the plausible maximum of 90 days"),
    ("age_years", 17, "17 is below the plausible minimum of 18 years"),
    ("audit_total", 41, "41 is above the plausible maximum of 40 points"),
    ("prior_detox_count", 51, "51 is above the plausible maximum of 50"),
    ("sex", "Female", '"Female" is not one of: female, male'),
    ("psychotherapy", "yoga", "not one of: none, motivational_enhancement"),
    ("audit_total", None, "required value is missing"),
    ("sex", None, "required value is missing"),
    ("bmi_kg_m2", math.inf, "inf is not a finite number"),
    ("bmi_kg_m2", -math.inf, "-inf is not a finite number"),
    ("patient_id", "has space", "must be 1-64 letters, digits, '-' or '_'"),
    ("patient_id", "x" * 65, "must be 1-64 letters"),
    ("patient_id", None, "required value is missing"),
    ("aud_onset_age_years", 46, "age at AUD onset 46 is greater than age 45"),
]


@pytest.mark.parametrize(("field", "value", "message"), CELL_PROBLEMS)
def test_records_report_each_problem_kind(field: str, value: object, message: str) -> None:
    problems = _problems(validate_records, [_record(0), _record(1, **{field: value})])
    assert _where(problems) == {(1, field)}
    assert message in problems[0].message


@pytest.mark.parametrize(("field", "value", "message"), CELL_PROBLEMS)
def test_table_reports_each_problem_kind(field: str, value: object, message: str) -> None:
    table = _table(2)
    table[field] = pd.Series([_record(0).get(field), value], dtype=object)
    problems = _problems(validate_table, table)
    assert _where(problems) == {(1, field)}
    assert message in problems[0].message


def test_describe_names_patient_and_field() -> None:
    records = [_record(0), _record(1), _record(2), _record(3, hdd_90d=120)]
    (problem,) = _problems(validate_records, records)
    expected = "patient 3, field hdd_90d: 120 is above the plausible maximum of 90 days"
    assert problem.describe() == expected
    column = Problem(WHOLE, "hdd_90d", "required column is missing")
    assert column.describe() == "column hdd_90d: required column is missing"
    assert Problem(WHOLE, RECORD, "no patients").describe() == "all patients: no patients"
    assert Problem(2, RECORD, "x").describe() == "patient 2: x"


def test_onset_equal_to_age_is_allowed() -> None:
    validate_records([_record(0, aud_onset_age_years=45)])


@pytest.mark.parametrize("field", NUMERIC_FIELDS, ids=lambda f: f.name)
def test_exact_bounds_are_accepted_and_just_outside_rejected(field) -> None:
    base = {"age_years": 90} if field.name == "aud_onset_age_years" else {}
    if field.name == "age_years":
        base = {"aud_onset_age_years": ...}
    step = 1 if field.kind == "integer" else 0.01
    for bound in (field.minimum, field.maximum):
        validate_records([_record(0, **{**base, field.name: bound})])
        validate_table(pd.DataFrame([_record(0, **{**base, field.name: bound})]))
    low = _problems(validate_records, [_record(0, **{**base, field.name: field.minimum - step})])
    high = _problems(validate_records, [_record(0, **{**base, field.name: field.maximum + step})])
    assert _where(low) == _where(high) == {(0, field.name)}
    assert "minimum" in low[0].message and "maximum" in high[0].message


# --- batches: every problem, right place ---------------------------------------------------


def test_records_batch_reports_every_problem_with_index_and_field() -> None:
    records = [
        _record(0),
        _record(1, hdd_90d=120),
        _record(2),
        _record(3, sex="F", age_years=17.5, ggt_u_l="high"),
        ["not", "a", "record"],
        _record(5, audit_total=...),
    ]
    problems = _problems(validate_records, records)
    assert _where(problems) == {
        (1, "hdd_90d"),
        (3, "sex"),
        (3, "age_years"),
        (3, "ggt_u_l"),
        (4, RECORD),
        (5, "audit_total"),
    }
    assert [p.index for p in problems] == sorted(p.index for p in problems)


def test_table_batch_reports_every_problem_with_index_and_field() -> None:
    table = _table(5)
    table["hdd_90d"] = [10, 120, 10, 10, 2.5]
    table["sex"] = ["female", "female", "other", "male", None]
    table["current_mdd"] = pd.Series([True, "yes", None, 2, False], dtype=object)
    problems = _problems(validate_table, table)
    assert _where(problems) == {
        (1, "hdd_90d"),
        (4, "hdd_90d"),
        (2, "sex"),
        (4, "sex"),
        (1, "current_mdd"),
        (3, "current_mdd"),
    }
    assert str(problems[0].index) in str(InvalidInput(problems))


def test_column_problems_do_not_hide_cell_problems() -> None:
    table = _table(2, hdd_90d=[10, 500]).drop(columns=["audit_total", "dose_mg_per_kg"])
    problems = _problems(validate_table, table)
    assert _where(problems) == {(WHOLE, "audit_total"), (WHOLE, "dose_mg_per_kg"), (1, "hdd_90d")}
    assert problems[0].message == "required column is missing"


def test_duplicate_ids_name_both_positions() -> None:
    records = [_record(0), _record(1), _record(0), _record(0)]
    problems = _problems(validate_records, records)
    assert _where(problems) == {(2, "patient_id"), (3, "patient_id")}
    assert all("patient 0" in p.message for p in problems)
    table_problems = _problems(validate_table, pd.DataFrame(records))
    assert table_problems == problems


def test_error_summary_lists_problems_and_survives_pickling() -> None:
    records = [_record(i, hdd_90d=100 + i) for i in range(30)]
    with pytest.raises(InvalidInput) as info:
        validate_records(records)
    error = info.value
    assert len(error.problems) == 30
    assert "30 problem(s)" in str(error) and "... and 10 more" in str(error)
    assert isinstance(error, ValueError)
    assert pickle.loads(pickle.dumps(error)).problems == error.problems


# --- privacy ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"patient_id": SECRET_ID, "hdd_90d": 120, "sex": "x"},
        {"patient_id": SECRET_ID + " !", "site_id": SECRET_SITE},
        {"patient_id": SECRET_ID * 6},
        {"site_id": 12345987},
        {"patient_id": 77441234},
    ],
)
def test_identifier_values_never_appear_in_messages(changes: dict[str, object]) -> None:
    records = [_record(0, **changes), _record(1, **changes)]
    for problems in (
        _problems(validate_records, records),
        _problems(validate_table, pd.DataFrame(records)),
    ):
        assert problems
        text = _all_text(problems) + str(InvalidInput(problems))
        for secret in (SECRET_ID, SECRET_SITE, "77441234", "12345987", "ZQX"):
            assert secret not in text


def test_duplicate_secret_ids_are_reported_by_position_only() -> None:
    problems = _problems(validate_records, [_record(0, patient_id=SECRET_ID)] * 2)
    assert _where(problems) == {(1, "patient_id")}
    assert SECRET_ID not in _all_text(problems)


def test_headerless_table_reports_one_problem_and_echoes_no_cell() -> None:
    table = pd.DataFrame([[SECRET_ID, 45, "female"]], columns=[SECRET_ID, "45", "female"])
    (problem,) = _problems(validate_table, table)
    assert problem.field == RECORD and "header" in problem.message
    assert SECRET_ID not in problem.describe()


# --- table layout ----------------------------------------------------------------------------


def test_extra_columns_are_warned_about_and_dropped() -> None:
    table = _table(2, true_probability=[0.2, 0.7], ancestry=["a", "b"], bmi_kg_m=[20, 21])
    result = validate_table(table)
    assert list(result.frame.columns) == list(canonical_columns())
    (warning,) = result.warnings
    assert "true_probability" in warning and "ancestry" in warning
    assert "bmi_kg_m (did you mean bmi_kg_m2?)" in warning


def test_outcome_is_ignored_with_a_warning_when_not_training() -> None:
    result = validate_table(_table(2, response_6m=[1, 0]))
    assert OUTCOME not in result.frame.columns
    assert any("response_6m" in w and "training" in w for w in result.warnings)


@pytest.mark.parametrize(
    ("outcome", "where"),
    [
        (None, {(WHOLE, OUTCOME)}),
        ([1, 2], {(1, OUTCOME)}),
        ([1, None], {(1, OUTCOME)}),
        ([0.5, 1], {(0, OUTCOME)}),
        (["1", "yes"], {(1, OUTCOME)}),
    ],
)
def test_training_requires_a_binary_outcome(outcome: object, where: set) -> None:
    table = _table(2) if outcome is None else _table(2, response_6m=outcome)
    assert _where(_problems(validate_table, table, training=True)) == where


def test_missing_optional_column_is_fine_and_all_missing() -> None:
    frame = validate_table(_table(2).drop(columns=["bmi_kg_m2", "psychotherapy"])).frame
    assert frame["bmi_kg_m2"].isna().all() and frame["psychotherapy"].tolist() == [None, None]


def test_all_empty_optional_column_of_any_dtype_is_missing() -> None:
    frame = validate_table(_table(2, psychotherapy=[np.nan, np.nan], ptsd=[np.nan] * 2)).frame
    assert frame["psychotherapy"].tolist() == [None, None]
    assert frame["ptsd"].isna().all()


def test_duplicated_column_is_a_column_problem() -> None:
    table = pd.concat([_table(2), _table(2)[["hdd_90d"]]], axis=1)
    assert _where(_problems(validate_table, table)) == {(WHOLE, "hdd_90d")}


def test_empty_table_is_an_error() -> None:
    assert _where(_problems(validate_table, _table(0))) == {(WHOLE, RECORD)}


def test_numeric_id_column_is_rejected_without_echo() -> None:
    problems = _problems(validate_table, _table(2, patient_id=[1001, 1002]))
    assert _where(problems) == {(0, "patient_id"), (1, "patient_id")}
    assert problems[0].message == "must be text, not a number"


# --- booleans ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        *[(t, 1.0) for t in TRUE_TEXTS],
        *[(f, 0.0) for f in FALSE_TEXTS],
        (True, 1.0),
        (False, 0.0),
        (np.True_, 1.0),
        (1, 1.0),
        (0.0, 0.0),
        ("", None),
        (None, None),
    ],
)
def test_table_boolean_spellings_accepted(cell: object, expected: float | None) -> None:
    column = pd.Series([cell, True], dtype=object)
    value = validate_table(_table(2, current_mdd=column)).frame["current_mdd"].iat[0]
    assert math.isnan(value) if expected is None else value == expected


@pytest.mark.parametrize("cell", ["yes", "no", "TRUE", "t", "2", 2, 0.5, -1, "1.0"])
def test_table_boolean_spellings_rejected(cell: object) -> None:
    column = pd.Series([True, cell], dtype=object)
    (problem,) = _problems(validate_table, _table(2, current_mdd=column))
    assert (problem.index, problem.field) == (1, "current_mdd")
    assert "is not true or false" in problem.message and "use true" in problem.message


@pytest.mark.parametrize(
    "column",
    [
        pd.Series([True, False, True]),
        pd.array([True, None, False], dtype="boolean"),
        pd.Series([True, np.nan, False], dtype=object),
        np.array([1.0, np.nan, 0.0]),
        np.array([1, 0, 1]),
    ],
    ids=["bool", "boolean", "object", "float", "int"],
)
def test_table_boolean_dtypes_accepted(column: object) -> None:
    values = validate_table(_table(3, ptsd=column)).frame["ptsd"]
    assert values.dtype == "float64" and set(values.dropna()) <= {0.0, 1.0}
    assert values.iat[0] == 1.0


def test_table_integer_column_of_twos_is_not_boolean() -> None:
    problems = _problems(validate_table, _table(2, ptsd=[0, 2]))
    assert _where(problems) == {(1, "ptsd")} and problems[0].message.startswith("2 is not")


def test_bool_column_is_not_a_number_in_tables() -> None:
    problems = _problems(validate_table, _table(2, bmi_kg_m2=[True, False]))
    assert _where(problems) == {(0, "bmi_kg_m2"), (1, "bmi_kg_m2")}
    assert problems[0].message == "true is not a number"


# --- JSON records: strict types ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("hdd_90d", 5, True),
        ("hdd_90d", 5.0, True),
        ("hdd_90d", 5.5, False),
        ("hdd_90d", True, False),
        ("hdd_90d", "5", False),
        ("bmi_kg_m2", 22, True),
        ("bmi_kg_m2", 22.5, True),
        ("bmi_kg_m2", False, False),
        ("bmi_kg_m2", "22.5", False),
        ("bmi_kg_m2", math.nan, False),
        ("bmi_kg_m2", 10**400, False),
        ("ptsd", True, True),
        ("ptsd", 1, False),
        ("ptsd", "true", False),
        ("sex", "male", True),
        ("sex", 1, False),
        ("psychotherapy", ["cbt"], False),
        ("site_id", 3, False),
        ("site_id", None, True),
    ],
)
def test_record_json_types_are_strict(field: str, value: object, ok: bool) -> None:
    if ok:
        validate_records([_record(0, **{field: value})])
    else:
        assert _where(_problems(validate_records, [_record(0, **{field: value})])) == {(0, field)}


def test_integral_float_becomes_the_same_number() -> None:
    assert validate_records([_record(0, hdd_90d=5.0)]).frame["hdd_90d"].iat[0] == 5.0


def test_unknown_key_is_an_error_with_a_suggestion() -> None:
    (problem,) = _problems(validate_records, [_record(0, hdd_90=3)])
    assert (problem.index, problem.field) == (0, "hdd_90")
    assert problem.message == "unknown field hdd_90 (did you mean hdd_90d?)"


def test_unknown_key_that_does_not_look_like_a_name_is_not_echoed() -> None:
    (problem,) = _problems(validate_records, [_record(0, **{SECRET_ID + "-1": 3})])
    assert problem.field == RECORD and SECRET_ID not in problem.describe()


def test_outcome_in_a_prediction_record_is_an_error() -> None:
    (problem,) = _problems(validate_records, [_record(0, response_6m=1)])
    assert (problem.index, problem.field) == (0, OUTCOME) and "training" in problem.message


@pytest.mark.parametrize("record", [[1, 2], "text", 5, None])
def test_non_object_record_is_a_record_problem(record: object) -> None:
    problems = _problems(validate_records, [_record(0), record])
    assert _where(problems) == {(1, RECORD)}


def test_empty_batch_is_one_problem() -> None:
    (problem,) = _problems(validate_records, [])
    assert (problem.index, problem.field, problem.message) == (WHOLE, RECORD, "no patients")


def test_too_many_records_is_one_problem() -> None:
    (problem,) = _problems(validate_records, [_record(i) for i in range(4)], max_records=3)
    assert problem.index == WHOLE and "limit of 3" in problem.message


@pytest.mark.parametrize("records", [_record(0), "abc"])
def test_batch_must_be_a_list(records: object) -> None:
    (problem,) = _problems(validate_records, records)
    assert problem.index == WHOLE


def test_missing_key_and_null_are_both_missing() -> None:
    frame = validate_records([_record(0, bmi_kg_m2=None), _record(1, bmi_kg_m2=...)]).frame
    assert frame["bmi_kg_m2"].isna().all()


def test_schema_bounds_drive_messages() -> None:
    field = BY_NAME["dose_mg_per_kg"]
    (problem,) = _problems(validate_records, [_record(0, dose_mg_per_kg=2.5)])
    assert problem.message == f"2.5 is above the plausible maximum of 2 {field.unit_label}"


def test_input_table_is_left_untouched() -> None:
    table = _table(2, psychotherapy=pd.Series(["cbt", " "], dtype="str"), ptsd=["true", "0"])
    before = table.copy()
    frame = validate_table(table).frame
    frame.loc[0, "psychotherapy"] = "none"
    frame.loc[0, "hdd_90d"] = 0.0
    pd.testing.assert_frame_equal(table, before)
