"""The `audit_event` table as SQLAlchemy Core, for queries (migrations define it separately).

Migrations never import this module: a migration must keep describing the schema as it was
when written, while this module follows the latest revision. `tests/unit/test_audit.py`
checks that the two agree after `upgrade head`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in and out: timestamptz on PostgreSQL, naive-UTC text on SQLite.

    SQLite has no time zone type and returns naive values; without this, a range query would
    compare local and UTC times depending on who wrote the row.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("audit times must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


audit_event = sa.Table(
    "audit_event",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("occurred_at", UTCDateTime(), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("caller", sa.String(255), nullable=False),
    sa.Column("route", sa.String(64), nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("key_id", sa.String(16), nullable=False),
    sa.Column("patient_key", sa.String(64), nullable=False),
    sa.Column("input_sha256", sa.String(64), nullable=False),
    sa.Column("output", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Index("ix_audit_event_occurred_at", "occurred_at"),
    sa.Index("ix_audit_event_patient_key", "patient_key"),
    sa.Index("ix_audit_event_request_id", "request_id"),
)
