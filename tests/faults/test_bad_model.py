"""A corrupt or missing model stops `ketapredict serve` at once, with one line saying what.

Not a traceback, not a server whose worker fails and is restarted forever, not a server that
answers 500s: the command exits 1 before `bentoml serve` starts, naming the model tag and the
problem. The service itself (`bentoml serve` on a Bento, with no `ketapredict` in front) logs
the same one line when its worker cannot load the model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.bento_store import CHECKSUMS
from tests.conftest import Workspace, free_port, run_cli
from tests.faults.conftest import halt, local_registry, server_env, sqlite_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CLI_TIMEOUT_S = 180  # generous; a server that started would never exit, so this is the hang check


def _damaged_copy(champion_store: tuple[Path, str], tmp_path: Path) -> tuple[Path, Path, str]:
    """A copy of the store to damage; returns its home, the model's predictor dir and tag."""
    home, tag = champion_store
    copy = tmp_path / "bentoml"
    shutil.copytree(home, copy, symlinks=True)
    name, version = tag.split(":")
    return copy, copy / "models" / name / version / "artifacts" / "predictor", tag


def _refused(workspace: Workspace, home: Path, **env: str) -> str:
    """Run `ketapredict serve`; assert it exits 1 with exactly one stderr line; return it."""
    done = run_cli(
        "serve",
        "--port",
        str(free_port()),
        cwd=workspace.path,
        env={**local_registry(workspace.path), "BENTOML_HOME": str(home), **env},
        timeout=CLI_TIMEOUT_S,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: model "), lines[0]
    return lines[0]


def test_garbled_predictor_file_is_refused(
    workspace: Workspace, champion_store: tuple[Path, str], tmp_path: Path
) -> None:
    home, predictor, tag = _damaged_copy(champion_store, tmp_path)
    target = predictor / "estimator.txt"
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = b"#GARBLE#"  # still a text file, still the same size
    target.write_bytes(bytes(data))
    line = _refused(workspace, home)  # the normal path: registry champion, found in the store
    assert tag in line and "is corrupt" in line
    assert "artifacts/predictor/estimator.txt does not match its checksum" in line
    assert f"bentoml models delete {tag}" in line


def test_truncated_model_without_checksums_is_refused(
    workspace: Workspace, champion_store: tuple[Path, str], tmp_path: Path
) -> None:
    """A model imported before checksums existed: loading it is the check."""
    home, predictor, tag = _damaged_copy(champion_store, tmp_path)
    (predictor.parent.parent / CHECKSUMS).unlink()
    manifest = predictor / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:1000])
    line = _refused(workspace, home, KETAPREDICT_MODEL_TAG=tag)
    assert tag in line and "cannot be loaded: JSONDecodeError" in line


def test_missing_model_tag_is_refused(
    workspace: Workspace, champion_store: tuple[Path, str]
) -> None:
    home, _ = champion_store
    missing = "ketamine-aud-response:v999-doesnotexist"
    line = _refused(workspace, home, KETAPREDICT_MODEL_TAG=missing)
    assert f"model {missing} is not in the BentoML model store ({home / 'models'})" in line


def test_service_worker_logs_one_clear_line_for_a_corrupt_model(
    champion_store: tuple[Path, str], tmp_path: Path
) -> None:
    """`bentoml serve` without `ketapredict serve` in front (a Bento, a container)."""
    home, predictor, tag = _damaged_copy(champion_store, tmp_path)
    manifest = predictor / "manifest.json"
    m = json.loads(manifest.read_text())
    m["calibrator"]["slope"] = m["calibrator"]["slope"] * 2  # parses, loads, and is wrong
    manifest.write_text(json.dumps(m))
    port = free_port()
    log = tmp_path / "bentoml-serve-corrupt.log"
    env = {
        **os.environ,
        **server_env(f"http://127.0.0.1:{port}", sqlite_url(tmp_path), tmp_path),
        "BENTOML_HOME": str(home),
        "KETAPREDICT_MODEL_TAG": tag,
    }
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    root = Path(__file__).resolve().parents[2]
    with log.open("wb") as fh:
        process = subprocess.Popen(
            [bentoml, "serve", "serving.service:KetaPredict", "--port", str(port)],
            cwd=root,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    expected = f"cannot start: model {tag} in "
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and expected not in log.read_text(errors="replace"):
            time.sleep(0.5)
        text = log.read_text(errors="replace")
    finally:
        halt(process, log)
    lines = [ln for ln in text.splitlines() if expected in ln]
    assert lines, text
    assert "is corrupt: artifacts/predictor/manifest.json does not match its checksum" in lines[0]
