"""Database engines for the audit store: SQLite tuned for queued writers, PostgreSQL with short
timeouts, and the SQLite helpers the store uses around writes (background WAL checkpoints, a
large page cache for bulk writes, short lock waits for the readiness probe).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 10.0
#: Seconds between background WAL checkpoints of a SQLite audit store.
CHECKPOINT_EVERY_S = 1.0
PG_CONNECT_TIMEOUT_S = 2
#: The readiness probe waits at most this long for a lock (a probe must answer in seconds).
PROBE_WAIT_S = 2.0


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
def page_cache_for(conn: sa.Connection, rows: int) -> Iterator[None]:
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
def short_waits(conn: sa.Connection) -> Iterator[None]:
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
