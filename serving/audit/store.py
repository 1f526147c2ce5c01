"""The audit store: one row per patient per prediction, on SQLite or PostgreSQL.

Why this shape: the service must not answer a prediction it has not recorded (DESIGN.md
decision 8), so `record` commits the whole batch in one short transaction and raises
`AuditUnavailable` when it cannot; the route turns that into a 503 and returns nothing.
One Engine per process is shared by all threads; SQLite runs in WAL mode with a busy timeout
and `BEGIN IMMEDIATE`, so concurrent writers queue instead of failing, and PostgreSQL gets a
short connect timeout so `/readyz` answers quickly when the server is gone.

The patient id never reaches the database: it is turned into its HMAC before the INSERT is
built, and the engine hides bound parameters from its logs and exception messages.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from serving.audit.keys import check_key, input_hash, key_id, output_summary, patient_hash
from serving.audit.migrate import upgrade
from serving.audit.table import audit_event

log = logging.getLogger(__name__)

OUTCOME_ANSWERED = "answered"
SQLITE_BUSY_TIMEOUT_S = 10.0
PG_CONNECT_TIMEOUT_S = 2
#: Labels are printable ASCII without spaces: enough for route names, JWT `iss` URLs and
#: digests, and it keeps free text (where identifiers hide) out of the table.
_LABEL = re.compile(r"[\x21-\x7e]+")
#: A JWT's shape (header and claims both base64url JSON): a token pasted instead of a label.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]*\.")
#: `caller` is `Caller.label` from serving/auth.py: "token:<digest>" or "cds:<issuer URL>".
_LIMITS = {"caller": 255, "route": 64, "model_name": 128, "model_version": 64, "request_id": 128}


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
        try:
            upgrade(self.engine)
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise AuditUnavailable(f"audit store unavailable ({type(exc).__name__})") from exc

    def record(
        self,
        *,
        caller: str,
        route: str,
        model_name: str,
        model_version: str,
        request_id: str,
        patients: Iterable[tuple[str, Mapping[str, Any], Mapping[str, Any]]],
        occurred_at: datetime | None = None,
    ) -> int:
        """Write one row per (patient id, input record, result) in ONE transaction.

        `result` may be a full `explain()` item: `output_summary` keeps only the whitelist.
        Returns the number of rows written, after the commit.
        """
        common = {
            "occurred_at": _aware(occurred_at or datetime.now(UTC), "occurred_at"),
            "request_id": _label("request_id", request_id),
            "caller": _label("caller", caller),
            "route": _label("route", route),
            "model_name": _label("model_name", model_name),
            "model_version": _label("model_version", model_version or "unversioned"),
            "key_id": self.key_id,
            "outcome": OUTCOME_ANSWERED,
        }
        rows = []
        for i, (patient_id, record, result) in enumerate(patients):
            try:
                rows.append(
                    {
                        **common,
                        "patient_key": patient_hash(patient_id, self._key),
                        "input_sha256": input_hash(record),
                        "output": output_summary(result),
                    }
                )
            except (KeyError, TypeError, ValueError) as exc:  # messages name no value
                raise ValueError(f"patient {i}: cannot audit ({type(exc).__name__})") from None
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(audit_event.insert(), rows)
        except SQLAlchemyError as exc:
            log.error("audit write failed (%s); request %s", type(exc).__name__, request_id)
            raise AuditUnavailable(f"audit write failed ({type(exc).__name__})") from exc
        return len(rows)

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
        """True when the audit table answers a query: the service is ready only then."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.select(audit_event.c.id).limit(0)).all()
        except SQLAlchemyError as exc:
            log.warning("audit store unhealthy (%s)", type(exc).__name__)
            return False
        return True

    def close(self) -> None:
        """Release pooled connections (and SQLite file handles)."""
        self.engine.dispose()

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
