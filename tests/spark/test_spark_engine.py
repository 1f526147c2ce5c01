"""`ketapredict predict --engine spark` on pyspark local mode, against the plain engine.

One local[2] session serves the module; `ketapredict.cli.main` reuses it. Small file splits
spread a few hundred patients over several partitions, so global row numbers, duplicates
across partitions and per-task audit writes are all exercised.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from scipy.special import expit

from features import transform as tf
from features.simulate import simulate_cohort
from ketapredict import cli, spark_engine
from serving.audit import KEY_ENV, AuditRow, AuditStore, default_url
from serving.auditing import URL_ENV
from tests.conftest import Workspace, run_cli

if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Java is missing: pyspark needs a JVM", allow_module_level=True)

pytestmark = pytest.mark.e2e

N = 300
ROWS_PER_GROUP = 40  # Parquet row groups: the units Spark can split a file at
SPLIT_BYTES = "48k"  # two or three partitions for 300 patients (checked by the tests)


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    session = spark_engine.session("local[2]")
    session.conf.set("spark.sql.files.maxPartitionBytes", SPLIT_BYTES)
    yield session
    session.stop()


@pytest.fixture
def in_workspace(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """Run `main` as the CLI would in the workspace: its MLflow store, audit store and key."""
    monkeypatch.chdir(workspace.path)
    key_file = workspace.path / "mlruns" / "audit.key"
    if not key_file.exists():  # as `ketapredict predict` would create it; the plain CLI reuses it
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_hex(32))
    monkeypatch.setenv(URL_ENV, default_url(workspace.path))
    monkeypatch.setenv(KEY_ENV, key_file.read_text().strip())
    monkeypatch.setenv("KETAPREDICT_CDS_FEEDBACK_URL", "sqlite:///unused-feedback.db")
    return workspace


def _cohort(path: Path, seed: int, **cells: tuple[int, object]) -> pd.DataFrame:
    """A simulated cohort (missing optional values included) with ids unique to this module,
    written in small row groups; `cells` sets `field=(row, value)`."""
    frame = simulate_cohort(N, seed)
    frame["patient_id"] = [f"SPK{seed}-{i:05d}" for i in range(N)]
    for name, (row, value) in cells.items():
        frame.loc[row, name] = value
    frame.to_parquet(path, index=False, row_group_size=ROWS_PER_GROUP)
    return frame


def _audit(workspace: Workspace) -> list[AuditRow]:
    key = (workspace.path / "mlruns" / "audit.key").read_text().strip().encode()
    with AuditStore(default_url(workspace.path), key=key) as store:
        return store.rows(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def _partitions(spark: SparkSession, path: Path) -> list[int]:
    """Patients in each non-empty partition of the file as Spark reads it, in order."""
    parts = spark.read.parquet(str(path)).groupBy(F.spark_partition_id().alias("part")).count()
    return [r["count"] for r in parts.orderBy("part").collect()]


def _spark_predict(data: Path, out: Path) -> int:
    return cli.main(["predict", "--engine", "spark", "--data", str(data), "--out", str(out)])


def _leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]


def test_spark_scores_equal_the_plain_engine(
    spark: SparkSession, in_workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = in_workspace
    data, plain_out, spark_out = (
        ws.path / "sp.parquet",
        ws.path / "sp-plain.parquet",
        ws.path / "sp-spark.parquet",
    )
    frame = _cohort(data, seed=21)
    assert frame.isna().any(axis=None)  # some optional values are missing
    assert len(_partitions(spark, data)) > 1

    done = run_cli("predict", "--data", str(data), "--out", str(plain_out), cwd=ws.path)
    assert done.returncode == 0, done.stderr
    before = _audit(ws)
    assert _spark_predict(data, spark_out) == 0
    captured = capsys.readouterr()
    after = _audit(ws)

    assert f"scored {N} patients with ketamine-aud-response version 1 on Spark" in captured.out
    assert "SPK21-" not in captured.out + captured.err
    assert (spark_out / "_SUCCESS").exists() and not _leftovers(spark_out)
    plain, scored = pd.read_parquet(plain_out), pd.read_parquet(spark_out)
    assert len(scored) == len(plain) == N
    assert (
        sorted(scored["patient_id"]) == sorted(plain["patient_id"]) == sorted(frame["patient_id"])
    )
    assert list(scored.columns[: len(plain.columns)]) == list(plain.columns)

    both = plain.merge(scored, on="patient_id", suffixes=("", "_spark"), validate="1:1")
    for column in plain.columns.drop("patient_id"):
        ours, theirs = both[column + "_spark"], both[column]
        if pd.api.types.is_float_dtype(theirs):
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9, err_msg=column)
        else:  # risk band, top factors and their values, eligibility, warnings, model
            assert (ours.astype(str) == theirs.astype(str)).all(), column

    shap = scored[[f"shap__{n}" for n in tf.FACTOR_NAMES]].to_numpy()
    np.testing.assert_allclose(
        scored["base_log_odds"] + shap.sum(axis=1), scored["logit"], atol=1e-9
    )
    np.testing.assert_allclose(expit(scored["logit"]), scored["probability"], atol=1e-12)
    name_of = {f.label: f.name for f in tf.FACTORS}
    for k in range(1, 6):
        full = [row[f"shap__{name_of[row[f'factor_{k}']]}"] for _, row in scored.iterrows()]
        np.testing.assert_allclose(full, scored[f"factor_{k}_shap"], rtol=0, atol=0)

    new = after[len(before) :]
    assert len(after) - len(before) == N
    assert {r.route for r in new} == {spark_engine.ROUTE} and len({r.request_id for r in new}) == 1
    plain_rows = {r.patient_key: r for r in before if r.route == "cli:predict"}
    for row in new:
        twin = plain_rows[row.patient_key]
        assert row.input_sha256 == twin.input_sha256 and row.model_version == twin.model_version
        numbers = [row.output.pop("probability"), *row.output.pop("probability_interval")]
        twins = [twin.output.pop("probability"), *twin.output.pop("probability_interval")]
        assert numbers == pytest.approx(twins, abs=1e-9) and row.output == twin.output


def test_one_invalid_row_exits_2_naming_row_and_field_and_writes_nothing(
    spark: SparkSession, in_workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = in_workspace
    data, out = ws.path / "sp-bad.parquet", ws.path / "sp-bad-out.parquet"
    _cohort(data, seed=22, hdd_90d=(250, 120))
    assert _partitions(spark, data)[0] <= 250  # row 250 is numbered across a partition boundary
    before = len(_audit(ws))

    assert _spark_predict(data, out) == 2
    err = capsys.readouterr().err

    assert "invalid input: 1 problem(s)" in err
    assert re.search(r"patient 250, field hdd_90d: 120 is above the plausible maximum", err)
    assert "SPK22-" not in err
    assert not out.exists() and not _leftovers(out)
    assert len(_audit(ws)) == before


def test_problems_across_partitions_are_listed_as_the_plain_engine_lists_them(
    spark: SparkSession, in_workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = in_workspace
    data = ws.path / "sp-many.parquet"
    frame = _cohort(data, seed=23, age_years=(5, 150), sex=(120, "unknown"))
    # row 3's id again in its own partition and in a later one
    frame.loc[[30, 200, 290], "patient_id"] = frame.loc[3, "patient_id"]
    frame.loc[[60, 260], "patient_id"] = "not valid!"  # an invalid id, twice: not a duplicate
    frame.loc[100, "patient_id"] = None
    frame.to_parquet(data, index=False, row_group_size=ROWS_PER_GROUP)
    assert _partitions(spark, data)[0] <= 200  # the repeats span partitions

    plain = run_cli("predict", "--data", str(data), "--out", "never.parquet", cwd=ws.path)
    assert _spark_predict(data, ws.path / "never-spark.parquet") == 2
    err = capsys.readouterr().err

    assert plain.returncode == 2
    listed = [line for line in err.splitlines() if line.startswith("  patient ")]
    assert listed == [line for line in plain.stderr.splitlines() if line.startswith("  patient ")]
    assert len(listed) == 8 and "SPK23-" not in err  # age, sex, 3 repeats, 2 invalid, 1 missing
