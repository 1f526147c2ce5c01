"""End to end: simulate -> train into a temporary MLflow store -> real server over HTTP -> CLI."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pandas as pd
import pytest

from features.fhir_bundle import record_to_bundle
from features.fhir_in import field_coding
from features.records import to_records
from features.schema import INPUT_FIELDS
from features.validation import validate_table
from ketapredict.tables import read_table
from serving.cds_fetch import LOCAL_KEY
from serving.cds_hooks import assert_cds_response_valid
from serving.fhir_out import check_risk_assessment
from tests.conftest import (
    API_TOKEN,
    Server,
    Workspace,
    free_port,
    run_cli,
    start_server,
    stop,
    wait_ready,
)

pytestmark = pytest.mark.e2e


def _records(workspace: Workspace) -> list[dict]:
    return to_records(validate_table(read_table(workspace.new_patients)).frame)


def test_train_prints_run_version_metrics_and_verdict(workspace: Workspace) -> None:
    out = workspace.train_stdout
    assert "run id: " in out
    assert "registered: ketamine-aud-response version 1" in out
    assert "held-out AUROC" in out and "slope" in out
    assert "gate: version 1 -> champion (passed the acceptance criteria; no champion yet)" in out
    assert "optimism-corrected AUROC" in out and "sample size:" in out


def test_predict_over_http_matches_batch_cli(workspace: Workspace, server: Server) -> None:
    records = _records(workspace)
    r = server.http.post(f"{server.url}/v1/predict", json={"patients": records}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["synthetic_data"] is True and "synthetic" in body["notice"]
    http = {p["patient_id"]: p for p in body["predictions"]}

    out = workspace.path / "scored.csv"
    done = run_cli(
        "predict", "--data", str(workspace.new_patients), "--out", str(out), cwd=workspace.path
    )
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(out)
    assert list(table["patient_id"]) == [r["patient_id"] for r in records]
    for _, row in table.iterrows():
        p = http[row["patient_id"]]
        assert row["probability"] == pytest.approx(p["probability"], abs=1e-12)
        assert row["probability_lower"] == pytest.approx(p["probability_interval"][0], abs=1e-12)
        assert row["factor_1"] == p["contributions"][0]["label"]
        assert row["factor_1_shap"] == pytest.approx(p["contributions"][0]["shap"], abs=1e-12)
        assert row["eligibility"] == p["eligibility"]["status"]
        assert json.loads(row["warnings"]) == p["warnings"]
        assert str(row["model_version"]) == p["model"]["version"] == "1"


def test_each_prediction_is_complete_and_additive(workspace: Workspace, server: Server) -> None:
    r = server.http.post(f"{server.url}/v1/predict", json={"patients": _records(workspace)[:10]})
    for p in r.json()["predictions"]:
        lo, hi = p["probability_interval"]
        assert 0 < lo <= p["probability"] <= hi < 1
        assert p["risk_band"] in {"low", "moderate", "high"}
        shaps = [c["shap"] for c in p["contributions"]]
        assert abs(p["base_log_odds"] + sum(shaps) - p["logit"]) < 1e-6
        assert np.all(np.diff(np.abs(shaps)) <= 1e-15), "sorted by magnitude"
        assert p["probability"] == pytest.approx(1 / (1 + np.exp(-p["logit"])))
        assert all(c["label"] and "unit" in c for c in p["contributions"])
        assert p["eligibility"]["status"] in {"eligible", "caution", "contraindicated", "unknown"}
        assert p["model"] == {"name": "ketamine-aud-response", "version": "1"}


def test_contraindication_and_missing_inputs_are_reported(
    workspace: Workspace, server: Server
) -> None:
    record = dict(_records(workspace)[0])
    record.update(systolic_bp_mmhg=190, diastolic_bp_mmhg=100, psychosis_history=True)
    for key in ("il6_pg_ml", "hscrp_mg_l", "tnfa_pg_ml"):
        record.pop(key, None)
    p = server.http.post(f"{server.url}/v1/predict", json={"patients": [record]}).json()
    p = p["predictions"][0]
    assert p["eligibility"]["status"] == "contraindicated"
    rules = {r["rule"] for r in p["eligibility"]["reasons"]}
    assert len(rules) >= 2
    assert all(r["source"] for r in p["eligibility"]["reasons"])
    missing = [w for w in p["warnings"] if w["code"] == "missing_input"]
    assert any("il6_pg_ml" in w["fields"] for w in missing)


def test_invalid_input_lists_every_problem_never_500(workspace: Workspace, server: Server) -> None:
    good = _records(workspace)[0]
    bad = [
        {**good, "hdd_90d": 120},
        {**good, "patient_id": "B-2", "sex": "unknown", "hdd_days": 3},
        {**good, "patient_id": "B-3", "age_years": "forty"},
    ]
    r = server.http.post(f"{server.url}/v1/predict", json={"patients": bad})
    assert r.status_code == 400
    locs = {tuple(d["loc"][:3]) for d in r.json()["detail"]}
    assert ("patients", 0, "hdd_90d") in locs
    assert ("patients", 1, "sex") in locs
    assert ("patients", 1, "hdd_days") in locs
    assert ("patients", 2, "age_years") in locs
    for payload in (
        b"{not json",
        b'{"patients": []}',
        b'{"patients": {}}',
        b"[]",
        json.dumps({"patients": [good] * 1001}).encode(),
        json.dumps({"patients": [good, good]}).encode(),
    ):
        r = server.http.post(
            f"{server.url}/v1/predict",
            content=payload,
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert 400 <= r.status_code < 500, (payload[:40], r.status_code, r.text[:200])
    assert good["patient_id"] not in server.log.read_text()


def test_model_health_and_metrics_routes(server: Server) -> None:
    m = server.http.get(f"{server.url}/v1/model").json()
    assert m["name"] == "ketamine-aud-response" and m["version"] == "1"
    assert m["synthetic_data"] is True and "synthetic" in m["notice"].lower()
    assert {"auroc", "brier", "calibration_slope"} <= set(m["metrics"])
    assert m["model_card"]["training_data"]["synthetic"] is True
    for route in ("/healthz", "/readyz", "/livez"):
        assert server.http.get(f"{server.url}{route}").status_code == 200
    metrics = server.http.get(f"{server.url}/metrics").text
    assert "bentoml_service_request_total" in metrics
    assert "/v1/predict" in server.http.get(f"{server.url}/docs.json").text
    html = server.http.get(f"{server.url}/v1/model/card", headers={"accept": "text/html"})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert "Internal validation" in html.text and "synthetic" in html.text
    assert "<script" not in html.text and "http://" not in html.text
    md = server.http.get(f"{server.url}/v1/model/card", params={"format": "md"})
    assert md.text.startswith("# Model card") and "TRIPOD+AI" in md.text
    card = server.http.get(f"{server.url}/v1/model/card").json()
    assert card["gate"]["passed"] is True and card["fairness"]["attributes"]


def test_predict_cli_rejects_a_bad_row_without_writing(workspace: Workspace) -> None:
    frame = read_table(workspace.new_patients)
    frame.loc[3, "hdd_90d"] = 95
    frame.loc[7, "sex"] = "M"
    bad = workspace.path / "bad.csv"
    frame.to_csv(bad, index=False)
    out = workspace.path / "never.csv"
    done = run_cli("predict", "--data", str(bad), "--out", str(out), cwd=workspace.path)
    assert done.returncode == 2
    assert "hdd_90d" in done.stderr and "sex" in done.stderr
    assert not out.exists()
    assert frame.loc[3, "patient_id"] not in done.stderr


def test_second_version_is_gated_against_the_champion(workspace: Workspace) -> None:
    done = run_cli("train", "--data", str(workspace.cohort), "--seed", "11", cwd=workspace.path)
    assert done.returncode == 0, done.stderr
    assert "registered: ketamine-aud-response version 2" in done.stdout
    verdict = next(line for line in done.stdout.splitlines() if line.startswith("gate:"))
    assert (
        verdict.endswith(
            "-> champion (passed the acceptance criteria and is not worse than the champion)"
        )
        or " -> challenger (did not pass: " in verdict
    ), verdict


def test_promote_overrides_with_a_recorded_reason(workspace: Workspace) -> None:
    short = run_cli("promote", "1", "--reason", "why", cwd=workspace.path)
    assert short.returncode == 2 and "reason" in short.stderr
    done = run_cli(
        "promote",
        "1",
        "--reason",
        "roll back after clinical review",
        "--by",
        "dr-test",
        cwd=workspace.path,
    )
    assert done.returncode == 0, done.stderr
    assert "champion: version 1" in done.stdout
    check = run_cli(
        "predict",
        "--data",
        str(workspace.new_patients),
        "--out",
        str(workspace.path / "after.csv"),
        cwd=workspace.path,
    )
    assert check.returncode == 0 and "version 1" in check.stdout
    missing = run_cli("promote", "99", "--reason", "there is no such version", cwd=workspace.path)
    assert missing.returncode == 1


def test_simulate_creates_the_output_folder(tmp_path) -> None:
    out = tmp_path / "data" / "nested" / "cohort.parquet"
    done = run_cli("simulate", "--n", "25", "--seed", "1", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(read_table(out)) == 25
    bad = run_cli("simulate", "--n", "5", "--out", str(tmp_path / "x.txt"), cwd=tmp_path)
    assert bad.returncode == 1 and ".txt" in bad.stderr


def test_fhir_bundle_gets_a_risk_assessment_with_the_rest_probability(
    workspace: Workspace, server: Server
) -> None:
    record = dict(_records(workspace)[2])
    record.pop("site_id", None)
    at = dt.datetime.now(dt.UTC)
    r = server.http.post(
        f"{server.url}/v1/fhir/RiskAssessment/$predict",
        json=record_to_bundle(record, at=at),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    ra = r.json()
    assert check_risk_assessment(ra) == []
    rest = server.http.post(f"{server.url}/v1/predict", json={"patients": [record]}).json()
    p = rest["predictions"][0]["probability"]
    assert ra["prediction"][0]["probabilityDecimal"] == pytest.approx(p, abs=5e-4)
    bad = server.http.post(
        f"{server.url}/v1/fhir/RiskAssessment/$predict",
        content=b"{oops",
        headers={"content-type": "application/fhir+json"},
    )
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


def test_every_answer_is_audited_without_identifiers(workspace: Workspace, server: Server) -> None:
    records = _records(workspace)[:3]
    before = _audit_rows(workspace)
    r = server.http.post(
        f"{server.url}/v1/predict",
        json={"patients": records},
        headers={"x-request-id": "req-audit-1"},
    )
    assert r.status_code == 200
    events = _audit_rows(workspace)
    assert len(events) == len(before) + 3
    assert all("urn:ketapredict:patient-key" in json.dumps(e) for e in events[-3:])
    audit_db = (workspace.path / "mlruns" / "audit.db").read_bytes()
    text = json.dumps(events)
    for rec in records:
        assert rec["patient_id"] not in text
        assert rec["patient_id"].encode() not in audit_db
    assert server.http.get(f"{server.url}/readyz").status_code == 200


def _audit_rows(workspace: Workspace) -> list[dict]:
    out = workspace.path / "audit.json"
    done = run_cli(
        "audit",
        "export",
        "--start",
        "2000-01-01",
        "--end",
        "2100-01-01",
        "--out",
        str(out),
        cwd=workspace.path,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()).get("entry", [])


def _prefetch(record: dict, at: dt.datetime) -> dict:
    """The prefetch an EHR would send for our discovery templates, from one record."""
    entries = record_to_bundle(record, at=at)["entry"]
    by_key: dict[str, list] = {}
    for e in entries[1:]:
        coding = e["resource"]["code"]["coding"][0]
        field = next(f.name for f in INPUT_FIELDS if field_coding(f) == coding)
        key = field if coding["system"] == "http://loinc.org" else LOCAL_KEY
        by_key.setdefault(key, []).append(e)
    out: dict = {"patient": entries[0]["resource"]}
    for key, items in by_key.items():
        out[key] = {"resourceType": "Bundle", "type": "searchset", "entry": items}
    return out


def test_cds_hooks_discovery_call_412_and_feedback(workspace: Workspace, server: Server) -> None:
    path = "/cds-services/ketamine-aud-response-v1"
    disc = httpx.get(f"{server.url}/cds-services", headers=server.cds_headers("/cds-services"))
    ids = {s["id"]: s for s in disc.json()["services"]}
    assert {"ketamine-aud-response-v1", "ketamine-aud-response-order-v1"} <= set(ids)
    assert "patient" in ids["ketamine-aud-response-v1"]["prefetch"]
    record = dict(_records(workspace)[3])
    record.pop("site_id", None)
    call = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/p1", "patientId": record["patient_id"]},
        "prefetch": _prefetch(record, dt.datetime.now(dt.UTC)),
    }

    def post(body: dict, to: str = path) -> httpx.Response:
        return httpx.post(
            f"{server.url}{to}", json=body, headers=server.cds_headers(to), timeout=30
        )

    r = post(call)
    assert r.status_code == 200, r.text
    body = r.json()
    assert assert_cds_response_valid(body) == []
    card = body["cards"][0]
    assert card["indicator"] == "info" and len(card["summary"]) < 140
    assert card["suggestions"][0]["actions"][0]["resource"]["resourceType"] == "RiskAssessment"
    assert post(call).json()["cards"][0]["uuid"] == card["uuid"], "same hookInstance, same answer"
    no_data = {**call, "hookInstance": str(uuid.uuid4()), "prefetch": {"patient": None}}
    assert post(no_data).status_code == 412
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-27T10:00:00Z",
            }
        ]
    }
    for _ in range(2):
        assert post(feedback, f"{path}/feedback").status_code == 200
    assert post(call, "/cds-services/unknown").status_code == 404


def test_security_tokens_and_jwts_are_enforced(server: Server) -> None:
    url = f"{server.url}/v1/model"
    assert httpx.get(url).status_code == 401
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401 and wrong.json() == {"error": "unauthorized"}
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert server.http.get(url).status_code == 200
    for route in ("/healthz", "/readyz", "/livez", "/metrics"):
        assert httpx.get(f"{server.url}{route}").status_code == 200
    disc = f"{server.url}/cds-services"
    assert httpx.get(disc).status_code == 401
    assert httpx.get(disc, headers=server.http.headers).status_code == 401, "API token is not a JWT"
    headers = server.cds_headers("/cds-services")
    assert httpx.get(disc, headers=headers).status_code == 200
    assert httpx.get(disc, headers=headers).status_code == 401, "replayed jti"
    expired = server.cds_headers("/cds-services", exp=int(time.time()) - 10)
    assert httpx.get(disc, headers=expired).status_code == 401
    other_aud = server.cds_headers("/cds-services/ketamine-aud-response-v1")
    assert httpx.get(disc, headers=other_aud).status_code == 401
    log = server.log.read_text()
    assert API_TOKEN not in log and headers["Authorization"].split()[1] not in log


def _batch_metric(http: httpx.Client, url: str, name: str) -> float:
    for line in http.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f"ketapredict_predict_batch_requests_{name} "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture(scope="module")
def unbatched_server(
    workspace: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, httpx.Client]]:
    """The service with `KETAPREDICT_BATCHING=off`: one scoring call per request."""
    home = tmp_path_factory.mktemp("bentoml-unbatched")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workspace.path / "serve-unbatched.log"
    env = {"KETAPREDICT_API_TOKENS": API_TOKEN, "KETAPREDICT_BATCHING": "off"}
    process = start_server(workspace.path, home, port, log, env)
    http = httpx.Client(headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=60)
    try:
        wait_ready(url, process, log)
        yield url, http
    finally:
        http.close()
        stop(process)


def _simultaneous(http: httpx.Client, url: str, records: list[dict]) -> list[httpx.Response]:
    """POST one patient per request, all released at once from their own connections."""
    start = threading.Barrier(len(records))

    def post(i: int) -> httpx.Response:
        headers = {**http.headers, "x-request-id": f"batch-test-{i}"}
        with httpx.Client(headers=headers, timeout=60) as client:
            start.wait()
            return client.post(url, json={"patients": [records[i]]})

    with ThreadPoolExecutor(len(records)) as pool:
        return list(pool.map(post, range(len(records))))


def test_simultaneous_requests_are_batched_and_answered_as_if_alone(
    workspace: Workspace, server: Server
) -> None:
    """By default requests arriving together share batches, and each gets, to the last bit,
    the answer it gets alone (per-request audit ids: tests/unit/test_batcher.py)."""
    base, http = server.url, server.http
    records = _records(workspace)[:32]
    url = f"{base}/v1/predict"
    alone = [http.post(url, json={"patients": [r]}).json()["predictions"] for r in records]
    before = _batch_metric(http, base, "count"), _batch_metric(http, base, "sum")
    answers = _simultaneous(http, url, records)
    assert [a.status_code for a in answers] == [200] * len(records)
    assert [a.json()["predictions"] for a in answers] == alone
    batches = _batch_metric(http, base, "count") - before[0]
    assert _batch_metric(http, base, "sum") - before[1] == len(records)
    assert batches < len(records), "32 simultaneous requests were never scored together"


def test_batching_off_scores_each_request_alone_with_the_same_answers(
    workspace: Workspace, server: Server, unbatched_server: tuple[str, httpx.Client]
) -> None:
    """`KETAPREDICT_BATCHING=off`: simultaneous requests are never scored together, and the
    answers equal the batching service's."""
    base, http = unbatched_server
    records = _records(workspace)[:16]
    batched = [
        server.http.post(f"{server.url}/v1/predict", json={"patients": [r]}).json()["predictions"]
        for r in records
    ]
    before = _batch_metric(http, base, "count"), _batch_metric(http, base, "sum")
    answers = _simultaneous(http, f"{base}/v1/predict", records)
    assert [a.status_code for a in answers] == [200] * len(records)
    assert [a.json()["predictions"] for a in answers] == batched
    assert _batch_metric(http, base, "count") - before[0] == len(records)
    assert _batch_metric(http, base, "sum") - before[1] == len(records)
