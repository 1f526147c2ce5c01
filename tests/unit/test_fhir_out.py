"""explain() item -> RiskAssessment: validates with fhir.resources and with our own checks."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fhir.resources.R4B.riskassessment import RiskAssessment

from serving.fhir_out import (
    CONTRIBUTION_URL,
    DERIVED_SYSTEM,
    INTERVAL_URL,
    assert_no_empty,
    check_risk_assessment,
    find_empty,
    rationale,
    risk_assessment,
)

AT = datetime(2025, 5, 1, 14, 3, 22, tzinfo=UTC)
BASIS = ["Observation/ggt-1", "Observation/audit-1"]


def contribution(feature: str, label: str, value: Any, unit: str, shap: float) -> dict[str, Any]:
    return {"feature": feature, "label": label, "value": value, "unit": unit, "shap": shap}


def prediction(p: float = 0.62, band: str = "moderate") -> dict[str, Any]:
    """Shaped like one `serving.results.explain` item (contributions sorted by |SHAP|)."""
    return {
        "patient_id": "1288992",
        "probability": p,
        "probability_interval": [max(p - 0.12, 0.0), min(p + 0.11, 1.0)],
        "risk_band": band,
        "logit": 0.49,
        "base_log_odds": 0.2,
        "contributions": [
            contribution("hdd_90d", "Heavy drinking days (last 90 days)", 48, "days", -0.41),
            contribution("ggt_u_l", "GGT", 88.0, "U/L", -0.22),
            contribution("ast_alt_ratio", "AST/ALT ratio", 1.8, "", 0.15),
            contribution("family_history_aud", "Family history of AUD", True, "", 0.12),
            contribution("age_years", "Age", 46, "years", 0.10),
            contribution("peth_ng_ml", "PEth", None, "ng/mL", 0.0),
        ],
        "eligibility": {"status": "caution", "reasons": [{"rule": "bp", "severity": "caution"}]},
        "applicability": {"typical": True, "typicality_percentile": 40.0},
        "warnings": [{"kind": "missing", "message": "Alcohol biomarkers not provided: PEth."}],
        "model": {"name": "ketamine-aud-lgbm", "version": "1.3.0"},
    }


def build(pred: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    args = {"subject_ref": "Patient/1288992", "basis": BASIS, "occurrence": AT, **kw}
    return risk_assessment(pred or prediction(), **args)


@pytest.mark.parametrize(("p", "band"), [(0.05, "low"), (0.45, "moderate"), (0.97, "high")])
@pytest.mark.parametrize("card", [None, "https://models.example.org/ketamine-aud/model-card"])
def test_every_risk_assessment_validates_and_passes_our_checks(
    p: float, band: str, card: str | None
) -> None:
    ra = build(prediction(p, band), model_card_url=card)
    RiskAssessment.model_validate(ra)
    assert check_risk_assessment(ra) == []
    assert ra["prediction"][0]["probabilityDecimal"] == p
    assert ra["prediction"][0]["qualitativeRisk"]["coding"][0]["code"] == band


def test_provenance_model_version_and_security_label() -> None:
    ra = build()
    assert ra["status"] == "final" and ra["performer"] == {"reference": "#model"}
    device = ra["contained"][0]
    assert device["id"] == "model" and device["version"] == [{"value": "1.3.0"}]
    assert device["deviceName"][0]["name"] == "ketamine-aud-lgbm"
    coding = ra["method"]["coding"][0]
    assert (coding["code"], coding["version"]) == ("ketamine-aud-lgbm", "1.3.0")
    assert ra["meta"]["security"][0]["code"] == "AIAST"
    assert ra["occurrenceDateTime"] == "2025-05-01T14:03:22Z"
    assert [b["reference"] for b in ra["basis"]] == ["Patient/1288992", *BASIS]


def test_prediction_window_interval_and_words() -> None:
    pred = build()["prediction"][0]
    assert pred["outcome"]["text"].startswith("Response to ketamine infusion at 6 months")
    assert pred["whenPeriod"] == {"start": "2025-07-31", "end": "2025-10-28"}
    interval = next(e for e in pred["extension"] if e["url"] == INTERVAL_URL)
    assert [(x["url"], x["valueDecimal"]) for x in interval["extension"]] == [
        ("low", 0.5),
        ("high", 0.73),
    ]
    assert pred["rationale"] == (
        "Main factors (SHAP, log-odds): Heavy drinking days (last 90 days) 48 days (−0.41); "
        "GGT 88 U/L (−0.22); AST/ALT ratio 1.8 (+0.15)."
    )


def test_all_contributions_are_machine_readable_with_codes() -> None:
    pred = build()["prediction"][0]
    contribs = [e["extension"] for e in pred["extension"] if e["url"] == CONTRIBUTION_URL]
    assert len(contribs) == 6
    codes = {
        c[0]["valueCodeableConcept"]["coding"][0]["code"]: c[1]["valueDecimal"] for c in contribs
    }
    assert codes["2324-2"] == -0.22 and codes["hdd_90d"] == -0.41 and codes["97607-6"] == 0.0
    derived = next(c for c in contribs if c[0]["valueCodeableConcept"]["text"] == "AST/ALT ratio")
    assert derived[0]["valueCodeableConcept"]["coding"][0]["system"] == DERIVED_SYSTEM


def test_notes_say_scale_eligibility_warnings_and_decision_support() -> None:
    notes = " ".join(n["text"] for n in build(model_card_url="https://m.example/card")["note"])
    assert "fraction from 0 to 1" in notes and "Eligibility: caution." in notes
    assert "Warnings: 1." in notes and "Decision support, not a decision." in notes
    assert "https://m.example/card" in notes


def test_identifier_is_deterministic_and_input_sensitive() -> None:
    first, again = build(), build()
    assert first == again and first["identifier"][0]["value"].startswith("urn:uuid:")
    later = build(occurrence=AT + timedelta(seconds=1))
    changed = prediction()
    changed["contributions"][1]["value"] = 90.0
    other = build(changed)
    ids = {ra["identifier"][0]["value"] for ra in (first, later, other)}
    assert len(ids) == 3


def test_occurrence_is_normalised_to_utc_and_must_be_aware() -> None:
    cest = AT.astimezone(timezone(timedelta(hours=2)))
    assert build(occurrence=cest)["occurrenceDateTime"] == "2025-05-01T14:03:22Z"
    with pytest.raises(ValueError, match="timezone"):
        build(occurrence=AT.replace(tzinfo=None))


def test_missing_model_version_or_unknown_band_is_refused() -> None:
    pred = prediction()
    pred["model"] = {"name": "ketamine-aud-lgbm", "version": ""}
    with pytest.raises(ValueError, match="version"):
        build(pred)
    with pytest.raises(ValueError, match="band"):
        build(prediction(band="certain"))


def test_rationale_words_for_missing_and_boolean_values() -> None:
    items = [
        contribution("peth_ng_ml", "PEth", None, "ng/mL", 0.3),
        contribution("ptsd", "PTSD", False, "", -0.2),
    ]
    assert (
        rationale(items)
        == "Main factors (SHAP, log-odds): PEth not recorded (+0.30); PTSD no (−0.20)."
    )
    assert rationale([]) == "No factor contributions were available."


def test_check_catches_out_of_range_probability() -> None:
    ra = build()
    ra["prediction"][0]["probabilityDecimal"] = 1.5
    RiskAssessment.model_validate(ra)  # the library accepts it ...
    assert any("0..1" in e for e in check_risk_assessment(ra))  # ... we do not
    ra["prediction"][0]["probabilityDecimal"] = 150
    assert any("ras-2" in e for e in check_risk_assessment(ra))


def test_check_catches_empty_string_and_bad_status() -> None:
    ra = build()
    ra["prediction"][0]["rationale"] = ""
    ra["status"] = "bogus"
    errors = check_risk_assessment(ra)
    assert any("rationale" in e and "empty" in e for e in errors)
    assert any("status" in e for e in errors)


def test_check_catches_structure_references_extensions_and_risk_codes() -> None:
    ra = build()
    del ra["subject"]
    ra["performer"] = {"reference": "#nowhere"}
    ra["prediction"][0]["extension"][0]["valueDecimal"] = 0.1  # value and sub-extensions
    ra["prediction"][0]["qualitativeRisk"]["coding"][0]["code"] = "very-high"
    errors = check_risk_assessment(ra)
    assert any(e.startswith("subject") for e in errors)
    assert any("#nowhere" in e for e in errors)
    assert any("ext-1" in e for e in errors)
    assert any("risk-probability" in e for e in errors)


def test_check_messages_never_quote_patient_references() -> None:
    ra = build()
    ra["subject"] = {"reference": "Patient/1288992", "bogus": 1}
    errors = check_risk_assessment(ra)
    assert errors and "1288992" not in json.dumps(errors)


def test_find_empty_and_assert_no_empty() -> None:
    obj = {"a": "", "b": [], "c": {}, "d": [{"e": "  "}], "f": None, "g": 0, "h": False}
    assert find_empty(obj) == ["$.a", "$.b", "$.c", "$.d[0].e", "$.f"]
    with pytest.raises(ValueError, match=r"\$\.a"):
        assert_no_empty(obj)
    assert_no_empty(copy.deepcopy(build()))
