"""The service starts and serves without the MLflow tracking server (DESIGN decision 6).

`MLFLOW_TRACKING_URI` points at a port nothing listens on (or at a listener that only counts
connections). With the champion already in the BentoML store, `ketapredict serve` starts from
the store: with `KETAPREDICT_MODEL_TAG` it never contacts the registry; without it, it tries
the registry, cannot reach it, and serves the newest imported champion with a warning. With
an empty store it refuses to start, saying why.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Workspace, free_port, run_cli
from tests.faults.conftest import (
    AUTH,
    audit_rows,
    halt,
    hashed,
    launch,
    patient,
    sqlite_url,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


class ConnectionCounter:
    """A TCP listener standing in for a tracking server: accepts, counts, hangs up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def counter() -> Iterator[ConnectionCounter]:
    c = ConnectionCounter()
    yield c
    c.close()


def _serves(url: str, workspace: Workspace, audit_url: str, rid: str) -> dict:
    pid = f"MLFLOW-DOWN-{rid}"
    r = httpx.post(
        f"{url}/v1/predict",
        json={"patients": [patient(workspace, pid)]},
        headers={**AUTH, "x-request-id": rid},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert hashed(rid, pid) in audit_rows(audit_url)
    return httpx.get(f"{url}/v1/model", headers=AUTH, timeout=30).json()


def test_registry_unreachable_serves_newest_imported_champion(
    workspace: Workspace, champion_store: tuple[Path, str], tmp_path: Path
) -> None:
    home, tag = champion_store
    down = f"http://127.0.0.1:{free_port()}"  # closed again: connection refused
    audit = sqlite_url(tmp_path)
    log = tmp_path / "serve-mlflow-down.log"
    server = launch(workspace.path, home, log, audit_url=audit, MLFLOW_TRACKING_URI=down)
    try:
        model = _serves(server.url, workspace, audit, "mlflow-down-fallback")
    finally:
        halt(server.process, log)
    assert model["bento_tag"] == tag and model["version"] == "1"
    text = log.read_text()
    warning = [ln for ln in text.splitlines() if ln.startswith("WARNING: the MLflow registry")]
    assert len(warning) == 1, text
    assert down in warning[0] and tag in warning[0] and "KETAPREDICT_MODEL_TAG" in warning[0]


def test_explicit_model_tag_never_contacts_the_registry(
    workspace: Workspace,
    champion_store: tuple[Path, str],
    tmp_path: Path,
    counter: ConnectionCounter,
) -> None:
    home, tag = champion_store
    audit = sqlite_url(tmp_path)
    log = tmp_path / "serve-model-tag.log"
    server = launch(
        workspace.path,
        home,
        log,
        audit_url=audit,
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{counter.port}",
        KETAPREDICT_MODEL_TAG=tag,
    )
    try:
        model = _serves(server.url, workspace, audit, "mlflow-down-explicit")
    finally:
        halt(server.process, log)
    assert model["bento_tag"] == tag
    assert counter.count == 0, "serve contacted the tracking server despite KETAPREDICT_MODEL_TAG"
    assert f"model {tag} from KETAPREDICT_MODEL_TAG" in log.read_text()


def test_registry_unreachable_and_empty_store_refuses_to_start(
    workspace: Workspace, tmp_path: Path
) -> None:
    down = f"http://user:hunter2@127.0.0.1:{free_port()}"
    done = run_cli(
        "serve",
        "--port",
        str(free_port()),
        cwd=workspace.path,
        env={"MLFLOW_TRACKING_URI": down, "BENTOML_HOME": str(tmp_path / "empty")},
        timeout=180,  # a server would never exit: the timeout turns a hang into a failure
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: the MLflow registry at http://127.0.0.1:")
    assert "holds no imported champion" in lines[0] and "KETAPREDICT_MODEL_TAG" in lines[0]
    assert "hunter2" not in done.stderr + done.stdout  # the URI's password is not printed
    shutil.rmtree(tmp_path / "empty", ignore_errors=True)
