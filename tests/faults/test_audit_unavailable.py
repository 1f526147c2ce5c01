"""With the audit store unavailable the service answers 503, never an unrecorded prediction.

Over HTTP, against a real server: while the store cannot take a row, `/v1/predict` and the FHIR
`RiskAssessment/$predict` route answer 503 with no prediction in the body, and `/readyz` says
not ready; once the store is back, readiness returns by itself and the same routes answer 200
with their rows written. No row exists for a refused request.

- SQLite: another process holds the write lock (`BEGIN IMMEDIATE`), as a stuck writer or a
  backup tool would; the service's writes wait out their busy timeout (10 s) and fail.
- PostgreSQL (a database of the test's own): first the database turns read-only (as after a
  failover to a standby), then it refuses connections altogether.
"""

from __future__ import annotations

import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Workspace
from tests.faults.conftest import (
    AUTH,
    FHIR,
    PgDatabase,
    audit_rows,
    fhir_bundle,
    halt,
    hashed,
    launch,
    patient,
    sqlite_url,
    wait_status,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


class Calls:
    """Predictions through both routes, each with its own request and patient id."""

    def __init__(self, url: str, workspace: Workspace) -> None:
        self.url, self.workspace = url, workspace
        self.run = uuid.uuid4().hex[:8]
        self.answered: list[tuple[str, str]] = []
        self.refused: list[tuple[str, str]] = []

    def both(self, label: str) -> list[tuple[httpx.Response, str]]:
        """One /v1/predict and one FHIR call, concurrently: (answer, patient id) of each."""
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(self._call, [f"{label}-rest", f"{label}-fhir"]))

    def _call(self, label: str) -> tuple[httpx.Response, str]:
        rid, pid = f"audit-{self.run}-{label}", f"AUDIT-{self.run}-{label}"
        record = patient(self.workspace, pid)
        headers = {**AUTH, "x-request-id": rid}
        if label.endswith("fhir"):
            url, body = f"{self.url}{FHIR}", fhir_bundle(record)
        else:
            url, body = f"{self.url}/v1/predict", {"patients": [record]}
        r = httpx.post(url, json=body, headers=headers, timeout=90)
        (self.answered if r.status_code == 200 else self.refused).append((rid, pid))
        return r, pid


def _assert_refused(answers: list[tuple[httpx.Response, str]]) -> None:
    (rest, _), (fhir, _) = answers
    for r, pid in answers:
        assert r.status_code == 503, r.text
        for leak in ("probability", "predictions", "RiskAssessment", pid):
            assert leak not in r.text, f"503 body holds {leak!r}: {r.text}"
    assert set(rest.json()) == {"error"}
    outcome = fhir.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient"
    assert "audit store unavailable" in outcome["issue"][0]["diagnostics"]
    assert fhir.headers["retry-after"]


def _assert_answered(answers: list[tuple[httpx.Response, str]]) -> None:
    (rest, _), (fhir, _) = answers
    assert rest.status_code == 200, rest.text
    assert 0 <= rest.json()["predictions"][0]["probability"] <= 1
    assert fhir.status_code == 200, fhir.text
    assert fhir.json()["resourceType"] == "RiskAssessment"


def _assert_rows(audit_url: str, calls: Calls) -> None:
    rows = audit_rows(audit_url)
    assert all(hashed(*a) in rows for a in calls.answered), (calls.answered, rows)
    refused = {rid for rid, _ in calls.refused}
    assert not refused & {rid for rid, _ in rows}, "a refused request left an audit row"


def test_sqlite_write_lock_held_gives_503_then_recovers(
    workspace: Workspace, tmp_path: Path
) -> None:
    audit = sqlite_url(tmp_path)
    log = tmp_path / "serve-audit-sqlite.log"
    server = launch(workspace.path, tmp_path / "bentoml", log, audit_url=audit)
    calls = Calls(server.url, workspace)
    try:
        _assert_answered(calls.both("before"))
        holder = sqlite3.connect(audit.removeprefix("sqlite:///"), timeout=60, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            _assert_refused(calls.both("locked"))
            assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 503
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        wait_status(f"{server.url}/readyz", 200)
        _assert_answered(calls.both("after"))
    finally:
        halt(server.process, log)
    assert len(calls.answered) == 4 and len(calls.refused) == 2
    _assert_rows(audit, calls)


def test_postgresql_read_only_then_refusing_connections_gives_503_then_recovers(
    workspace: Workspace, tmp_path: Path, pg_database: PgDatabase
) -> None:
    db = pg_database
    log = tmp_path / "serve-audit-postgresql.log"
    server = launch(workspace.path, tmp_path / "bentoml", log, audit_url=db.url)
    calls = Calls(server.url, workspace)
    ready = f"{server.url}/readyz"
    try:
        _assert_answered(calls.both("before"))

        db.sql(f'ALTER DATABASE "{db.name}" SET default_transaction_read_only = on')
        db.terminate_sessions()  # the setting applies to new sessions, as after a failover
        wait_status(ready, 503)
        _assert_refused(calls.both("read-only"))
        db.sql(f'ALTER DATABASE "{db.name}" RESET default_transaction_read_only')
        db.terminate_sessions()
        wait_status(ready, 200)
        _assert_answered(calls.both("writable"))

        db.sql(f'ALTER DATABASE "{db.name}" ALLOW_CONNECTIONS false')
        db.terminate_sessions()
        wait_status(ready, 503)
        _assert_refused(calls.both("no-connections"))
        db.sql(f'ALTER DATABASE "{db.name}" ALLOW_CONNECTIONS true')
        wait_status(ready, 200)
        _assert_answered(calls.both("reconnected"))
    finally:
        halt(server.process, log)
    assert len(calls.answered) == 6 and len(calls.refused) == 4
    _assert_rows(db.url, calls)
