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
ready again only when a write works. Its lock waits are short (`engine.PROBE_WAIT_S`).

The patient id never reaches the database: it is turned into its HMAC before the INSERT is
built, and the engine hides bound parameters from its logs and exception messages.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NotRequired, TypedDict, Unpack

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from features.schema import ID_FIELD
from serving.audit.engine import (
    WalCheckpointer,
    make_engine,
    page_cache_for,
    short_waits,
)
from serving.audit.keys import (
    check_key,
    input_hash,
    input_hashes,
    key_id,
    output_summary,
    patient_hashes,
)
from serving.audit.migrate import upgrade
from serving.audit.rows import Prepared, insert_sql
from serving.audit.table import audit_event

log = logging.getLogger(__name__)

OUTCOME_ANSWERED = "answered"
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


class Labels(TypedDict):
    """What every row of one write shares: who asked, on which route, with which model, under
    which request id, and when (now, unless given)."""

    caller: str
    route: str
    model_name: str
    model_version: str
    request_id: str
    occurred_at: NotRequired[datetime | None]


_LABEL_KEYS = frozenset(Labels.__annotations__)
#: Not `Labels.__required_keys__`: with postponed annotations 3.11 counts `occurred_at` in it.
_REQUIRED_LABELS = _LABEL_KEYS - {"occurred_at"}


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

    def record(
        self,
        *,
        patients: Iterable[tuple[str, Mapping[str, Any], Mapping[str, Any]]],
        **labels: Unpack[Labels],
    ) -> int:
        """Write one row per (patient id, input record, result) in ONE transaction.

        `result` may be a full `explain()` item: `output_summary` keeps only the whitelist.
        Returns the number of rows written, after the commit.
        """
        rows = self.prepare(patients=patients, **labels)
        return self.write(rows, request_id=labels["request_id"])

    def _common(self, labels: Labels) -> dict[str, Any]:
        missing, unknown = _REQUIRED_LABELS - labels.keys(), labels.keys() - _LABEL_KEYS
        if missing or unknown:  # what a signature would refuse, refused as a signature would
            raise TypeError(f"audit labels: missing {sorted(missing)}, unknown {sorted(unknown)}")
        occurred_at = labels.get("occurred_at")
        return {
            "occurred_at": _aware(occurred_at or datetime.now(UTC), "occurred_at"),
            "request_id": _label("request_id", labels["request_id"]),
            "caller": _label("caller", labels["caller"]),
            "route": _label("route", labels["route"]),
            "model_name": _label("model_name", labels["model_name"]),
            "model_version": _label("model_version", labels["model_version"] or "unversioned"),
            "key_id": self.key_id,
            "outcome": OUTCOME_ANSWERED,
        }

    def prepare(
        self,
        *,
        patients: Iterable[tuple[str, Mapping[str, Any], Mapping[str, Any]]],
        **labels: Unpack[Labels],
    ) -> Prepared:
        """The rows `record` would write, hashed and summarised, without touching the database.

        Pure given the key, so rows can be prepared wherever the patients are and written by
        one process; the patient ids and records go no further than this call.
        """
        common = self._common(labels)
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
        self, *, frame: pd.DataFrame, outputs: Sequence[str], **labels: Unpack[Labels]
    ) -> Prepared:
        """`prepare` for a validated frame, its rows' inputs hashed column by column.

        `outputs` are the patients' summaries as `keys.output_summary_texts` writes them. The
        rows equal `prepare`'s for the frame's records (`features.records.to_records`).
        """
        if len(outputs) != len(frame):
            raise ValueError(f"{len(outputs)} output summaries for {len(frame)} patients")
        common = self._common(labels)
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
            with self.engine.begin() as conn, page_cache_for(conn, count):
                insert = insert_sql(conn.dialect)
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
                with short_waits(conn):
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
