"""SIGKILL mid-load loses no audit row of an answered request; the restarted server serves.

Clients (threads, httpx) post single-patient predictions with distinct patient and request ids
back to back. Once answers are flowing, the whole server process group gets SIGKILL: no
shutdown hook, no flush, no commit after the fact. The server is restarted on the same audit
store and port; every request that had been answered 200 must have its row there (matched by
request id and the keyed hash of its patient id). Rows of requests cut off by the kill may or
may not exist: they were never answered, so either is correct.

BentoML starts its workers in sessions of their own, so the test also checks that no process of
the killed server survives (before `KetaPredict.__init__` set a parent-death signal, the worker
did, kept the port and went on answering, and the "restarted" server could not bind it) and
that the port is then held by the new server.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Workspace
from tests.faults.conftest import (
    AUTH,
    PgDatabase,
    audit_rows,
    halt,
    hashed,
    launch,
    patient,
    sqlite_url,
    wait_group_gone,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CLIENTS = 12
#: Kill after this many answers (and no sooner than KILL_AFTER_S): enough to be "mid-load".
KILL_AFTER_ANSWERS, KILL_AFTER_S = 60, 2.0


@dataclass
class Load:
    run: str
    sent: set[str] = field(default_factory=set)  # request ids
    answered: list[tuple[str, str]] = field(default_factory=list)  # (request id, patient id)
    statuses: Counter[int] = field(default_factory=Counter)
    cut: Counter[str] = field(default_factory=Counter)  # transport errors, by type
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(url: str, workspace: Workspace, load: Load, counter: itertools.count) -> None:
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as http:
        while not load.stop.is_set():
            n = next(counter)
            rid, pid = f"kill-{load.run}-{n}", f"KILL-{load.run}-{n}"
            body = {"patients": [patient(workspace, pid, n)]}
            with load.lock:
                load.sent.add(rid)
            try:
                r = http.post("/v1/predict", json=body, headers={"x-request-id": rid})
            except httpx.HTTPError as exc:
                with load.lock:
                    load.cut[type(exc).__name__] += 1
                time.sleep(0.05)
                continue
            with load.lock:
                load.statuses[r.status_code] += 1
                if r.status_code == 200:
                    assert r.json()["predictions"][0]["patient_id"] == pid
                    load.answered.append((rid, pid))


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _listeners(port: int) -> set[int]:
    """Pids of the processes listening on `port`."""
    return {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }


def _kill_mid_load(url: str, workspace: Workspace, pgid: int, run: str) -> Load:
    load = Load(run)
    counter = itertools.count()
    threads = [
        threading.Thread(target=_client, args=(url, workspace, load, counter), daemon=True)
        for _ in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    started = time.monotonic()
    deadline = started + 120
    while time.monotonic() < deadline:
        with load.lock:
            enough = len(load.answered) >= KILL_AFTER_ANSWERS
        if enough and time.monotonic() - started >= KILL_AFTER_S:
            break
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)
    time.sleep(1.0)  # clients keep trying against the dead port for a moment
    load.stop.set()
    for t in threads:
        t.join(90)
    return load


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sigkill_mid_load_keeps_every_answered_row(
    backend: str, workspace: Workspace, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = sqlite_url(tmp_path)
    else:
        db: PgDatabase = request.getfixturevalue("pg_database")
        url = db.url
    home = tmp_path / "bentoml"
    run = uuid.uuid4().hex[:8]
    first = launch(workspace.path, home, tmp_path / f"serve-kill-{backend}-1.log", audit_url=url)
    tree = _tree(first.process.pid)  # `bentoml serve` and its workers (sessions of their own)
    listening = _listeners(first.port)
    assert len(tree) >= 2 and listening and listening <= {p.pid for p in tree}
    load = _kill_mid_load(first.url, workspace, first.process.pid, run)
    first.process.wait(30)
    assert first.process.returncode == -signal.SIGKILL
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"processes of the killed server still running: {alive}"
    assert not _listeners(first.port)
    wait_group_gone(first.process.pid)
    halt(first.process, first.log)  # nothing left to stop; keeps the log

    second = launch(
        workspace.path,
        home,
        tmp_path / f"serve-kill-{backend}-2.log",
        audit_url=url,
        port=first.port,
    )
    try:
        # the port is the new server's, not a survivor's
        listening = _listeners(second.port)
        assert listening and listening <= {p.pid for p in _tree(second.process.pid)}
        rows = audit_rows(url)
        summary = (
            f"{backend}: {len(load.answered)} answered, statuses {dict(load.statuses)}, "
            f"cut by the kill {dict(load.cut)}, {len(rows)} audit rows"
        )
        print(summary)
        assert len(load.answered) >= KILL_AFTER_ANSWERS, summary
        assert set(load.statuses) == {200}, summary  # before the kill, nothing but answers
        assert load.cut, f"the kill did not interrupt any request: {summary}"
        missing = [a for a in load.answered if hashed(*a) not in rows]
        assert not missing, f"answered but not audited: {missing[:5]} ({summary})"
        strangers = {r for r, _ in rows} - load.sent
        assert not strangers, f"rows of requests never sent: {sorted(strangers)[:5]}"

        # the restarted server answers, and audits, again
        rid, pid = f"kill-{run}-after", f"KILL-{run}-after"
        r = httpx.post(
            f"{second.url}/v1/predict",
            json={"patients": [patient(workspace, pid)]},
            headers={**AUTH, "x-request-id": rid},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert hashed(rid, pid) in audit_rows(url)
    finally:
        halt(second.process, second.log)
