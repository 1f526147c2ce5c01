"""Shared fixtures: real MLflow stores and real BentoML servers in temporary directories."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLI = str(BIN / "ketapredict")
ARTIFACTS = ROOT / "test-artifacts"

# No test talks to a tracking server or telemetry endpoint it did not start itself.
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.update(
    BENTOML_DO_NOT_TRACK="true",
    MLFLOW_DISABLE_TELEMETRY="true",
    DO_NOT_TRACK="true",
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
)


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri() -> Iterator[None]:
    """`mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI into os.environ, so a test that
    configures MLflow in-process would point every later subprocess on this xdist worker at its
    store. Put the variable back as it was after each test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run `ketapredict` as a user would, in `cwd` (so ./mlruns is the test's own store)."""
    return subprocess.run(
        [CLI, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Workspace:
    path: Path
    cohort: Path
    new_patients: Path
    train_stdout: str


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A simulated cohort trained into a fresh embedded MLflow store, via the real CLI."""
    path = tmp_path_factory.mktemp("workspace")
    cohort, new = path / "cohort.csv", path / "new.parquet"
    for args in (
        ("--n", "1200", "--seed", "3", "--out", str(cohort)),
        ("--n", "40", "--seed", "4", "--out", str(new)),
    ):
        done = run_cli("simulate", *args, cwd=path)
        assert done.returncode == 0, done.stderr
    done = run_cli("train", "--data", str(cohort), cwd=path)
    assert done.returncode == 0, done.stderr
    return Workspace(path, cohort, new, done.stdout)


API_TOKEN = "test-token-" + "k" * 24
CDS_ISSUER = "https://ehr.test.example"


@dataclass(frozen=True)
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    http: httpx.Client
    cds_key: Any

    def cds_headers(self, path: str, **claims: Any) -> dict[str, str]:
        """A fresh EHR-signed JWT (ES384) for one CDS Hooks call to `path`."""
        now = int(time.time())
        payload = {
            "iss": CDS_ISSUER,
            "aud": f"{self.url}{path}",
            "exp": now + 300,
            "iat": now,
            "jti": str(uuid.uuid4()),
            **claims,
        }
        token = jwt.encode(
            payload, self.cds_key, algorithm="ES384", headers={"kid": "ehr-1", "typ": "JWT"}
        )
        return {"Authorization": f"Bearer {token}"}


def _cds_issuer(directory: Path) -> tuple[Any, Path]:
    """An EHR signing key and the issuers file that trusts its public half."""
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="ehr-1", use="sig", alg="ES384")
    (directory / "ehr-jwks.json").write_text(json.dumps({"keys": [jwk]}))
    issuers = directory / "issuers.json"
    issuers.write_text(json.dumps({"issuers": [{"iss": CDS_ISSUER, "jwks_file": "ehr-jwks.json"}]}))
    return key, issuers


def start_server(
    workspace: Path, bentoml_home: Path, port: int, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            [CLI, "serve", "--port", str(port)],
            cwd=workspace,
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BENTOML_HOME": str(bentoml_home), **(env or {})},
            start_new_session=True,
        )


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"server not ready after {timeout} s:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture(scope="session")
def server(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real BentoML service on the champion, as `ketapredict serve` starts it."""
    home = tmp_path_factory.mktemp("bentoml")
    port = free_port()
    log = workspace.path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    cds_key, issuers = _cds_issuer(home)
    env = {
        "KETAPREDICT_API_TOKENS": API_TOKEN,
        "KETAPREDICT_PUBLIC_URL": url,
        "KETAPREDICT_CDS_ISSUERS_FILE": str(issuers),
    }
    process = start_server(workspace.path, home, port, log, env)
    http = httpx.Client(headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=60)
    try:
        wait_ready(url, process, log)
        yield Server(url, process, log, http, cds_key)
    finally:
        http.close()
        stop(process)
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log, ARTIFACTS / "serve.log")
