"""The audit store: one row per patient per prediction, on SQLite or PostgreSQL.

Why this shape: the service must not answer a prediction it has not recorded (DESIGN.md
decision 8), so `record` commits the whole batch in one short transaction and raises
`AuditUnavailable` when it cannot; the route turns that into a 503 and returns nothing.
One Engine per process is shared by all threads; SQLite runs in WAL mode with a busy timeout
and `BEGIN IMMEDIATE`, so concurrent writers queue instead of failing, and PostgreSQL gets a
short connect timeout so `/readyz` answers quickly when the server is gone.

Readiness (`healthy`) must not say "ready" while writes fail: a database that still answers
reads can refuse writes. The probe takes SQLite's write lock (its BEGIN IMMEDIATE) and asks
PostgreSQL whether this session may insert (not a standby, not read-only, INSERT granted); and
after any failed write it also inserts a row in a transaction it rolls back, so the store is
ready again only when a write works. Its lock waits are short (`PROBE_WAIT_S`).

The patient id never reaches the database: it is turned into its HMAC before the INSERT is
built, and the engine hides bound parameters from its logs and exception messages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from features.schema import ID_FIELD
from serving.audit.keys import (
    check_key,
    input_hash,
    input_hashes,
    key_id,
    output_summary,
    patient_hashes,
)
from serving.audit.migrate import upgrade
from serving.audit.table import audit_event

log = logging.getLogger(__name__)

OUTCOME_ANSWERED = "answered"
SQLITE_BUSY_TIMEOUT_S = 10.0
#: Seconds between background WAL checkpoints of a SQLite audit store.
CHECKPOINT_EVERY_S = 1.0
PG_CONNECT_TIMEOUT_S = 2
#: The readiness probe waits at most this long for a lock (a probe must answer in seconds).
PROBE_WAIT_S = 2.0
_PROBE = "readiness-probe"
_PG_WRITABLE = sa.text(
    "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off' "
    "AND has_table_privilege('audit_event', 'INSERT')"
)
#: Labels are printable ASCII without spaces: enough for route names, JWT `iss` URLs and
#: digests, and it keeps free text (where identifiers hide) out of the table.
_LABEL = re.compile(r"[\x21-\x7e]+")
#: A JWT's shape (header and claims both base64url JSON): a token pasted instead of a label.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]*\.")
#: `caller` is `Caller.label` from serving/auth.py: "token:<digest>" or "cds:<issuer URL>".
_LIMITS = {"caller": 255, "route": 64, "model_name": 128, "model_version": 64, "request_id": 128}


@dataclass(frozen=True)
class Prepared:
    """Audit rows ready to write: what they share, and per patient its pseudonym, input hash
    and output summary (JSON text). Holds no patient id or record, so it may cross processes.
    """

    common: Mapping[str, Any]
    patient_keys: Sequence[str]
    input_sha256: Sequence[str]
    outputs: Sequence[str]

    def __len__(self) -> int:
        return len(self.patient_keys)

    def parameters(self, dialect: sa.Dialect) -> list[tuple[Any, ...]]:
        """One tuple per row in `_COLUMNS` order, the shared values converted once."""
        shared = tuple(_bound(name, self.common[name], dialect) for name in _SHARED)
        rows = zip(self.patient_keys, self.input_sha256, self.outputs, strict=True)
        return [(*shared, k, h, o) for k, h, o in rows]


#: Columns of the bulk INSERT: those every row of a `Prepared` shares, then its own.
_SHARED = (
    "occurred_at",
    "request_id",
    "caller",
    "route",
    "model_name",
    "model_version",
    "key_id",
    "outcome",
)
_COLUMNS = (*_SHARED, "patient_key", "input_sha256", "output")


def _bound(name: str, value: Any, dialect: sa.Dialect) -> Any:
    """A value as the driver takes it for this column (SQLite: times as naive-UTC text)."""
    process = audit_event.c[name].type.dialect_impl(dialect).bind_processor(dialect)
    return process(value) if process else value


def _insert_sql(dialect: sa.Dialect) -> str:
    """The driver-level INSERT of one audit row, for `executemany`.

    Not `audit_event.insert()`: SQLAlchemy's per-row parameter handling cost as much as the
    insert itself on a million rows. The output summary arrives as JSON text
    (`keys.output_summary_texts`); SQLite keeps JSON as text (its CAST to JSON would mangle
    it), other databases cast the text to the column's type (JSONB on PostgreSQL).
    """
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    output = mark
    if dialect.name != "sqlite":
        output = f"CAST({mark} AS {audit_event.c.output.type.compile(dialect=dialect)})"
    values = ", ".join([mark] * (len(_COLUMNS) - 1) + [output])
    return f"INSERT INTO {audit_event.name} ({', '.join(_COLUMNS)}) VALUES ({values})"


class AuditUnavailable(RuntimeError):
    """The audit store cannot be reached or written: no prediction may be returned."""


@dataclass(frozen=True)
class AuditRow:
    """One stored audit record, as read back (occurred_at is timezone-aware UTC)."""

    id: int
    occurred_at: datetime
    request_id: str
    caller: str
    route: str
    model_name: str
    model_version: str
    key_id: str
    patient_key: str
    input_sha256: str
    output: dict[str, Any]
    outcome: str


def default_url(root: Path) -> str:
    """The embedded default, an absolute SQLite path so the working directory cannot move it."""
    return f"sqlite:///{(root / 'mlruns' / 'audit.db').resolve()}"


def _label(name: str, value: object) -> str:
    limit = _LIMITS[name]
    if not isinstance(value, str) or len(value) > limit or not _LABEL.fullmatch(value):
        raise ValueError(f"{name} must be 1-{limit} printable ASCII characters without spaces")
    if name == "caller" and _JWT.search(value):
        raise ValueError("caller looks like a token; pass caller_label(token) or the JWT iss")
    return value


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    """Let SQLAlchemy own BEGIN (pysqlite's own handling skips DDL) and turn WAL on."""
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    # no checkpoint inside a request's commit (a ~200 ms stall every ~500 predictions was
    # measured): `WalCheckpointer` does it in the background
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _sqlite_on_begin(conn: sa.Connection) -> None:
    """Take the write lock up front, so two writers queue on the busy timeout, never deadlock."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | URL) -> Engine:
    """One engine per store, tuned per backend; parameters hidden from logs and errors."""
    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise ValueError("the audit store needs a SQLite file, not an in-memory database")
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, hide_parameters=True, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S}
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    return sa.create_engine(
        url, hide_parameters=True, pool_pre_ping=True, connect_args=connect_args
    )


#: A SQLite write of at least this many rows gets BULK_CACHE_KIB of page cache while it runs.
BULK_ROWS = 10_000
BULK_CACHE_KIB = 65_536


@contextlib.contextmanager
def _page_cache_for(conn: sa.Connection, rows: int) -> Iterator[None]:
    """A large page cache for a bulk SQLite write, the default again after it.

    Every row adds a random key to the patient-key index; with SQLite's default 2 MB cache,
    a batch job's inserts into a table of a million rows spent half their time re-reading
    index pages. The service's small writes keep the default, so its memory does not grow.
    """
    if conn.dialect.name != "sqlite" or rows < BULK_ROWS:
        yield
        return
    raw = conn.connection.dbapi_connection
    default = raw.execute("PRAGMA cache_size").fetchone()[0]
    raw.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
    try:
        yield
    finally:
        raw.execute(f"PRAGMA cache_size={int(default)}")


class WalCheckpointer:
    """Copies SQLite's write-ahead log into the database every `every_s` seconds, off the
    request path.

    With automatic checkpoints, the commit that crosses the WAL's size threshold copies the log
    itself, and that request stalls. PASSIVE checkpoints never wait for or block writers; the
    thread has its own connection (sqlite3 releases the GIL during I/O). Durability is
    unchanged: a commit is durable once its WAL frames are synced, checkpointed or not.
    """

    def __init__(self, database: str, every_s: float = CHECKPOINT_EVERY_S) -> None:
        self.database, self.every_s = database, every_s
        self.checkpoints = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-wal-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        uri = f"{Path(self.database).resolve().as_uri().replace('file://', 'file:', 1)}?mode=rw"
        while not self._stop.wait(self.every_s):
            if not Path(self.database).is_file():
                continue  # never create a database here; the store reports a missing one
            try:
                with contextlib.closing(
                    sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)
                ) as conn:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.checkpoints += 1
            except sqlite3.Error as exc:  # the next round tries again; writes are unaffected
                log.warning("audit WAL checkpoint failed (%s)", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + SQLITE_BUSY_TIMEOUT_S)


@contextlib.contextmanager
def _short_waits(conn: sa.Connection) -> Iterator[None]:
    """Lock waits of at most PROBE_WAIT_S inside the block, on SQLite and PostgreSQL.

    SQLite: the busy timeout is a connection setting, set on the driver connection before the
    transaction begins (its BEGIN IMMEDIATE already waits) and restored after. PostgreSQL:
    `SET LOCAL`, which ends with the transaction.
    """
    ms = int(PROBE_WAIT_S * 1000)
    if conn.dialect.name == "sqlite":
        raw = conn.connection.dbapi_connection
        raw.execute(f"PRAGMA busy_timeout={ms}")
        try:
            yield
        finally:
            try:
                raw.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            except Exception:  # a dead driver connection: never hand it out again
                conn.invalidate()
        return
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {ms}")
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {ms}")
    yield


class AuditStore:
    """Writes and reads audit records; brings its schema to the latest migration on open.

    Args:
        url: SQLAlchemy URL (`sqlite:///abs/path/audit.db` or `postgresql+psycopg://...`).
            For a PostgreSQL schema other than `public`, add
            `?options=-csearch_path%3D<schema>` (the schema must exist).
        key: the HMAC key for patient ids (see `serving.audit.keys`).

    Raises:
        AuditUnavailable: the database cannot be reached or migrated.
    """

    def __init__(self, url: str | URL, *, key: bytes) -> None:
        self._key = check_key(key)
        self.key_id = key_id(key)
        self.engine = make_engine(url)
        self._write_failed = False  # set by a failed `record`, cleared by any success
        try:
            upgrade(self.engine)
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise AuditUnavailable(f"audit store unavailable ({type(exc).__name__})") from exc
        self.checkpointer = (
            WalCheckpointer(str(self.engine.url.database))
            if self.engine.dialect.name == "sqlite"
            else None
        )

    def record(self, **prepare_args: Any) -> int:
        """Write one row per (patient id, input record, result) in ONE transaction.

        Takes `prepare`'s arguments; `result` may be a full `explain()` item: `output_summary`
        keeps only the whitelist. Returns the number of rows written, after the commit.
        """
        rows = self.prepare(**prepare_args)
        return self.write(rows, request_id=prepare_args.get("request_id", ""))

    def _common(
        self,
        *,
        caller: str,
        route: str,
        model_name: str,
        model_version: str,
        request_id: str,
        occurred_at: datetime | None,
    ) -> dict[str, Any]:
        return {
            "occurred_at": _aware(occurred_at or datetime.now(UTC), "occurred_at"),
            "request_id": _label("request_id", request_id),
            "caller": _label("caller", caller),
            "route": _label("route", route),
            "model_name": _label("model_name", model_name),
            "model_version": _label("model_version", model_version or "unversioned"),
            "key_id": self.key_id,
            "outcome": OUTCOME_ANSWERED,
        }

    def prepare(
        self,
        *,
        caller: str,
        route: str,
        model_name: str,
        model_version: str,
        request_id: str,
        patients: Iterable[tuple[str, Mapping[str, Any], Mapping[str, Any]]],
        occurred_at: datetime | None = None,
    ) -> Prepared:
        """The rows `record` would write, hashed and summarised, without touching the database.

        Pure given the key, so rows can be prepared wherever the patients are and written by
        one process; the patient ids and records go no further than this call.
        """
        common = self._common(
            caller=caller,
            route=route,
            model_name=model_name,
            model_version=model_version,
            request_id=request_id,
            occurred_at=occurred_at,
        )
        ids, hashes, outputs = [], [], []
        for i, (patient_id, record, result) in enumerate(patients):
            try:
                hashes.append(input_hash(record))
                outputs.append(json.dumps(output_summary(result)))
            except (KeyError, TypeError, ValueError) as exc:  # messages name no value
                raise ValueError(f"patient {i}: cannot audit ({type(exc).__name__})") from None
            ids.append(patient_id)
        return Prepared(common, patient_hashes(ids, self._key), hashes, outputs)

    def prepare_table(
        self,
        *,
        caller: str,
        route: str,
        model_name: str,
        model_version: str,
        request_id: str,
        frame: pd.DataFrame,
        outputs: Sequence[str],
        occurred_at: datetime | None = None,
    ) -> Prepared:
        """`prepare` for a validated frame, its rows' inputs hashed column by column.

        `outputs` are the patients' summaries as `keys.output_summary_texts` writes them. The
        rows equal `prepare`'s for the frame's records (`features.records.to_records`).
        """
        if len(outputs) != len(frame):
            raise ValueError(f"{len(outputs)} output summaries for {len(frame)} patients")
        common = self._common(
            caller=caller,
            route=route,
            model_name=model_name,
            model_version=model_version,
            request_id=request_id,
            occurred_at=occurred_at,
        )
        ids = frame[ID_FIELD].astype(str).tolist()
        return Prepared(common, patient_hashes(ids, self._key), input_hashes(frame), outputs)

    def write(self, prepared: Prepared | Sequence[Prepared], *, request_id: str = "") -> int:
        """Commit prepared rows in one transaction; AuditUnavailable when the store cannot.

        Several `Prepared` (requests scored together, each with its own caller and request
        id) go in the same transaction: all are recorded, or none.
        """
        batches = [prepared] if isinstance(prepared, Prepared) else list(prepared)
        count = sum(len(b) for b in batches)
        if not count:
            return 0
        try:
            with self.engine.begin() as conn, _page_cache_for(conn, count):
                insert = _insert_sql(conn.dialect)
                for batch in batches:
                    if len(batch):
                        conn.exec_driver_sql(insert, batch.parameters(conn.dialect))
        except SQLAlchemyError as exc:
            self._write_failed = True
            log.error("audit write failed (%s); request %s", type(exc).__name__, request_id)
            raise AuditUnavailable(f"audit write failed ({type(exc).__name__})") from exc
        self._write_failed = False
        return count

    def rows(
        self,
        start: datetime,
        end: datetime,
        *,
        patient_keys: Collection[str] | None = None,
    ) -> list[AuditRow]:
        """Records with start <= occurred_at < end, oldest first; optionally for some keys."""
        t = audit_event
        query = sa.select(t).where(
            t.c.occurred_at >= _aware(start, "start"), t.c.occurred_at < _aware(end, "end")
        )
        if patient_keys is not None:
            query = query.where(t.c.patient_key.in_(list(patient_keys)))
        query = query.order_by(t.c.occurred_at, t.c.id)
        try:
            with self.engine.connect() as conn:
                result = conn.execute(query).mappings().all()
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"audit read failed ({type(exc).__name__})") from exc
        return [AuditRow(**dict(r)) for r in result]

    def healthy(self) -> bool:
        """True when the audit table answers and would take a row: the service is ready only then.

        After a failed write the probe inserts a row and rolls it back (never committed).
        """
        try:
            with self.engine.connect() as conn:
                with _short_waits(conn):
                    conn.execute(sa.select(audit_event.c.id).limit(0)).all()
                    postgres = conn.dialect.name == "postgresql"
                    if postgres and not conn.execute(_PG_WRITABLE).scalar():
                        log.warning("audit store unhealthy (read-only or no INSERT privilege)")
                        return False
                    if self._write_failed:
                        conn.execute(audit_event.insert(), self._probe_row())
                    conn.rollback()
        except SQLAlchemyError as exc:
            log.warning("audit store unhealthy (%s)", type(exc).__name__)
            return False
        self._write_failed = False
        return True

    def _probe_row(self) -> dict[str, Any]:
        return {
            "occurred_at": datetime.now(UTC),
            "request_id": _PROBE,
            "caller": _PROBE,
            "route": _PROBE,
            "model_name": _PROBE,
            "model_version": _PROBE,
            "key_id": self.key_id,
            "patient_key": "0" * 64,
            "input_sha256": "0" * 64,
            "output": {},
            "outcome": "probe",
        }

    def close(self) -> None:
        """Release pooled connections (and SQLite file handles)."""
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.engine.dispose()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
