"""Small pieces of the fault handling (the end-to-end checks are in tests/faults/).

Readiness of the SQLite audit store under a held write lock and after a failed write, and the
tracking URI as `ketapredict serve` prints it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from serving.audit import AuditStore
from serving.registry import shown_uri

KEY = b"f" * 32


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    s = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", key=KEY)
    yield s
    s.close()


def _count(store: AuditStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM audit_event")).scalar() or 0)


def test_sqlite_store_is_not_ready_while_another_process_holds_the_write_lock(
    store: AuditStore, tmp_path: Path
) -> None:
    assert store.healthy()
    holder = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert not store.healthy()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert store.healthy()
    with store.engine.connect() as conn:  # the probe's short busy timeout was put back
        assert conn.connection.dbapi_connection.execute("PRAGMA busy_timeout").fetchone() == (
            10000,
        )


def test_after_a_failed_write_readiness_probes_with_a_row_it_never_commits(
    store: AuditStore,
) -> None:
    store._write_failed = True  # as `record` leaves it when a commit fails
    assert store.healthy()
    assert not store._write_failed
    assert _count(store) == 0


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("https://user:pw@mlflow.example.org/x", "https://mlflow.example.org/x"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////srv/mlruns/mlflow.db", "sqlite:////srv/mlruns/mlflow.db"),
        ("postgresql://u:secret@db/mlflow", "postgresql://db/mlflow"),
    ],
)
def test_shown_uri_drops_credentials(uri: str, shown: str) -> None:
    assert shown_uri(uri) == shown
