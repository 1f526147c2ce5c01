"""Shared pieces of the fault tests: a served model in a BentoML store, servers, stores, clients.

Every test here drives a real `ketapredict serve` process over HTTP (tests/conftest.py starts
it); the audit store is a fresh SQLite file or a fresh PostgreSQL *database* (created here and
dropped after, so connections to it can be refused or made read-only without touching others).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from features.fhir_bundle import record_to_bundle
from features.records import to_records
from features.validation import validate_table
from ketapredict.tables import read_table
from serving.audit import patient_hash
from tests.conftest import (
    API_TOKEN,
    ARTIFACTS,
    ROOT,
    Workspace,
    free_port,
    start_server,
    wait_ready,
)
from tests.db.test_audit_postgres import PG_URL, unreachable_reason

AUDIT_KEY = secrets.token_hex(32)  # fresh per session: rows are matched with it
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
FHIR = "/v1/fhir/RiskAssessment/$predict"
PYTHON = sys.executable


@dataclass(frozen=True)
class Running:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path


def local_registry(cwd: Path) -> dict[str, str]:
    """The workspace's own MLflow store, named explicitly.

    `mlflow.set_tracking_uri` also sets `MLFLOW_TRACKING_URI` in os.environ, so a test that
    configured MLflow in-process earlier in the same worker would otherwise point our
    subprocesses at its store.
    """
    return {"MLFLOW_TRACKING_URI": f"sqlite:///{(cwd / 'mlruns' / 'mlflow.db').resolve()}"}


def server_env(url: str, audit_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    """What a deployment sets: tokens, public URL, audit store and key, feedback store."""
    return {
        "KETAPREDICT_API_TOKENS": API_TOKEN,
        "KETAPREDICT_PUBLIC_URL": url,
        "KETAPREDICT_AUDIT_URL": audit_url,
        "KETAPREDICT_AUDIT_KEY": AUDIT_KEY,
        "KETAPREDICT_CDS_FEEDBACK_URL": f"sqlite:///{tmp / 'cds_feedback.db'}",
        **extra,
    }


def launch(
    cwd: Path,
    bento_home: Path,
    log: Path,
    *,
    audit_url: str,
    port: int | None = None,
    **extra: str,
) -> Running:
    """`ketapredict serve` in `cwd`, waited for until /readyz answers 200."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_env(url, audit_url, log.parent, **{**local_registry(cwd), **extra})
    process = start_server(cwd, bento_home, port, log, env)
    try:
        wait_ready(url, process, log)
    except BaseException:
        halt(process, log)
        raise
    return Running(url, port, process, log)


def halt(
    process: subprocess.Popen[bytes], log: Path | None = None, sig: int = signal.SIGTERM
) -> None:
    """Stop the server's whole process group (it runs in a session of its own); keep its log."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    wait_group_gone(process.pid)
    if log is not None and log.exists():
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log, ARTIFACTS / log.name)


def wait_group_gone(pgid: int, timeout: float = 30) -> None:
    """Wait until no live process is left in the group (workers die after their arbiter)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_pids(pgid):
            return
        time.sleep(0.1)
    raise TimeoutError(f"processes of group {pgid} still alive: {group_pids(pgid)}")


def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is `pgid`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def import_champion(workspace: Path, bento_home: Path) -> str:
    """Copy the registry's champion into a BentoML store, as `ketapredict serve` does first."""
    code = (
        "from serving import registry; registry.configure_uri_only(); "
        "from serving.bento_store import import_alias; print(import_alias())"
    )
    done = subprocess.run(
        [PYTHON, "-c", code],
        cwd=workspace,
        env={
            **os.environ,
            **local_registry(workspace),
            "BENTOML_HOME": str(bento_home),
            "PYTHONPATH": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def champion_store(
    workspace: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A BentoML home holding the workspace's champion, and its tag (copy it before damaging)."""
    home = tmp_path_factory.mktemp("bentoml-champion")
    return home, import_champion(workspace.path, home)


@functools.cache
def _templates(new_patients: Path) -> tuple[dict[str, Any], ...]:
    records = to_records(validate_table(read_table(new_patients)).frame)
    return tuple({k: v for k, v in r.items() if k != "site_id"} for r in records)


def patient(workspace: Workspace, patient_id: str, n: int = 0) -> dict[str, Any]:
    """A valid API record (one of the workspace's new patients) under a new patient id."""
    templates = _templates(workspace.new_patients)
    return {**templates[n % len(templates)], "patient_id": patient_id}


def fhir_bundle(record: dict[str, Any]) -> dict[str, Any]:
    return record_to_bundle(record, at=dt.datetime.now(dt.UTC))


def sqlite_url(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'audit' / 'audit.db'}"


def audit_rows(url: str) -> set[tuple[str, str]]:
    """(request id, keyed patient hash) of every audit row."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT request_id, patient_key FROM audit_event")).all()
    finally:
        engine.dispose()
    return {(str(r), str(k)) for r, k in rows}


def hashed(request_id: str, patient_id: str) -> tuple[str, str]:
    """The audit row an answered request must have left."""
    return request_id, patient_hash(patient_id, AUDIT_KEY.encode())


def wait_status(url: str, status: int, timeout: float = 60) -> None:
    """Poll `url` until it answers `status` (readiness flips are not instantaneous)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=10).status_code
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        if last == status:
            return
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer {status} within {timeout} s (last: {last})")


@dataclass(frozen=True)
class PgDatabase:
    name: str
    url: str
    admin: sa.Engine

    def sql(self, statement: str) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(statement)

    def terminate_sessions(self, timeout: float = 30) -> None:
        """End every session on this database and wait until they are gone."""
        query = f"FROM pg_stat_activity WHERE datname = '{self.name}' AND pid <> pg_backend_pid()"
        self.sql(f"SELECT pg_terminate_backend(pid) {query}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.admin.connect() as conn:
                if not conn.exec_driver_sql(f"SELECT count(*) {query}").scalar():
                    return
            time.sleep(0.1)
        raise TimeoutError(f"sessions on {self.name} did not end")


@pytest.fixture
def pg_database() -> Iterator[PgDatabase]:
    """A fresh PostgreSQL database for one test, dropped (with its sessions) afterwards."""
    reason = unreachable_reason(PG_URL)
    if reason is not None:
        pytest.skip(reason)
    name = f"kp_fault_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    db = PgDatabase(name, make_url(PG_URL).set(database=name).render_as_string(False), admin)
    db.sql(f'CREATE DATABASE "{name}"')
    try:
        yield db
    finally:
        db.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
