"""FHIR Bundle -> API record: bundles are built with fhir.resources R4B models, as an EHR would."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient

from features.fhir_in import (
    LOCAL_SYSTEM,
    UCUM,
    bundle_to_record,
    field_coding,
    prefetch_to_bundle,
    problems_to_operation_outcome,
)
from features.schema import BY_NAME, INPUT_FIELDS, Field
from features.validation import InvalidInput, Problem, validate_records

AT = datetime(2025, 5, 1, 14, 0, tzinfo=UTC)
EXAMPLE = Path("/work/shared/ehr-examples/request-patient-view.json")
OBSERVED = [f for f in INPUT_FIELDS if f.name not in ("patient_id", "site_id", "sex", "age_years")]


def patient(**kw: Any) -> Patient:
    return Patient(**{"id": "pt-1", "gender": "female", "birthDate": "1975-05-01", **kw})


def obs(
    name: str, oid: str, when: str | None = "2025-04-01", status: str = "final", **extra: Any
) -> Observation:
    """An Observation for one schema field, coded as the schema says (`extra`: value, dates)."""
    code = {"coding": [field_coding(BY_NAME[name])]}
    data = {"id": oid, "status": status, "code": code, "subject": {"reference": "Patient/pt-1"}}
    return Observation(**data, **({"effectiveDateTime": when} if when else {}), **extra)


def qty(value: float, code: str) -> dict[str, Any]:
    return {"valueQuantity": {"value": value, "unit": code, "system": UCUM, "code": code}}


def typical(f: Field) -> tuple[Any, dict[str, Any]]:
    """A valid value for a field and the Observation value element that carries it."""
    if f.kind == "boolean":
        return True, {"valueBoolean": True}
    if f.kind == "category":
        return f.levels[-1], {"valueCodeableConcept": {"coding": [{"code": f.levels[-1]}]}}
    value = 20 if f.name == "aud_onset_age_years" else int((f.minimum + f.maximum) / 2)
    if f.kind == "integer" and (f.unit or "").startswith("{"):
        return value, {"valueInteger": value}
    return (value if f.kind == "integer" else float(value)), qty(value, f.unit)


def bundle(*resources: Any, kind: str = "collection") -> dict[str, Any]:
    model = Bundle(type=kind, entry=[{"resource": r} for r in resources])
    return json.loads(model.model_dump_json())


def to_record(*resources: Any, **kw: Any):
    return bundle_to_record(bundle(*resources), assessed_at=AT, **kw)


def test_every_field_round_trips_and_passes_validation() -> None:
    expected, observations = {}, []
    for i, f in enumerate(OBSERVED):
        expected[f.name], value = typical(f)
        observations.append(obs(f.name, f"o{i}", **value))
    out = to_record(patient(), *observations)
    assert out.problems == [] and out.ignored == []
    assert out.record == {"patient_id": "pt-1", "sex": "female", "age_years": 50, **expected}
    assert out.basis == [f"Observation/o{i}" for i in range(len(OBSERVED))]
    frame = validate_records([out.record]).frame
    assert frame.loc[0, "hdd_90d"] == expected["hdd_90d"]


def test_fields_without_loinc_use_the_local_code_system() -> None:
    assert field_coding(BY_NAME["hdd_90d"]) == {"system": LOCAL_SYSTEM, "code": "hdd_90d"}
    assert field_coding(BY_NAME["ggt_u_l"]) == {"system": "http://loinc.org", "code": "2324-2"}


def test_missing_biomarkers_are_absent_and_validation_still_passes() -> None:
    required = ["audit_total", "hdd_90d", "drinks_per_drinking_day", "infusions_planned"]
    observations = [obs(n, n.replace("_", "-"), **typical(BY_NAME[n])[1]) for n in required]
    observations.append(obs("dose_mg_per_kg", "dose", **qty(0.5, "mg/kg")))
    out = to_record(patient(), *observations)
    assert "ggt_u_l" not in out.record and out.problems == []
    validate_records([out.record])


@pytest.mark.parametrize(
    ("name", "value", "unit", "expected"),
    [
        ("hscrp_mg_l", 0.8, "mg/dL", 8.0),
        ("il6_pg_ml", 4.5, "ng/L", 4.5),
        ("tnfa_pg_ml", 0.012, "ng/mL", 12.0),
        ("ggt_u_l", 1.1, "ukat/L", 66.0),
        ("peth_ng_ml", 150, "ug/L", 150.0),
        ("hdd_90d", 48, "d", 48),
        ("audit_total", 24, "1", 24),
        ("audit_total", 24, "{score}", 24),
    ],
)
def test_convertible_units(name: str, value: float, unit: str, expected: float) -> None:
    out = to_record(patient(), obs(name, "x", **qty(value, unit)))
    assert out.problems == []
    assert out.record[name] == expected and type(out.record[name]) is type(expected)


@pytest.mark.parametrize(
    ("name", "unit"), [("ggt_u_l", "[IU]/L"), ("hscrp_mg_l", "mmol/L"), ("bmi_kg_m2", "kg")]
)
def test_unconvertible_unit_is_a_problem_naming_field_and_unit(name: str, unit: str) -> None:
    out = to_record(patient(), obs(name, "x", **qty(5, unit)))
    assert name not in out.record and out.basis == []
    [problem] = out.problems
    assert problem["field"] == name and unit in problem["message"]
    OperationOutcome.model_validate(problems_to_operation_outcome(out.problems))


def test_quantity_without_ucum_code_is_refused() -> None:
    value = {"valueQuantity": {"value": 88, "unit": "U/L"}}
    out = to_record(patient(), obs("ggt_u_l", "x", **value))
    assert [p["field"] for p in out.problems] == ["ggt_u_l"]


def test_newest_observation_wins_and_older_are_superseded() -> None:
    out = to_record(
        patient(),
        obs("ggt_u_l", "old", "2025-01-10", **qty(40, "U/L")),
        obs("ggt_u_l", "new", "2025-04-20T09:00:00+02:00", **qty(90, "U/L")),
        obs("ggt_u_l", "mid", "2025-03-01", **qty(60, "U/L")),
    )
    assert out.record["ggt_u_l"] == 90.0 and out.basis == ["Observation/new"]
    reasons = {i["reference"]: i["reason"] for i in out.ignored}
    assert reasons == {"Observation/old": "superseded", "Observation/mid": "superseded"}
    assert all(i["code"] == "http://loinc.org|2324-2" for i in out.ignored)


def test_effective_period_end_and_issued_date_an_observation() -> None:
    early = obs("ggt_u_l", "a", None, issued="2025-04-02T00:00:00Z", **qty(40, "U/L"))
    late = obs("ggt_u_l", "b", None, effectivePeriod={"end": "2025-04-03"}, **qty(70, "U/L"))
    assert to_record(patient(), late, early).record["ggt_u_l"] == 70.0


def test_stale_and_future_values_are_ignored_and_reported() -> None:
    out = to_record(
        patient(),
        obs("ggt_u_l", "stale", "2024-04-30", **qty(40, "U/L")),
        obs("ast_u_l", "future", "2025-05-02", **qty(40, "U/L")),
        lookback_days=365,
    )
    assert "ggt_u_l" not in out.record and "ast_u_l" not in out.record
    reasons = {i["field"]: i["reason"] for i in out.ignored}
    assert reasons == {"ggt_u_l": "stale", "ast_u_l": "after-assessment"}
    assert all("value" not in i for i in out.ignored)
    kept = to_record(patient(), obs("ggt_u_l", "ok", "2024-05-02", **qty(40, "U/L")))
    assert kept.record["ggt_u_l"] == 40.0


@pytest.mark.parametrize("status", ["preliminary", "cancelled", "entered-in-error"])
def test_non_final_status_is_ignored_even_when_newer(status: str) -> None:
    out = to_record(
        patient(),
        obs("ggt_u_l", "final", "2025-03-01", **qty(40, "U/L")),
        obs("ggt_u_l", "draft", "2025-04-01", status=status, **qty(99, "U/L")),
    )
    assert out.record["ggt_u_l"] == 40.0
    assert [(i["reference"], i["reason"]) for i in out.ignored] == [("Observation/draft", "status")]


def test_unknown_codes_and_blood_pressure_components() -> None:
    unknown = Observation(
        id="hr", status="final", code={"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
    )
    panel = Observation(
        id="bp",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        effectiveDateTime="2025-04-01",
        component=[
            {"code": {"coding": [field_coding(BY_NAME["systolic_bp_mmhg"])]}, **qty(142, "mm[Hg]")},
            {"code": {"coding": [field_coding(BY_NAME["diastolic_bp_mmhg"])]}, **qty(91, "mm[Hg]")},
        ],
    )
    out = to_record(patient(), unknown, panel)
    assert out.record["systolic_bp_mmhg"] == 142.0 and out.record["diastolic_bp_mmhg"] == 91.0
    assert out.basis == ["Observation/bp"]
    assert out.ignored == [
        {
            "code": "http://loinc.org|8867-4",
            "reason": "unknown-code",
            "detail": "no input field has this code",
            "reference": "Observation/hr",
        }
    ]


@pytest.mark.parametrize("gender", ["other", "unknown", None, "M"])
def test_gender_other_unknown_missing_or_invalid_is_a_problem_for_sex(gender: str | None) -> None:
    out = to_record(patient(gender=gender))
    assert "sex" not in out.record
    assert [p["field"] for p in out.problems] == ["sex"]


@pytest.mark.parametrize(
    ("birth", "age"),
    [
        ("1975-05-01", 50),  # birthday on the assessment date
        ("1975-05-02", 49),  # one day before the birthday
        ("1975-04", 50),  # partial, but every day of April 1975 gives 50
        ("1976-02-29", 49),
    ],
)
def test_birth_date_gives_completed_years_at_assessment(birth: str, age: int) -> None:
    assert to_record(patient(birthDate=birth)).record["age_years"] == age


def test_leap_day_birthday_counts_from_march_first() -> None:
    on = datetime(2025, 2, 28, tzinfo=UTC)
    before = bundle_to_record(bundle(patient(birthDate="2000-02-29")), assessed_at=on)
    after = bundle_to_record(
        bundle(patient(birthDate="2000-02-29")), assessed_at=on.replace(day=1, month=3)
    )
    assert (before.record["age_years"], after.record["age_years"]) == (24, 25)


@pytest.mark.parametrize("birth", ["1975-05", "1975", "2026-01-01"])
def test_ambiguous_partial_or_future_birth_date_is_a_problem(birth: str) -> None:
    out = to_record(patient(birthDate=birth))
    assert "age_years" not in out.record
    assert [p["field"] for p in out.problems] == ["age_years"]


def test_observation_about_another_patient_is_a_problem_without_its_id() -> None:
    other = obs("ggt_u_l", "x", **qty(40, "U/L"))
    other.subject = {"reference": "Patient/secret-99"}
    out = to_record(patient(), other)
    assert "ggt_u_l" not in out.record and out.problems
    assert "secret-99" not in json.dumps(out.problems)


def test_no_identifier_in_any_problem() -> None:
    out = to_record(patient(id="pt-secret", gender="other", birthDate="1975"))
    assert len(out.problems) == 2 and "pt-secret" not in json.dumps(out.problems)


def test_missing_patient_and_naive_time() -> None:
    assert [p["message"] for p in to_record().problems] == ["no Patient resource"]
    with pytest.raises(ValueError, match="timezone"):
        bundle_to_record(bundle(patient()), assessed_at=datetime(2025, 5, 1))


def test_shared_cds_hooks_prefetch_example_maps() -> None:
    request = json.loads(EXAMPLE.read_text())
    flat = prefetch_to_bundle(request["prefetch"])
    Bundle.model_validate(flat)
    out = bundle_to_record(flat, assessed_at=datetime(2025, 5, 1, 14, 3, 22, tzinfo=UTC))
    assert out.record == {"patient_id": "1288992", "sex": "male", "age_years": 46, "ggt_u_l": 88.0}
    assert out.basis == ["Observation/ggt-1"] and out.problems == [] and out.ignored == []


def test_prefetch_flattening_drops_nulls_duplicates_and_outcomes() -> None:
    pt = json.loads(patient().model_dump_json())
    searchset = bundle(patient(), obs("ggt_u_l", "g", **qty(40, "U/L")), kind="searchset")
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning"}]}
    searchset["entry"].append({"resource": outcome})
    flat = prefetch_to_bundle({"patient": pt, "labs": searchset, "audit": None})
    assert [e["resource"]["resourceType"] for e in flat["entry"]] == ["Patient", "Observation"]


def test_operation_outcome_from_mapping_and_validation_problems() -> None:
    out = to_record(patient(gender="unknown"))
    try:
        validate_records([{**out.record, "hdd_90d": 120}])
    except InvalidInput as e:
        problems: list[Any] = [*out.problems, *e.problems]
    oo = problems_to_operation_outcome(problems)
    OperationOutcome.model_validate(oo)
    assert len(oo["issue"]) == len(problems) and all(i["severity"] == "error" for i in oo["issue"])
    assert isinstance(problems[-1], Problem)
    with pytest.raises(ValueError, match="at least one"):
        problems_to_operation_outcome([])
