"""Run the audit schema's Alembic migrations from code, with no alembic.ini.

Why from code: the service and the CLI open the store themselves, and an ini file at the repo
top would have to be found from whatever directory they run in. The scripts live in
`serving/migrations/`; `env.py` there uses the connection handed over here, so a migration
runs inside the caller's transaction (and, on PostgreSQL, under an advisory lock, so replicas
starting together do not race to create the table).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_PG_LOCK = zlib.crc32(b"ketapredict.audit.migrations")


def alembic_config(connection: sa.Connection | None = None, url: str | None = None) -> Config:
    """An Alembic Config pointing at `serving/migrations`, for a connection or (offline) a URL.

    With `url` and `command.upgrade(cfg, "head", sql=True)`, Alembic prints the DDL for a DBA
    to review instead of running it.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _run(engine: Engine, direction: str, revision: str) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        getattr(command, direction)(alembic_config(conn), revision)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision`; a no-op when it is already there."""
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Undo migrations down to `revision` (`base` drops the audit table: tests and rollbacks)."""
    _run(engine, "downgrade", revision)


def current(engine: Engine) -> str | None:
    """The schema's revision, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415 (rarely used)

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
