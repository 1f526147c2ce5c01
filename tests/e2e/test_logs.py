"""The server's log is JSON lines tagged with request ids and free of identifiers and secrets.

Independent of test order: each test sends its own requests, with a distinctive patient id and
known credentials, to the shared server, and then reads the whole log it has written so far.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

from features.records import to_records
from features.validation import validate_table
from ketapredict.tables import read_table
from tests.conftest import API_TOKEN, Server, Workspace

pytestmark = pytest.mark.e2e

PID = "PID-LOGCHECK-7731"
WRONG_TOKEN = "wrong-token-LOGCHECK-" + "s" * 20
# Written by `ketapredict serve` and BentoML's arbiter before the worker takes over its logging.
STARTUP = (
    re.compile(r"serving \S+ on http://\S+"),
    re.compile(r"\s+curl -s -H 'Authorization: Bearer \$TOKEN' .*"),
    re.compile(r"\S+ \[INFO\] \[cli\] Starting production HTTP BentoServer from .*"),
)
KEYS = {"time", "level", "logger", "message", "request_id"}


def _record(workspace: Workspace) -> dict:
    record = to_records(validate_table(read_table(workspace.new_patients)).frame)[0]
    return {**record, "patient_id": PID}


def _entries(server: Server) -> list[dict]:
    """Every log line as JSON; fails on any other line except the known start-up ones."""
    entries = []
    for line in server.log.read_text().splitlines():
        if not line.strip() or any(p.fullmatch(line) for p in STARTUP):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON log line: {line[:200]!r}")
        assert KEYS <= set(entry), line[:200]
        entries.append(entry)
    return entries


def _assert_clean(server: Server) -> None:
    text = server.log.read_text()
    assert PID not in text and API_TOKEN not in text and WRONG_TOKEN not in text
    assert not re.search(r"(?i)bearer\s+(?!\$TOKEN|\[redacted\])\S", text)


@pytest.fixture
def requests_sent(workspace: Workspace, server: Server) -> Iterator[dict[str, httpx.Response]]:
    """A mix of good, bad, unauthenticated and identifier-carrying requests."""
    record, url = _record(workspace), server.url
    sent = {
        "ok": server.http.post(
            f"{url}/v1/predict",
            json={"patients": [record]},
            headers={"X-Request-Id": "logcheck-7731.ok"},
        ),
        "invalid": server.http.post(
            f"{url}/v1/predict",
            json={"patients": [{**record, "hdd_90d": 120}, record]},
            headers={"X-Request-Id": "logcheck-7731.invalid"},
        ),
        "fhir_bad": server.http.post(
            f"{url}/v1/fhir/RiskAssessment/$predict",
            content=json.dumps({"resourceType": "Bundle", "id": PID}),
            headers={"content-type": "application/fhir+json"},
        ),
        "query": server.http.get(f"{url}/v1/model", params={"patient": PID}),
        "unmatched": server.http.get(f"{url}/Patient/{PID}"),
        "unsafe_id": server.http.get(f"{url}/v1/model", headers={"X-Request-Id": f"{PID} x"}),
        "wrong_token": httpx.get(
            f"{url}/v1/model", headers={"Authorization": f"Bearer {WRONG_TOKEN}"}
        ),
    }
    yield sent


def test_log_is_json_with_request_ids_and_no_identifiers(
    server: Server, requests_sent: dict[str, httpx.Response]
) -> None:
    sent = requests_sent
    assert sent["ok"].status_code == 200 and sent["invalid"].status_code == 400
    assert sent["ok"].headers["x-request-id"] == "logcheck-7731.ok"
    assert sent["wrong_token"].status_code == 401 and sent["unmatched"].status_code == 404
    generated = sent["unsafe_id"].headers["x-request-id"]
    assert uuid.UUID(generated) and PID not in generated
    entries = _entries(server)
    access = {e["request_id"]: e for e in entries if e["logger"] == "ketapredict.access"}
    assert access["logcheck-7731.ok"]["route"] == "/v1/predict"
    assert access["logcheck-7731.ok"]["status"] == 200
    assert access["logcheck-7731.invalid"]["status"] == 400
    assert access[generated]["route"] == "/v1/model"
    assert access[sent["unmatched"].headers["x-request-id"]]["route"] == "(unmatched)"
    assert {"method", "duration_ms"} <= set(access["logcheck-7731.ok"])
    assert not any("bentoml.access" == e["logger"] for e in entries)
    _assert_clean(server)


def test_oversized_bodies_get_413_before_authentication(server: Server) -> None:
    big = json.dumps({"patients": [{"patient_id": PID, "pad": "x" * (3 * 1024 * 1024)}]})
    declared = httpx.post(f"{server.url}/v1/predict", content=big.encode())
    assert declared.status_code == 413 and declared.json()["error"] == "request body too large"

    def chunks() -> Iterator[bytes]:
        for _ in range(48):
            yield b"x" * 65536

    chunked = server.http.post(f"{server.url}/v1/predict", content=chunks())
    assert chunked.status_code == 413 and "x-request-id" in chunked.headers
    small = server.http.post(f"{server.url}/v1/predict", content=iter([b'{"patients": []}']))
    assert small.status_code == 400  # a small chunked body is replayed to the route intact
    access = [e for e in _entries(server) if e["logger"] == "ketapredict.access"]
    ids = {e["request_id"]: e["status"] for e in access}
    assert ids[chunked.headers["x-request-id"]] == 413
    assert ids[declared.headers["x-request-id"]] == 413
    _assert_clean(server)
