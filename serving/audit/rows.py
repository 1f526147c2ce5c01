"""Audit rows prepared for writing, and the driver-level INSERT that writes many at once.

`Prepared` holds what a write needs and nothing else (no patient id, no record), so a batch job
can prepare rows in worker processes and hand them to the one process that writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from serving.audit.table import audit_event


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


def insert_sql(dialect: sa.Dialect) -> str:
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
