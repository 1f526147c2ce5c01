"""The audit store on SQLite: pseudonyms, one-transaction writes, migrations, FHIR export.

Everything runs on real SQLite files under tmp_path; PostgreSQL has its own tests in tests/db.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from features.records import to_records
from features.schema import INPUT_FIELDS
from features.simulate import simulate_cohort
from features.validation import validate_table
from serving.audit import (
    AuditStore,
    AuditUnavailable,
    audit_event,
    caller_label,
    current,
    downgrade,
    input_hash,
    key_from_env,
    key_id,
    output_summary,
    patient_hash,
    upgrade,
)
from serving.audit.engine import BULK_CACHE_KIB, BULK_ROWS
from serving.audit.keys import input_hashes, output_summary_texts, patient_hashes
from serving.audit.rows import Prepared
from serving.audit_export import (
    PATIENT_KEY_SYSTEM,
    audit_events,
    export,
    parse_instant,
    write_export,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
SECRET_ID = "PT-ZQX-7741-UNIQUE"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def result(patient_id: str = SECRET_ID, p: float = 0.42) -> dict[str, Any]:
    """An `explain()` item whose free text quotes the id and input values, as real ones may."""
    return {
        "patient_id": patient_id,
        "probability": p,
        "probability_interval": [p - 0.1, p + 0.1],
        "risk_band": "moderate",
        "logit": -0.3,
        "contributions": [{"feature": "age", "value": 77, "shap": 0.1}],
        "eligibility": {
            "status": "caution",
            "reasons": [{"rule": "hypertension", "message": f"{patient_id}: BP 171/99"}],
        },
        "applicability": {"typical": True},
        "warnings": [{"code": "outside_training_data", "fields": ["age"], "message": "age 77"}],
        "model": {"name": "m", "version": "3"},
    }


def record_for(patient_id: str = SECRET_ID) -> dict[str, Any]:
    return {"patient_id": patient_id, "age": 77, "sex": "female", "audit_total": 31}


def write(store: AuditStore, n: int = 1, *, at: datetime = T0, pid: str = SECRET_ID) -> int:
    return store.record(
        caller="iss:https://ehr.example.org",
        route="/v1/predict",
        model_name="ketamine-aud-response",
        model_version="3",
        request_id="req-1",
        patients=[(f"{pid}-{i}" if n > 1 else pid, record_for(pid), result(pid)) for i in range(n)],
        occurred_at=at,
    )


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", key=KEY) as s:
        yield s


# --- pseudonyms and hashes ---------------------------------------------------------------


def test_patient_hash_is_keyed_and_stable() -> None:
    h = patient_hash(SECRET_ID, KEY)
    assert h == patient_hash(SECRET_ID, KEY)
    assert len(h) == 64 and int(h, 16) >= 0
    assert h != patient_hash(SECRET_ID, OTHER_KEY)
    assert h != hashlib.sha256(SECRET_ID.encode()).hexdigest()
    assert h != patient_hash(SECRET_ID + "x", KEY)


def test_short_or_missing_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        patient_hash(SECRET_ID, b"short")
    with pytest.raises(ValueError, match="not set"):
        key_from_env({})
    assert key_from_env({"KETAPREDICT_AUDIT_KEY": "a" * 32}) == b"a" * 32
    assert key_id(KEY) != key_id(OTHER_KEY) and len(key_id(KEY)) == 16


def test_input_hash_is_canonical_and_ignores_the_id() -> None:
    a = {"age": 40, "sex": "male", "patient_id": "A"}
    b = {"patient_id": "B", "sex": "male", "age": 40}
    assert input_hash(a) == input_hash(b)
    assert input_hash(a) == hashlib.sha256(b'{"age":40,"sex":"male"}').hexdigest()
    assert input_hash(a) != input_hash({**a, "age": 41})
    with pytest.raises(ValueError):
        input_hash({"age": float("nan")})


def test_output_summary_keeps_only_the_whitelist() -> None:
    s = output_summary(result())
    assert set(s) == {
        "probability",
        "probability_interval",
        "risk_band",
        "eligibility",
        "eligibility_rules",
        "warnings",
    }
    assert s["eligibility"] == "caution" and s["eligibility_rules"] == ["hypertension"]
    assert s["warnings"] == [{"code": "outside_training_data", "fields": ["age"]}]
    text = json.dumps(s)
    assert SECRET_ID not in text and "171" not in text and "77" not in text
    assert output_summary(s) == s  # idempotent: a summary may be passed again
    with pytest.raises(ValueError):
        output_summary(result(p=float("nan")))


def test_caller_label_hides_the_token() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
    label = caller_label(token)
    assert label.startswith("token:") and token not in label and "eyJ" not in label


def test_issuer_callers_are_accepted(store: AuditStore) -> None:
    """`cds:<issuer>` labels from serving/auth.py, even long or with 'eyJ' in a path."""
    for caller in ("cds:https://keyJar.example.org/" + "a" * 200, "token:0123abcd"):
        assert store.record(
            caller=caller, route="r", model_name="m", model_version="1", request_id="q",
            patients=[(SECRET_ID, record_for(), result())],
        ) == 1  # fmt: skip


# --- the store ---------------------------------------------------------------------------


def test_record_and_read_back(store: AuditStore) -> None:
    assert write(store, 3) == 3
    rows = store.rows(T0, T0 + timedelta(seconds=1))
    assert len(rows) == 3
    row = rows[0]
    assert row.occurred_at == T0 and row.occurred_at.tzinfo is not None
    assert row.patient_key == patient_hash(f"{SECRET_ID}-0", KEY)
    assert row.input_sha256 == input_hash(record_for())
    assert row.output["probability"] == pytest.approx(0.42)
    assert (row.outcome, row.key_id, row.model_version) == ("answered", key_id(KEY), "3")
    assert store.rows(T0 + timedelta(seconds=1), T0 + timedelta(days=1)) == []  # half-open
    one = store.rows(T0, T0 + timedelta(1), patient_keys=[row.patient_key])
    assert [r.id for r in one] == [row.id]


def test_time_range_is_in_utc_whatever_the_offset(store: AuditStore) -> None:
    write(store, at=T0)
    paris = T0.astimezone(UTC).replace(tzinfo=None)
    later = datetime.fromisoformat(paris.isoformat() + "+01:00")  # = T0 - 1 h in UTC
    assert store.rows(later, later + timedelta(minutes=59)) == []
    assert len(store.rows(later, later + timedelta(minutes=61))) == 1
    with pytest.raises(ValueError, match="timezone-aware"):
        store.rows(paris, paris + timedelta(1))


def test_one_transaction_per_batch(store: AuditStore) -> None:
    patients = [("A1", record_for("A1"), result("A1")), ("A2", {}, {"bad": 1})]
    with pytest.raises(ValueError, match="patient 1") as err:
        store.record(
            caller="c", route="r", model_name="m", model_version="1", request_id="q",
            patients=patients,
        )  # fmt: skip
    assert "A2" not in str(err.value)
    assert store.rows(T0 - timedelta(days=3650), T0 + timedelta(days=3650)) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("caller", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"),
        ("caller", "iss:x/eyJhbGciOiJFUzI1NiJ9.eyJ.x"),
        ("caller", "Bearer abc"),
        ("route", ""),
        ("request_id", "x" * 129),
        ("caller", "cds:" + "x" * 252),
    ],
)
def test_labels_refuse_tokens_and_free_text(store: AuditStore, field: str, value: str) -> None:
    args = {"caller": "c", "route": "r", "model_name": "m", "model_version": "1"}
    args["request_id"] = "q"
    args[field] = value
    with pytest.raises(ValueError, match=field) as err:
        store.record(**args, patients=[(SECRET_ID, record_for(), result())])
    assert value not in str(err.value) or not value


def test_no_identifier_anywhere_in_the_table_or_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with AuditStore(f"sqlite:///{path}", key=KEY) as s:
        write(s, 5)
        with s.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM audit_event")).all()
    assert len(rows) == 5
    for row in rows:
        for value in row:
            assert SECRET_ID not in str(value)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("audit.db"))
    assert SECRET_ID.encode() not in raw
    assert b"audit_event" in raw  # the scan did read the database file


def test_no_identifier_in_logs_or_errors(store: AuditStore, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)
    try:
        write(store)
        with store.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE audit_event"))
        assert store.healthy() is False
        with pytest.raises(AuditUnavailable) as err:
            write(store)
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    assert "INSERT INTO audit_event" in caplog.text  # the engine's statements were captured
    text = "".join(traceback.format_exception(err.value)) + caplog.text
    assert SECRET_ID not in text and "171/99" not in text


def test_healthy_and_unreachable(store: AuditStore, tmp_path: Path) -> None:
    assert store.healthy() is True
    with pytest.raises(AuditUnavailable):
        AuditStore("postgresql+psycopg://nobody@127.0.0.1:1/none", key=KEY)
    with pytest.raises(ValueError, match="SQLite file"):
        AuditStore("sqlite://", key=KEY)


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
    rows = store.rows(T0, T0 + timedelta(seconds=1))
    assert len(rows) == 400 and len({r.id for r in rows}) == 400
    assert len({r.patient_key for r in rows}) == 400


# --- migrations ----------------------------------------------------------------------------


def test_upgrade_is_idempotent_and_reversible(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with AuditStore(url, key=KEY) as s:
        write(s)
    with AuditStore(url, key=KEY) as s:  # opening again upgrades again: a no-op
        upgrade(s.engine)
        assert current(s.engine) == "0001"
        assert len(s.rows(T0, T0 + timedelta(1))) == 1
        downgrade(s.engine, "base")
        assert current(s.engine) is None
        assert "audit_event" not in sa.inspect(s.engine).get_table_names()
        upgrade(s.engine)
        assert current(s.engine) == "0001" and s.healthy()


def test_migration_matches_the_query_table(store: AuditStore) -> None:
    inspector = sa.inspect(store.engine)
    columns = [c["name"] for c in inspector.get_columns("audit_event")]
    assert columns == [c.name for c in audit_event.columns]
    indexes = {i["name"] for i in inspector.get_indexes("audit_event")}
    assert indexes == {i.name for i in audit_event.indexes}


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    with AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", key=KEY):
        pass
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- FHIR export -------------------------------------------------------------------------


def test_export_round_trip(store: AuditStore, tmp_path: Path) -> None:
    write(store, 2, at=T0)
    write(store, 1, at=T0 + timedelta(days=2))
    bundle = export(store, T0, T0 + timedelta(days=1))
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection" and len(parsed.entry) == 2
    for entry, row in zip(bundle["entry"], store.rows(T0, T0 + timedelta(days=1)), strict=True):
        event = AuditEvent.model_validate(entry["resource"])
        assert (event.action, event.outcome, event.type.code) == ("E", "0", "rest")
        assert {c.code for c in event.subtype} == {"operation", "/v1/predict"}
        assert event.agent[0].who.identifier.value == "iss:https://ehr.example.org"
        assert event.source.observer.display == "ketapredict"
        patient = event.entity[0]
        assert patient.what.identifier.system == PATIENT_KEY_SYSTEM
        assert patient.what.identifier.value == row.patient_key
        details = {d.type: d.valueString for d in patient.detail}
        assert details["model_version"] == "3"
        assert json.loads(details["output"]) == row.output
        assert entry["fullUrl"] == f"urn:uuid:{event.id}"
    assert SECRET_ID not in json.dumps(bundle)
    assert (
        audit_events(store.rows(T0, T0 + timedelta(days=1)))[0]["id"]
        == (bundle["entry"][0]["resource"]["id"])
    )  # stable ids: exporting twice gives the same resources
    out = tmp_path / "out" / "audit.json"
    assert write_export(store, T0, T0 + timedelta(days=3), out) == 3
    assert len(json.loads(out.read_text())["entry"]) == 3
    assert "entry" not in export(store, T0 - timedelta(days=9), T0 - timedelta(days=8))


def test_export_refuses_an_invalid_event(store: AuditStore) -> None:
    write(store)
    row = store.rows(T0, T0 + timedelta(1))[0]
    bad = type(row)(**{**row.__dict__, "route": " leading-space"})  # not a FHIR code
    with pytest.raises(ValueError):
        audit_events([bad])


def test_parse_instant() -> None:
    assert parse_instant("2025-03-01") == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_instant("2025-03-01T13:00:00+01:00") == T0
    assert parse_instant("2025-03-01T12:00") == T0
    with pytest.raises(ValueError):
        parse_instant("yesterday")


def test_sqlite_checkpoints_run_in_the_background_not_in_a_commit(tmp_path: Path) -> None:
    """Automatic checkpoints are off on the store's connections (a commit never copies the
    log), and the background checkpointer copies it instead."""
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", key=KEY)
    checkpointer = store.checkpointer
    assert checkpointer is not None
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        checkpointer.every_s = 0.05
        for _ in range(20):
            write(store)
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpointer.checkpoints > 0
        raw = sqlite3.connect(tmp_path / "audit.db")
        busy, log_frames, copied = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        raw.close()
        assert busy == 0 and log_frames == copied
    finally:
        store.close()
    assert not checkpointer._thread.is_alive()


# ------------------------------------------------------------------ bulk path of the batch CLI


def _cohort_frame() -> Any:
    """A validated table with gaps in every kind of field, unicode text and whole numbers."""

    raw = simulate_cohort(400, seed=21)[[f.name for f in INPUT_FIELDS]]
    raw.loc[0, "site_id"] = 'Zürich-Ost "B"'  # non-ASCII and a quote: JSON escaping
    raw.loc[1, [f.name for f in INPUT_FIELDS if not f.required]] = None
    raw.loc[2, "bmi_kg_m2"] = 30.0  # a whole number in a number field hashes as 30.0
    return validate_table(raw).frame


def test_input_hashes_of_a_table_equal_the_per_record_hashes() -> None:

    frame = _cohort_frame()
    assert input_hashes(frame) == [input_hash(r) for r in to_records(frame)]


def test_patient_hashes_equal_patient_hash_and_refuse_empty_ids() -> None:
    ids = [SECRET_ID, "p-2", "ü-3"]
    assert patient_hashes(ids, KEY) == [patient_hash(i, KEY) for i in ids]
    with pytest.raises(ValueError, match="patient 1: a patient id must be a non-empty string"):
        patient_hashes(["p-1", ""], KEY)


def test_output_summary_texts_keep_the_whitelist_and_refuse_non_probabilities() -> None:
    items = [result(p=0.42), result("P-2", p=0.31)]
    p = np.array([0.42, 0.31])
    texts = output_summary_texts(
        p,
        (p - 0.1, p + 0.1),
        ["moderate", "moderate"],
        [i["eligibility"] for i in items],
        [i["warnings"] for i in items],
        alike=["same", "same"],
    )
    assert [json.loads(t) for t in texts] == [output_summary(i) for i in items]
    assert not any(SECRET_ID in t or "171/99" in t or "age 77" in t for t in texts)
    with pytest.raises(ValueError, match="patient 1: probability must be a probability"):
        output_summary_texts(
            np.array([0.4, np.nan]), (p, p), ["low"] * 2, [{}, {}], [[], []], ["a", "b"]
        )


def test_a_table_prepared_in_bulk_is_stored_as_its_records_would_be(tmp_path: Path) -> None:
    """prepare_table (column-wise hashes, JSON text outputs) and prepare (per record) store
    the same rows, read back through the JSON column."""
    frame = _cohort_frame().iloc[:50]
    n = len(frame)
    items = [result(str(pid), p=0.5) for pid in frame["patient_id"]]
    texts = output_summary_texts(
        np.full(n, 0.5),
        (np.full(n, 0.4), np.full(n, 0.6)),
        ["moderate"] * n,
        [i["eligibility"] for i in items],
        [i["warnings"] for i in items],
        alike=[0] * n,
    )
    args = {
        "caller": "cli",
        "route": "cli:predict",
        "model_name": "m",
        "model_version": "3",
        "occurred_at": T0,
    }
    stores = {}
    for how in ("bulk", "records"):
        store = AuditStore(f"sqlite:///{tmp_path / f'{how}.db'}", key=KEY)
        if how == "bulk":
            rows = store.prepare_table(**args, request_id="r", frame=frame, outputs=texts)
        else:
            patients = zip(frame["patient_id"], to_records(frame), items, strict=True)
            rows = store.prepare(**args, request_id="r", patients=patients)
        assert store.write(rows) == n
        stores[how] = [
            {k: v for k, v in vars(r).items() if k != "id"}
            for r in store.rows(T0, T0 + timedelta(seconds=1))
        ]
    assert stores["bulk"] == stores["records"]
    assert stores["bulk"][0]["output"]["eligibility_rules"] == ["hypertension"]


def test_a_bulk_write_gets_a_large_page_cache_and_gives_it_back(tmp_path: Path) -> None:
    """The cache is for the bulk write only: the service's pooled connection keeps the default
    (memory), and the rows all land."""
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", key=KEY)
    with store.engine.connect() as conn:
        default = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    seen: list[int] = []
    common = store.prepare(
        caller="cli", route="cli:predict", model_name="m", model_version="1", request_id="r",
        patients=[(SECRET_ID, record_for(), result())],
    ).common  # fmt: skip
    n = BULK_ROWS
    rows = Prepared(common, [f"{i:064x}" for i in range(n)], ["0" * 64] * n, ["{}"] * n)

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _cache(conn, cursor, statement, *_args) -> None:
        if statement.startswith("INSERT"):
            seen.append(conn.exec_driver_sql("PRAGMA cache_size").scalar())

    assert store.write(rows) == n
    assert seen == [-BULK_CACHE_KIB]
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA cache_size").scalar() == default
        assert conn.exec_driver_sql("SELECT count(*) FROM audit_event").scalar() == n


def test_missing_or_unknown_labels_are_refused_like_a_signature_would(store: AuditStore) -> None:
    labels = {"caller": "cli", "route": "r", "model_name": "m", "model_version": "1"}
    patients = [(SECRET_ID, record_for(), result())]
    with pytest.raises(TypeError, match=r"missing \['request_id'\], unknown \[\]"):
        store.record(patients=patients, **labels)
    with pytest.raises(TypeError, match=r"unknown \['callr'\]"):
        store.record(patients=patients, **labels, request_id="q", callr="x")
