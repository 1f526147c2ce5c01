"""The audit store on a real PostgreSQL server, in a schema of its own that is dropped after.

The server comes from `KETAPREDICT_TEST_POSTGRES_URL` (default: the local `test` database).
When it cannot be reached within 2 s, every test here skips and says why; only the probe's
own test runs, against a port that is certainly closed.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy.engine import URL, make_url

from serving.audit import AuditStore, current, downgrade, patient_hash, upgrade
from serving.audit_export import export
from serving.cds_hooks import FeedbackStore

PG_URL = os.environ.get(
    "KETAPREDICT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
KEY = b"p" * 32
SECRET_ID = "PG-PT-9931-DISTINCT"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def unreachable_reason(url: str | URL, timeout: float = 2.0) -> str | None:
    """None when the server answers `SELECT 1` within `timeout`, else why it did not."""
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": max(1, round(timeout))})
    except Exception as exc:  # no driver, bad URL: a skip, not a failure
        return f"PostgreSQL unusable at {shown}: {type(exc).__name__}"
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any connection failure means "skip"
        return f"PostgreSQL unreachable at {shown} ({type(exc).__name__})"
    finally:
        engine.dispose()
    return None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block exits


def test_probe_reports_a_closed_port() -> None:
    url = f"postgresql+psycopg://postgres:hunter2@127.0.0.1:{closed_port()}/test"
    reason = unreachable_reason(url)
    assert reason is not None and "unreachable" in reason
    assert "hunter2" not in reason


@pytest.fixture(scope="module")
def pg_url() -> Iterator[URL]:
    """A URL whose search_path is a fresh schema, so the shared `test` database stays clean."""
    reason = unreachable_reason(PG_URL)
    if reason is not None:
        pytest.skip(reason)
    schema = f"audit_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        url = make_url(PG_URL)
        yield url.update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(pg_url: URL) -> Iterator[AuditStore]:
    with AuditStore(pg_url, key=KEY) as s:
        yield s
        with s.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM audit_event"))


def write(store: AuditStore, pid: str = SECRET_ID, at: datetime = T0) -> int:
    result: dict[str, Any] = {
        "patient_id": pid,
        "probability": 0.61,
        "probability_interval": [0.5, 0.7],
        "risk_band": "high",
        "eligibility": {"status": "eligible", "reasons": []},
        "warnings": [{"code": "missing_input", "fields": ["ggt"], "message": f"{pid} no GGT"}],
    }
    return store.record(
        caller="token:0123abcd",
        route="cds-hooks:patient-view",
        model_name="ketamine-aud-response",
        model_version="7",
        request_id=f"req-{uuid.uuid4().hex[:8]}",
        patients=[(pid, {"patient_id": pid, "age": 52}, result)],
        occurred_at=at,
    )


def test_tables_live_in_the_test_schema(store: AuditStore, pg_url: URL) -> None:
    schema = pg_url.query["options"].split("=", 1)[1]
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT current_schema()")).scalar() == schema
    assert {"audit_event", "alembic_version"} <= set(sa.inspect(store.engine).get_table_names())


def test_upgrade_downgrade_upgrade(store: AuditStore, pg_url: URL) -> None:
    upgrade(store.engine)  # idempotent at head
    AuditStore(pg_url, key=KEY).close()  # and on every open
    assert current(store.engine) == "0001"
    downgrade(store.engine, "base")
    assert current(store.engine) is None
    assert "audit_event" not in sa.inspect(store.engine).get_table_names()
    assert store.healthy() is False
    upgrade(store.engine)
    assert current(store.engine) == "0001" and store.healthy() is True


def test_round_trip_keeps_utc_and_json(store: AuditStore) -> None:
    write(store, at=T0.astimezone(UTC))
    rows = store.rows(T0, T0 + timedelta(seconds=1))
    assert len(rows) == 1
    assert rows[0].occurred_at == T0 and rows[0].occurred_at.utcoffset() == timedelta(0)
    assert rows[0].patient_key == patient_hash(SECRET_ID, KEY)
    assert rows[0].output["warnings"] == [{"code": "missing_input", "fields": ["ggt"]}]


def test_no_identifier_in_any_column(store: AuditStore) -> None:
    write(store)
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT *, output::text AS output_text FROM audit_event"))
        values = [str(v) for row in rows for v in row]
    assert values and all(SECRET_ID not in v for v in values)


def test_eight_threads_fifty_records_each(store: AuditStore) -> None:
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            for i in range(50):
                write(store, pid=f"T{t}-{i}")
        except BaseException as exc:  # collected, re-checked below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM audit_event")).scalar() == 400
    assert len({r.patient_key for r in store.rows(T0, T0 + timedelta(1))}) == 400


def test_export_from_postgres(store: AuditStore) -> None:
    write(store)
    bundle = export(store, T0, T0 + timedelta(days=1))
    assert len(Bundle.model_validate(bundle).entry) == 1
    assert SECRET_ID not in json.dumps(bundle)


def _open_feedback(url: str) -> str:
    try:
        FeedbackStore(url).engine.dispose()
    except Exception as exc:  # the test reports which error each replica saw
        return type(exc).__name__
    return "ok"


def test_replicas_starting_together_create_the_feedback_table_once(pg_url: URL) -> None:
    """Eight processes opening the CDS feedback store on a fresh schema at once all start
    (without the advisory lock, 1-3 of 8 failed with DuplicateTable)."""
    url = pg_url.render_as_string(hide_password=False)
    engine = sa.create_engine(pg_url)
    try:
        for _ in range(3):
            with engine.begin() as conn:
                conn.execute(sa.text("DROP TABLE IF EXISTS cds_feedback"))
            with mp.get_context("fork").Pool(8) as pool:
                assert pool.map(_open_feedback, [url] * 8) == ["ok"] * 8
    finally:
        engine.dispose()
