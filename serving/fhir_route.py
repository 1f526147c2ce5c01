"""`POST /v1/fhir/RiskAssessment/$predict`: a FHIR R4 Bundle in, a RiskAssessment out.

Kept apart from the BentoML service so the whole exchange (mapping, the same validation as
every other route, prediction, RiskAssessment checks) is one plain function that tests call
with a real predictor. Everything the client sent that was not used (stale, superseded or
unknown observations) is listed in the answer as a note, so the EHR can see why a value was
left out.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from features.fhir_in import bundle_to_record, prefetch_to_bundle, problems_to_operation_outcome
from features.validation import InvalidInput, validate_records
from serving.fhir_out import check_risk_assessment, risk_assessment
from serving.predictor import Predictor
from serving.results import explain

FHIR_JSON = "application/fhir+json"
LOOKBACK_DAYS = 365


def _problem(message: str) -> dict[str, Any]:
    return problems_to_operation_outcome(
        [{"index": 0, "field": "Bundle", "message": message, "code": "invalid"}]
    )


def fhir_predict(
    body: Any,
    predictor: Predictor,
    *,
    now: dt.datetime,
    model_card_url: str,
    lookback_days: int = LOOKBACK_DAYS,
) -> tuple[int, dict[str, Any], Any]:
    """(HTTP status, FHIR resource, prediction or None). 400 answers carry an OperationOutcome."""
    if not isinstance(body, dict):
        return 400, _problem("the body must be a FHIR Bundle (JSON object)"), None
    if body.get("resourceType") == "Bundle":
        bundle = body
    elif isinstance(body.get("prefetch"), dict):
        bundle = prefetch_to_bundle(body["prefetch"])
    else:
        return 400, _problem("expected resourceType Bundle"), None
    mapped = bundle_to_record(bundle, assessed_at=now, lookback_days=lookback_days)
    if mapped.problems:
        return 400, problems_to_operation_outcome(mapped.problems), None
    try:
        frame = validate_records([mapped.record]).frame
    except InvalidInput as exc:
        return 400, problems_to_operation_outcome(list(exc.problems)), None
    prediction = explain(predictor, frame)[0]
    ra = risk_assessment(
        prediction,
        subject_ref=f"Patient/{mapped.record['patient_id']}",
        basis=mapped.basis,
        occurrence=now,
        model_card_url=model_card_url,
    )
    if mapped.ignored:
        ra.setdefault("note", []).append({"text": _ignored_note(mapped.ignored)})
    errors = check_risk_assessment(ra)
    if errors:
        raise RuntimeError(f"produced an invalid RiskAssessment ({len(errors)} problems)")
    return 200, ra, prediction


def _ignored_note(ignored: list[dict[str, Any]]) -> str:
    """Which submitted codes were not used and why (codes and reasons only, never values)."""
    items = "; ".join(f"{i['code']} ({i['reason']}: {i['detail']})" for i in ignored)
    return f"Inputs not used: {items}."


def bundle_record(body: Any, *, now: dt.datetime, lookback_days: int = LOOKBACK_DAYS):
    """(HTTP status, answer) for `POST /v1/record/from-fhir`: a Bundle mapped to a form record.

    The page fills its form from the answer so the clinician checks every value before asking
    for a prediction; nothing is predicted or audited here. Mapping problems (another patient's
    Observation, an age that cannot be computed) come back beside the partial record rather than
    failing it, since the clinician can correct them in the form.
    """
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        problem = {"field": "Bundle", "message": "expected a FHIR Bundle (a JSON object)"}
        return 400, {"error": "invalid input", "problems": [problem]}
    mapped = bundle_to_record(body, assessed_at=now, lookback_days=lookback_days)
    return 200, {
        "record": mapped.record,
        "used": len(mapped.basis),
        "ignored": mapped.ignored,
        "problems": mapped.problems,
    }
