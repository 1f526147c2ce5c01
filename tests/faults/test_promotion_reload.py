"""A promotion while serving is picked up by a rolling restart, with no failed request.

The procedure (docs/operations.md): a running server keeps the model it started with. After a
promotion, start a second server (it imports the new champion), wait for its `/readyz`, put it
into the load balancer's rotation and take the old one out, let the old one's in-flight
requests finish, then stop it. This repository has no load balancer; `Rotation` below is the
part of one that matters here: a per-request choice among the servers in rotation, and
in-flight counts for draining. So the clients never send to a server outside the rotation,
and any refused connection, timeout or non-200 answer fails the test.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import Workspace, run_cli
from tests.faults.conftest import (
    AUTH,
    PYTHON,
    audit_rows,
    halt,
    hashed,
    launch,
    local_registry,
    patient,
    sqlite_url,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CLIENTS = 8
AFTER_SWITCH_S = 2.0

REGISTER_AGAIN = """
import mlflow
from mlflow import MlflowClient
from serving import registry
registry.configure_uri_only()
source = MlflowClient().get_model_version(registry.REGISTERED_MODEL, "1").source
print(mlflow.register_model(source, registry.REGISTERED_MODEL).version)
"""


@dataclass
class Rotation:
    """What a load balancer does for this procedure: choose per request, count in flight."""

    urls: list[str]
    inflight: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    turn: itertools.count = field(default_factory=itertools.count)

    def acquire(self) -> str:
        with self.lock:
            url = self.urls[next(self.turn) % len(self.urls)]
            self.inflight[url] += 1
            return url

    def release(self, url: str) -> None:
        with self.lock:
            self.inflight[url] -= 1

    def add(self, url: str) -> None:
        with self.lock:
            self.urls.append(url)

    def remove(self, url: str) -> None:
        with self.lock:
            self.urls.remove(url)

    def drain(self, url: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.inflight[url] == 0:
                    return
            time.sleep(0.02)
        raise TimeoutError(f"{url} still has requests in flight")


@dataclass
class Seen:
    versions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (server, version)
    failures: list[str] = field(default_factory=list)
    answered: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(rotation: Rotation, workspace: Workspace, seen: Seen, stop: threading.Event) -> None:
    run = uuid.uuid4().hex[:8]
    with httpx.Client(headers=AUTH, timeout=90) as http:
        for n in itertools.count():
            if stop.is_set():
                return
            rid, pid = f"promo-{run}-{n}", f"PROMO-{run}-{n}"
            url = rotation.acquire()
            try:
                r = http.post(
                    f"{url}/v1/predict",
                    json={"patients": [patient(workspace, pid, n)]},
                    headers={"x-request-id": rid},
                )
            except httpx.HTTPError as exc:
                with seen.lock:
                    seen.failures.append(f"{url}: {type(exc).__name__}")
                continue
            finally:
                rotation.release(url)
            with seen.lock:
                if r.status_code != 200:
                    seen.failures.append(f"{url}: {r.status_code}")
                    continue
                seen.versions[(url, r.json()["model"]["version"])] += 1
                seen.answered.append((rid, pid))


def _model(url: str) -> dict:
    r = httpx.get(f"{url}/v1/model", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_promotion_is_picked_up_by_a_rolling_restart_without_failed_requests(
    workspace: Workspace, tmp_path: Path
) -> None:
    # a copy of the workspace: promoting in the shared one would change other tests' champion
    ws = tmp_path / "workspace"
    shutil.copytree(workspace.path, ws, ignore=shutil.ignore_patterns("*.log", "scored*"))
    home, audit = tmp_path / "bentoml", sqlite_url(tmp_path)
    old = launch(ws, home, tmp_path / "serve-promo-old.log", audit_url=audit)
    new = None
    rotation, seen, stop = Rotation([old.url]), Seen(), threading.Event()
    threads = [
        threading.Thread(target=_client, args=(rotation, workspace, seen, stop), daemon=True)
        for _ in range(CLIENTS)
    ]
    try:
        assert _model(old.url)["version"] == "1"
        for t in threads:
            t.start()

        # the promotion: version 2 (the same trained model, registered again) becomes champion
        registry = local_registry(ws)
        reg = subprocess.run(
            [PYTHON, "-c", REGISTER_AGAIN],
            cwd=ws,
            env={**os.environ, **registry},
            capture_output=True,
            text=True,
            check=False,
        )
        assert reg.returncode == 0, reg.stderr
        version = reg.stdout.strip().splitlines()[-1]
        reason = "fault test: promotion while serving"
        done = run_cli("promote", version, "--reason", reason, cwd=ws, env=registry)
        assert done.returncode == 0, done.stderr
        assert _model(old.url)["version"] == "1"  # a running server keeps its model

        # the rolling restart
        new = launch(ws, home, tmp_path / "serve-promo-new.log", audit_url=audit)
        rotation.add(new.url)
        rotation.remove(old.url)
        rotation.drain(old.url)
        halt(old.process, old.log)
        time.sleep(AFTER_SWITCH_S)
        stop.set()
        for t in threads:
            t.join(120)
        after = _model(new.url)
    finally:
        stop.set()
        halt(old.process, old.log)
        if new is not None:
            halt(new.process, new.log)

    summary = f"answers by (server, version): {dict(seen.versions)}; failures: {seen.failures[:5]}"
    print(summary)
    assert not seen.failures, summary
    assert after["version"] == version and after["bento_tag"].startswith(
        f"ketamine-aud-response:v{version}-"
    )
    assert seen.versions[(old.url, "1")] > 0 and seen.versions[(new.url, version)] > 0, summary
    assert set(seen.versions) == {(old.url, "1"), (new.url, version)}, summary
    rows = audit_rows(audit)
    assert all(hashed(*a) in rows for a in seen.answered)
