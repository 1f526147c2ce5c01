"""CDS Hooks 2.0 core: discovery, request rules, fallback fetch, card rules, feedback, cache."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from features.fhir_in import LOCAL_SYSTEM, PATIENT_FIELDS
from features.schema import INPUT_FIELDS
from serving import cds_fetch
from serving import cds_hooks as ch

EXAMPLES = Path("/work/shared/ehr-examples")
TOKEN = "tok-SECRET-9f8e7d"
PID = "1288992"
HOOK_INSTANCE = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"


def _request(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": HOOK_INSTANCE,
        "context": {"userId": "Practitioner/example", "patientId": PID},
    }
    body.update(over)
    return body


def _auth() -> dict[str, Any]:
    return {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read",
        "subject": "ketamine-aud-cds",
    }


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


PATIENT = {"resourceType": "Patient", "id": PID, "gender": "male", "birthDate": "1979-03-02"}
OBS = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}


def _prediction(**over: Any) -> dict[str, Any]:
    contributions = [
        {"label": "AUDIT total", "value": 24, "unit": "points", "shap": -0.41},
        {"label": "GGT", "value": 88.0, "unit": "U/L", "shap": -0.22},
        {"label": "Psychotherapy", "value": "relapse_prevention", "unit": "", "shap": 0.15},
        {"label": "Current major depression", "value": True, "unit": "", "shap": -0.12},
        {"label": "Age", "value": 46, "unit": "years", "shap": 0.10},
        {"label": "IL-6", "value": None, "unit": "pg/mL", "shap": 0.01},
    ]
    p = {
        "probability": 0.62,
        "probability_interval": [0.48, 0.74],
        "risk_band": "moderate",
        "contributions": contributions,
        "eligibility": {
            "status": "caution",
            "reasons": [
                {"message": "Blood pressure 150|95 mmHg: monitor", "source": "Clinic protocol §3"}
            ],
        },
        "warnings": [{"message": "PEth not recorded in the last 365 days"}],
        "model": {"name": "ketamine-aud-response", "version": "3"},
    }
    p.update(over)
    return p


# --- discovery ------------------------------------------------------------------------------


def test_discovery_services_and_generated_prefetch() -> None:
    d = ch.discovery("https://cds.example.org", model_version="3")
    assert [(s["hook"], s["id"]) for s in d["services"]] == [
        ("patient-view", "ketamine-aud-response-v1"),
        ("order-select", "ketamine-aud-response-order-v1"),
    ]
    prefetch = d["services"][0]["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    for f in INPUT_FIELDS:
        if f.loinc and f.name not in PATIENT_FIELDS:
            assert prefetch[f.name] == (
                "Observation?patient={{context.patientId}}&code=http://loinc.org|"
                f"{f.loinc}&_sort=-date&_count=1"
            )
    local = parse_qs(urlsplit(prefetch[cds_fetch.LOCAL_KEY]).query)["code"][0].split(",")
    assert f"{LOCAL_SYSTEM}|hdd_90d" in local and f"{LOCAL_SYSTEM}|dose_mg_per_kg" in local
    assert all(c.startswith(LOCAL_SYSTEM + "|") for c in local)
    assert d["services"][0]["extension"] == {"org.ketapredict.model-version": "3"}
    assert ch._empty_paths(d) == []
    assert all("{{" not in q.replace("{{context.patientId}}", "") for q in prefetch.values())


def test_discovery_without_version_has_no_extension() -> None:
    d = ch.discovery("https://cds.example.org")
    assert all("extension" not in s for s in d["services"])
    assert ch._empty_paths(d) == []


def test_required_keys_cover_required_fields() -> None:
    assert ch.REQUIRED_KEYS == ("patient", "audit_total", cds_fetch.LOCAL_KEY)


# --- request --------------------------------------------------------------------------------


def test_shared_example_request_parses_and_hides_token() -> None:
    body = json.loads((EXAMPLES / "request-patient-view.json").read_text())
    req = ch.parse_request(body, ch.PATIENT_VIEW_ID)
    assert req.fhirAuthorization is not None
    assert "opaque-short-lived-token" not in repr(req)
    assert req.prefetch is not None and req.prefetch["audit"] is None


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (_request(hookInstance="not-a-uuid"), "hookInstance"),
        (_request(fhirAuthorization=_auth()), "fhirServer"),
        (
            _request(
                fhirServer="https://ehr.example.org/fhir",
                fhirAuthorization={**_auth(), "token_type": "MAC"},
            ),
            "token_type",
        ),
        (_request(hook="order-select"), "selections"),
        (_request(context={"userId": "Practitioner/1"}), "patientId"),
    ],
)
def test_invalid_requests_are_400_without_echoing_values(body: dict[str, Any], where: str) -> None:
    service = ch.ORDER_SELECT_ID if body["hook"] == "order-select" else ch.PATIENT_VIEW_ID
    with pytest.raises(ch.CdsRequestError) as e:
        ch.parse_request(body, service)
    text = json.dumps(e.value.outcome)
    assert where in text
    assert TOKEN not in text and TOKEN not in str(e.value)
    assert e.value.outcome["resourceType"] == "OperationOutcome"


def test_wrong_hook_for_service_and_extra_fields() -> None:
    with pytest.raises(ch.CdsRequestError):
        ch.parse_request(_request(), ch.ORDER_SELECT_ID)
    req = ch.parse_request(_request(extension={"com.ehr.x": 1}), ch.PATIENT_VIEW_ID)
    assert req.model_extra == {"extension": {"com.ehr.x": 1}}


def test_missing_prefetch_counts_omitted_and_null() -> None:
    given = {"patient": PATIENT, "audit_total": None}
    given.update(
        {
            k: _bundle(OBS)
            for k in ch.prefetch_templates()
            if k not in ("patient", "audit_total", "ggt_u_l")
        }
    )
    req = ch.parse_request(_request(prefetch=given), ch.PATIENT_VIEW_ID)
    assert ch.missing_prefetch(req) == ["audit_total", "ggt_u_l"]
    req = ch.parse_request(_request(), ch.PATIENT_VIEW_ID)
    assert ch.missing_prefetch(req) == list(ch.prefetch_templates())


def test_order_select_fires_only_for_ketamine() -> None:
    def order(text: str) -> dict[str, Any]:
        return _request(
            hook="order-select",
            context={
                "userId": "Practitioner/1",
                "patientId": PID,
                "selections": ["MedicationRequest/m1"],
                "draftOrders": _bundle(
                    {
                        "resourceType": "MedicationRequest",
                        "id": "m1",
                        "medicationCodeableConcept": {"text": text},
                    }
                ),
            },
        )

    assert ch.selects_ketamine(ch.parse_request(order("Ketamine 0.5 mg/kg IV"), ch.ORDER_SELECT_ID))
    assert not ch.selects_ketamine(ch.parse_request(order("Naltrexone 50 mg"), ch.ORDER_SELECT_ID))


# --- fallback fetch against a real local HTTP server ----------------------------------------


class _Fhir(BaseHTTPRequestHandler):
    mode = "ok"
    seen: list[tuple[str, dict[str, str]]]
    release: threading.Event

    def do_GET(self) -> None:
        type(self).seen.append((self.path, dict(self.headers)))
        if self.mode == "slow":
            self.release.wait(5)
        status = 500 if self.mode == "500" else 200
        body = PATIENT if self.path.split("?")[0].endswith(f"Patient/{PID}") else _bundle(OBS)
        data = json.dumps(body if status == 200 else {"resourceType": "OperationOutcome"})
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.end_headers()
        self.wfile.write(data.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fhir() -> Iterator[tuple[str, type[_Fhir]]]:
    handler = type("Handler", (_Fhir,), {"seen": [], "release": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir", handler
    handler.release.set()
    server.shutdown()
    server.server_close()


def _with_server(base: str, prefetch: dict[str, Any] | None = None) -> ch.CdsRequest:
    return ch.parse_request(
        _request(fhirServer=base, fhirAuthorization=_auth(), prefetch=prefetch), ch.PATIENT_VIEW_ID
    )


def test_fetch_sends_bearer_and_substituted_query(fhir: tuple[str, Any]) -> None:
    base, handler = fhir
    req = _with_server(base)
    got = asyncio.run(cds_fetch.fetch_missing(req, ["patient", "ggt_u_l"], timeout=2))
    assert got["patient"] == PATIENT and got["ggt_u_l"]["resourceType"] == "Bundle"
    paths = {urlsplit(p).path: (parse_qs(urlsplit(p).query), h) for p, h in handler.seen}
    assert set(paths) == {f"/fhir/Patient/{PID}", "/fhir/Observation"}
    query, headers = paths["/fhir/Observation"]
    assert query == {
        "patient": [PID],
        "code": ["http://loinc.org|2324-2"],
        "_sort": ["-date"],
        "_count": ["1"],
    }
    assert headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(("mode", "code"), [("500", "processing"), ("slow", "timeout")])
def test_fetch_failure_is_prefetch_unavailable(
    fhir: tuple[str, Any], mode: str, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    base, handler = fhir
    handler.mode = mode
    caplog.set_level(logging.DEBUG)
    with pytest.raises(cds_fetch.PrefetchUnavailable) as e:
        asyncio.run(cds_fetch.fetch_missing(_with_server(base), ["patient"], timeout=0.3))
    assert e.value.outcome["issue"][0]["code"] == code
    assert TOKEN not in caplog.text and TOKEN not in str(e.value)
    assert PID not in str(e.value) and PID not in json.dumps(e.value.outcome)


def test_fetch_refuses_without_server_or_over_plain_http() -> None:
    no_server = ch.parse_request(_request(), ch.PATIENT_VIEW_ID)
    remote_http = _with_server("http://ehr.example.org/fhir")
    for req in (no_server, remote_http):
        with pytest.raises(cds_fetch.PrefetchUnavailable):
            asyncio.run(cds_fetch.fetch_missing(req, ["patient"]))


def test_resolve_fetches_omitted_required_and_drops_failed_optional(
    fhir: tuple[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    base, handler = fhir
    caplog.set_level(logging.DEBUG)
    got = asyncio.run(cds_fetch.resolve_prefetch(_with_server(base, {"ggt_u_l": None}), timeout=2))
    assert got["patient"] == PATIENT and "ggt_u_l" not in got  # null is not fetched again
    assert len(handler.seen) == len(ch.prefetch_templates()) - 1
    assert TOKEN not in caplog.text and PID not in caplog.text


def test_resolve_without_server_needs_only_required_keys() -> None:
    required = {"patient": PATIENT, "audit_total": _bundle(OBS), cds_fetch.LOCAL_KEY: _bundle(OBS)}
    req = ch.parse_request(_request(prefetch=required), ch.PATIENT_VIEW_ID)
    assert set(asyncio.run(cds_fetch.resolve_prefetch(req))) == set(required)
    for key in required:
        for absent in (None, _bundle()):
            broken = {**required, key: absent}
            req = ch.parse_request(_request(prefetch=broken), ch.PATIENT_VIEW_ID)
            with pytest.raises(cds_fetch.PrefetchUnavailable) as e:
                asyncio.run(cds_fetch.resolve_prefetch(req))
            assert e.value.keys == [key]


# --- card and response ----------------------------------------------------------------------


def test_card_follows_the_rules() -> None:
    ra = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": f"Patient/{PID}"},
    }
    c = ch.card(
        _prediction(),
        model_card_url="https://models.example.org/card",
        risk_assessment=ra,
        service_label="Ketamine-AUD response model v3",
        synthetic=True,
    )
    assert c["summary"] == (
        "Ketamine for AUD: predicted 6-month response 62% (moderate). Eligibility: caution. "
        "Model v3"
    )
    detail = c["detail"]
    assert "48% to 74%" in detail and "Decision support, not a decision." in detail
    assert "| AUDIT total | 24 points | lowers (-0.41) |" in detail
    assert "| Psychotherapy | relapse prevention | raises (+0.15) |" in detail
    assert "| Current major depression | yes |" in detail and "IL-6" not in detail
    assert "150\\|95" in detail and "(source: Clinic protocol §3)" in detail
    assert "PEth not recorded" in detail and "synthetic data" in detail
    assert c["selectionBehavior"] == "at-most-one"
    action = c["suggestions"][0]["actions"][0]
    assert action == {
        "type": "create",
        "resource": ra,
        "description": "Create RiskAssessment (ketamine-aud-response 3)",
    }
    assert c["links"] == [
        {
            "label": "Model card and validation",
            "url": "https://models.example.org/card",
            "type": "absolute",
        }
    ]
    assert ch.assert_cds_response_valid(ch.response([c])) == []


def test_card_without_risk_assessment_has_no_suggestion() -> None:
    c = ch.card(
        _prediction(eligibility={"status": "eligible", "reasons": []}, warnings=[]),
        model_card_url="https://m.example.org/card",
        risk_assessment=None,
        service_label="Ketamine-AUD v3",
    )
    assert "suggestions" not in c and "selectionBehavior" not in c
    assert "synthetic" not in c["detail"] and "Eligibility" not in c["summary"]
    assert ch.assert_cds_response_valid(ch.response([c])) == []


def test_summary_stays_under_140_with_long_model_version() -> None:
    p = _prediction(model={"name": "m", "version": "2025.05.01-" + "x" * 200})
    s = ch.summary_text(p)
    assert len(s) < 140 and s.endswith("…") and "62% (moderate)" in s


def test_validator_rejects_spec_violations() -> None:
    good = json.loads((EXAMPLES / "response.json").read_text())
    assert ch.assert_cds_response_valid(good) == []
    assert ch.assert_cds_response_valid({"cards": []}) == []
    cases = {
        "summary": lambda c: c.update(summary="x" * 140),
        "indicator": lambda c: c.update(indicator="hard-stop"),
        "source.label": lambda c: c["source"].pop("label"),
        "uuid": lambda c: c.update(uuid="abc"),
        "selectionBehavior": lambda c: c.pop("selectionBehavior"),
        "appContext": lambda c: c["links"][0].update(appContext="x"),
        "null": lambda c: c.update(detail=None),
        "empty": lambda c: c.update(overrideReasons=[]),
        "display": lambda c: c["overrideReasons"][0].pop("display"),
    }
    for name, mutate in cases.items():
        bad = copy.deepcopy(good)
        mutate(bad["cards"][0])
        assert ch.assert_cds_response_valid(bad), name


# --- feedback and idempotency ---------------------------------------------------------------


def test_feedback_store_is_idempotent(tmp_path: Path) -> None:
    body = json.loads((EXAMPLES / "feedback.json").read_text())
    store = ch.FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    fb = ch.parse_feedback(body)
    assert store.record_all(ch.PATIENT_VIEW_ID, fb) == 1
    assert store.record_all(ch.PATIENT_VIEW_ID, fb) == 0
    same_instant = copy.deepcopy(body)
    same_instant["feedback"][0]["outcomeTimestamp"] = "2025-05-01T16:05:31+02:00"
    assert store.record_all(ch.PATIENT_VIEW_ID, ch.parse_feedback(same_instant)) == 0
    assert store.count() == 1
    assert store.record_all(ch.ORDER_SELECT_ID, fb) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"acceptedSuggestions": None},
        {"outcomeTimestamp": 1714572331},
        {"outcomeTimestamp": "2025-05-01T14:05:31"},
        {"outcome": "ignored"},
        {"card": "not-a-uuid"},
    ],
)
def test_invalid_feedback_is_400(change: dict[str, Any]) -> None:
    item = json.loads((EXAMPLES / "feedback.json").read_text())["feedback"][0]
    item.update(change)
    item = {k: v for k, v in item.items() if v is not None}
    with pytest.raises(ch.CdsRequestError):
        ch.parse_feedback({"feedback": [item]})


def test_hook_cache_returns_identical_response_within_ttl() -> None:
    now = [0.0]
    cache = ch.HookCache(ttl=60, clock=lambda: now[0])
    req = ch.parse_request(_request(), ch.PATIENT_VIEW_ID)
    key = cache.key(ch.PATIENT_VIEW_ID, req)
    resp = ch.response(
        [
            ch.card(
                _prediction(),
                model_card_url="https://m.example.org/c",
                risk_assessment=None,
                service_label="v3",
            )
        ]
    )
    cache.put(key, resp)
    resp["cards"][0]["summary"] = "mutated after caching"
    hit = cache.get(key)
    assert hit is not None and hit["cards"][0]["uuid"] == resp["cards"][0]["uuid"]
    assert hit["cards"][0]["summary"] != "mutated after caching"
    other = ch.parse_request(
        _request(context={"userId": "u", "patientId": "other"}), ch.PATIENT_VIEW_ID
    )
    assert cache.get(cache.key(ch.PATIENT_VIEW_ID, other)) is None
    now[0] = 61.0
    assert cache.get(key) is None
