"""The FHIR exchange end to end in process: Bundle -> same validation -> RiskAssessment."""

from __future__ import annotations

import datetime as dt

import pytest

from features.fhir_bundle import record_to_bundle
from features.records import to_records
from features.simulate import simulate_cohort
from features.validation import validate_records, validate_table
from serving.fhir_out import check_risk_assessment
from serving.fhir_route import fhir_predict
from serving.results import explain
from tests.unit.conftest import FAST
from training.train import train

AT = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
CARD = "http://127.0.0.1/v1/model/card"


@pytest.fixture(scope="module")
def predictor():
    frame = validate_table(simulate_cohort(400, seed=31), training=True).frame
    p = train(frame, FAST, name="ketamine-aud-response", synthetic=True).predictor
    p.metadata["version"] = "7"
    return p


@pytest.fixture(scope="module")
def records():
    recs = to_records(validate_table(simulate_cohort(6, seed=32)).frame)
    for r in recs:
        r.pop("site_id", None)  # a site is not an Observation; it does not travel in the Bundle
    return recs


def test_bundle_gives_a_valid_risk_assessment_with_the_rest_answer(predictor, records) -> None:
    for record in records:
        status, ra, prediction = fhir_predict(
            record_to_bundle(record, at=AT), predictor, now=AT, model_card_url=CARD
        )
        assert status == 200, ra
        assert check_risk_assessment(ra) == []
        rest = explain(predictor, validate_records([record]).frame)[0]
        assert ra["prediction"][0]["probabilityDecimal"] == pytest.approx(
            rest["probability"], abs=5e-4
        )
        assert prediction["probability"] == rest["probability"]
        assert ra["subject"]["reference"] == f"Patient/{record['patient_id']}"
        refs = [b["reference"] for b in ra["basis"]]
        assert refs and all(r.startswith(("Observation/", "Patient/")) for r in refs)
        assert ra["meta"]["security"][0]["code"] == "AIAST"


def test_a_unit_that_cannot_be_converted_is_an_operation_outcome(predictor, records) -> None:
    bundle = record_to_bundle(records[0], at=AT)
    for e in bundle["entry"]:
        q = e["resource"].get("valueQuantity")
        if q and q["code"] == "U/L":
            q["code"] = q["unit"] = "[IU]/L"
    status, outcome, _ = fhir_predict(bundle, predictor, now=AT, model_card_url=CARD)
    assert status == 400 and outcome["resourceType"] == "OperationOutcome"
    assert any("[IU]/L" in i["diagnostics"] for i in outcome["issue"])
    assert records[0]["patient_id"] not in str(outcome)


def test_stale_inputs_are_left_out_and_listed(predictor, records) -> None:
    bundle = record_to_bundle(records[1], at=AT)
    stale = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"].get("valueQuantity", {}).get("code") == "U/L"
    )
    stale["effectiveDateTime"] = (AT - dt.timedelta(days=800)).isoformat()
    status, ra, _ = fhir_predict(bundle, predictor, now=AT, model_card_url=CARD)
    assert status == 200
    assert any("Inputs not used" in n["text"] and "stale" in n["text"] for n in ra["note"])
    assert {"reference": f"Observation/{stale['id']}"} not in ra["basis"]


@pytest.mark.parametrize("body", [None, [], {"resourceType": "Patient"}, "text"])
def test_anything_but_a_bundle_is_refused(predictor, body) -> None:
    status, outcome, _ = fhir_predict(body, predictor, now=AT, model_card_url=CARD)
    assert status == 400 and outcome["resourceType"] == "OperationOutcome"
