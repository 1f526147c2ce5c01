"""Training and registration against a real MLflow tracking server on PostgreSQL (DESIGN 7).

A fresh database on the local PostgreSQL server (`KETAPREDICT_TEST_POSTGRES_URL`, default the
`test` database's server) backs an `mlflow server` started here, which also proxies artifacts
to a temporary directory, as a team deployment would. `ketapredict simulate` and `train` run as
subprocesses with only `MLFLOW_TRACKING_URI` pointing at it; then the run, the registered
version and the champion alias are read back from the server, and the champion is loaded
through `serving.registry` as `ketapredict serve` and `python -m serving.build` load it.
Everything skips, saying why, when PostgreSQL cannot be reached; teardown stops the server
and drops the database.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient
from sqlalchemy.engine import URL, make_url

from serving.build import find_uv
from serving.registry import CHAMPION, REGISTERED_MODEL
from tests.conftest import ARTIFACTS, BIN, free_port, run_cli, stop

pytestmark = pytest.mark.e2e

PG_URL = os.environ.get(
    "KETAPREDICT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# Checked to pass the promotion gate with the current acceptance criteria.
COHORT_N, COHORT_SEED = "400", "3"
CHAMPION_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION}"
LOAD_CHAMPION = """
import json, sys
from pathlib import Path
from features.validation import validate_table
from ketapredict.tables import read_table
from serving import registry
from serving.results import explain

registry.configure_uri_only()
predictor = registry.load_predictor(sys.argv[1])
frame = validate_table(read_table(Path(sys.argv[2]))).frame.head(5)
results = explain(predictor, frame)
print(json.dumps({"version": predictor.metadata["version"],
                  "name": predictor.metadata["name"],
                  "probabilities": [r["probability"] for r in results]}))
"""


def unreachable_reason(url: str, timeout: int = 2) -> str | None:
    """None when PostgreSQL answers `SELECT 1` within `timeout` s, else why it did not."""
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": timeout})
    except Exception as exc:  # no driver, bad URL
        return f"PostgreSQL unusable at {shown} ({type(exc).__name__})"
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # refused, timed out, auth: all mean "skip"
        return f"PostgreSQL unreachable at {shown} ({type(exc).__name__})"
    finally:
        engine.dispose()
    return None


@dataclass(frozen=True)
class TrackingServer:
    url: str
    database: URL
    artifacts: Path
    log: Path


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with {process.returncode}:\n{log.read_text()}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server not healthy after {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingServer]:
    reason = unreachable_reason(PG_URL)
    if reason is not None:
        pytest.skip(reason)
    name = f"ketapredict_mlflow_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    database = make_url(PG_URL).set(database=name)
    tmp = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log = tmp / "artifacts", tmp / "mlflow-server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--backend-store-uri",
        database.render_as_string(hide_password=False),
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # No background job consumers: this server only tracks and registers.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    try:
        with log.open("wb") as fh:
            process = subprocess.Popen(
                cmd, cwd=tmp, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            _wait_healthy(url, process, log, timeout=180)
            yield TrackingServer(url, database, artifacts, log)
        finally:
            stop(process)
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(log, ARTIFACTS / "mlflow-server.log")
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass(frozen=True)
class Trained:
    cohort: Path
    cwd: Path
    run_id: str
    version: str
    stdout: str


@pytest.fixture(scope="module")
def trained(tracking_server: TrackingServer, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """`ketapredict simulate` and `train` with MLFLOW_TRACKING_URI set to the server."""
    cwd = tmp_path_factory.mktemp("train-remote")
    cohort = cwd / "cohort.csv"
    env = {"MLFLOW_TRACKING_URI": tracking_server.url}
    done = run_cli(
        "simulate", "--n", COHORT_N, "--seed", COHORT_SEED, "--out", str(cohort), cwd=cwd
    )
    assert done.returncode == 0, done.stderr
    done = run_cli("train", "--data", str(cohort), cwd=cwd, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = re.search(r"^run id: (\w+)$", done.stdout, re.M)
    version = re.search(rf"^registered: {REGISTERED_MODEL} version (\d+)$", done.stdout, re.M)
    assert run_id and version, done.stdout
    return Trained(cohort, cwd, run_id.group(1), version.group(1), done.stdout)


def test_run_version_and_champion_live_on_the_server(
    tracking_server: TrackingServer, trained: Trained
) -> None:
    client = MlflowClient(tracking_uri=tracking_server.url, registry_uri=tracking_server.url)
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
    mv = client.get_model_version(REGISTERED_MODEL, trained.version)
    assert mv.run_id == trained.run_id
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    assert champion.version == trained.version, trained.stdout

    # The server holds everything: PostgreSQL the metadata, its artifact root the files;
    # the training machine kept no local store.
    assert not (trained.cwd / "mlruns").exists()
    assert any(p.is_file() for p in tracking_server.artifacts.rglob("*"))
    engine = sa.create_engine(tracking_server.database)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                sa.text("SELECT version FROM model_versions WHERE name = :n"),
                {"n": REGISTERED_MODEL},
            ).scalars()
            assert [str(v) for v in stored] == [trained.version]
    finally:
        engine.dispose()


def test_the_champion_loads_through_serving_registry(
    tracking_server: TrackingServer, trained: Trained
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOAD_CHAMPION, CHAMPION_URI, str(trained.cohort)],
        cwd=trained.cwd,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_server.url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["name"] == REGISTERED_MODEL and loaded["version"] == trained.version
    assert len(loaded["probabilities"]) == 5
    assert all(0 < p < 1 for p in loaded["probabilities"])
    assert not (trained.cwd / "mlruns").exists()


def test_a_bento_builds_from_the_server(
    tracking_server: TrackingServer, trained: Trained, tmp_path: Path
) -> None:
    """`python -m serving.build` on a build machine that only knows the tracking server."""
    if find_uv() is None:
        pytest.skip("bentoml build calls uv: not on PATH nor in .tools/bin (run `make setup`)")
    home = tmp_path / "bentoml"
    done = subprocess.run(
        [sys.executable, "-m", "serving.build", "--frozen-requirements"],
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_server.url, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"({REGISTERED_MODEL} version {trained.version}, {CHAMPION})" in done.stdout
    name, version = done.stdout.split()[1].split(":")
    assert (home / "bentos" / name / version / "bento.yaml").is_file()
    assert not (tmp_path / "mlruns").exists()
