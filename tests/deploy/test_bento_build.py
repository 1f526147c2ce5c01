"""`python -m serving.build`: a Bento with the champion inside, and nothing else of ours.

The build runs as a user would run it, in the trained workspace (its ./mlruns is the registry)
with BENTOML_HOME in a temporary directory. The built Bento is then served with
`bentoml serve <bento tag>`, with the env the image would carry, and answers one prediction.
`bentoml containerize` needs a Docker engine and is not run here (docs/deployment.md).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from serving.build import REQUIREMENTS, ROOT, find_uv, requirements_text
from serving.registry import CHAMPION, REGISTERED_MODEL
from tests.conftest import API_TOKEN, BIN, Workspace, free_port, stop, wait_ready

pytestmark = pytest.mark.e2e

OUR_TOP_LEVEL = {"features", "serving"}
NEVER_IN_A_BENTO = ("mlruns", ".venv", "tests", "benchmarks", "data", ".git", "test-artifacts")
DATA_SUFFIXES = (".csv", ".parquet", ".db", ".db-wal", ".db-shm", ".sqlite", ".key", ".sha256")


@dataclass(frozen=True)
class Built:
    home: Path
    tag: str
    path: Path
    info: dict[str, Any]
    version: str  # the registry version behind `champion` in the workspace
    run_id: str
    stdout: str


def _champion(workspace: Workspace) -> tuple[str, str]:
    uri = f"sqlite:///{(workspace.path / 'mlruns' / 'mlflow.db').resolve()}"
    mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
        REGISTERED_MODEL, CHAMPION
    )
    return str(mv.version), str(mv.run_id)


@pytest.fixture(scope="module")
def built(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Built:
    if find_uv() is None:
        pytest.skip("bentoml build calls uv: not on PATH nor in .tools/bin (run `make setup`)")
    home = tmp_path_factory.mktemp("bentoml-build")
    done = subprocess.run(
        [sys.executable, "-m", "serving.build", "--frozen-requirements"],
        cwd=workspace.path,
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tag = done.stdout.split()[1]  # "built ketapredict:<version> with <model tag> ..."
    name, version = tag.split(":")
    path = home / "bentos" / name / version
    info = yaml.safe_load((path / "bento.yaml").read_text())
    return Built(home, tag, path, info, *_champion(workspace), done.stdout)


def test_the_bento_lists_the_champion_with_its_registry_version(built: Built) -> None:
    assert built.info["name"] == "ketapredict"
    assert built.info["service"] == "serving.service:KetaPredict"
    (service,) = built.info["services"]
    (model,) = service["models"]
    tag = model["tag"]
    assert tag.startswith(f"{REGISTERED_MODEL}:v{built.version}-")
    assert built.info["labels"]["registered_version"] == built.version
    assert built.info["labels"]["mlflow_run_id"] == built.run_id
    assert built.info["labels"]["model_tag"] == tag
    envs = {e["name"]: e["value"] for e in built.info["envs"]}
    assert envs["KETAPREDICT_MODEL_TAG"] == tag  # the image serves exactly this model
    assert tag in built.stdout and f"version {built.version}" in built.stdout

    stored = built.home / "models" / tag.replace(":", "/") / "model.yaml"
    meta = yaml.safe_load(stored.read_text())["metadata"]
    assert meta["mlflow_version"] == built.version and meta["mlflow_run_id"] == built.run_id
    assert (stored.parent / "artifacts" / "predictor").is_dir()


def test_the_bento_holds_our_code_and_no_data(built: Built) -> None:
    files = [p.relative_to(built.path) for p in built.path.rglob("*") if p.is_file()]
    assert files
    for rel in files:
        parts = rel.parts
        assert not set(parts) & set(NEVER_IN_A_BENTO), rel
        assert not rel.name.endswith(DATA_SUFFIXES), rel
        if parts[0] == "src" and len(parts) > 2:
            assert parts[1] in OUR_TOP_LEVEL, rel
    src = built.path / "src"
    assert (src / "serving" / "service.py").is_file()
    assert (src / "serving" / "migrations" / "versions").is_dir()  # Alembic runs on start
    assert (src / "features" / "schema.py").is_file()


def test_the_image_installs_what_uv_lock_pins(built: Built) -> None:
    reqs = (built.path / "env" / "python" / "requirements.txt").read_text()
    pins = {ln.split(";")[0].strip() for ln in reqs.splitlines() if "==" in ln}
    assert {"lightgbm==4.7.0", "bentoml==1.4.40", "scikit-learn==1.9.1"} <= pins
    assert not any(p.startswith(("pytest", "pyspark", "playwright", "ruff")) for p in pins)
    dockerfile = (built.path / "env" / "docker" / "Dockerfile").read_text()
    assert "libgomp1" in dockerfile  # LightGBM's OpenMP runtime; python:3.11-slim lacks it
    assert "ENV KETAPREDICT_MODEL_TAG=" in dockerfile


def test_bento_requirements_match_uv_lock() -> None:
    uv = find_uv()
    if uv is None:
        pytest.skip("uv not on PATH nor in .tools/bin (run `make setup`)")
    assert (ROOT / REQUIREMENTS).read_text() == requirements_text(uv), (
        f"{REQUIREMENTS} is stale: run `python -m serving.build --requirements-only`"
    )


@pytest.fixture(scope="module")
def served(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`bentoml serve <bento tag>` with the env a container of this Bento would get."""
    run = tmp_path_factory.mktemp("bento-serve")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    image_env = {e["name"]: e["value"] for e in built.info["envs"]}
    env = {
        **os.environ,
        **image_env,
        "BENTOML_HOME": str(built.home),
        "KETAPREDICT_API_TOKENS": API_TOKEN,
        "KETAPREDICT_AUDIT_URL": f"sqlite:///{run / 'audit.db'}",
        "KETAPREDICT_AUDIT_KEY": secrets.token_hex(32),
        "KETAPREDICT_CDS_FEEDBACK_URL": f"sqlite:///{run / 'cds_feedback.db'}",
        "KETAPREDICT_PUBLIC_URL": url,
    }
    log = run / "bento-serve.log"
    cmd = [str(BIN / "bentoml"), "serve", built.tag, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as fh:
        process = subprocess.Popen(
            cmd, cwd=run, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_ready(url, process, log)
        yield url
    finally:
        stop(process)


def test_the_built_bento_serves_the_champion(built: Built, served: str) -> None:
    assert httpx.get(f"{served}/readyz", timeout=10).status_code == 200
    body = json.loads((ROOT / "examples" / "predict-request.json").read_text())
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    r = httpx.post(f"{served}/v1/predict", json=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == {"name": REGISTERED_MODEL, "version": built.version}
    assert len(answer["predictions"]) == len(body["patients"])
    assert all(0 < p["probability"] < 1 for p in answer["predictions"])
    card = httpx.get(f"{served}/v1/model", headers=headers, timeout=30).json()
    assert card["bento_tag"] == built.info["labels"]["model_tag"]
    assert httpx.post(f"{served}/v1/predict", json=body, timeout=30).status_code == 401
