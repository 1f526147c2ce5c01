"""Population-scale batch scoring: a million patients with explanations, against the goal of one
minute on this 2-core machine, and every stage as a ratio against a baseline from the same run.

Stages, all on the same simulated table and the champion of a work directory:
- `validate_table` on the whole table (every row checked, nothing coerced);
- probability only (transform + margin + calibration: no SHAP, no interval) on one core, the
  floor of any engine;
- `Predictor.score` (probability, interval from the bootstrap members and the missing inputs,
  SHAP contributions of every factor) on one core;
- the plain engine of `ketapredict predict` (`ketapredict.batch_engine.scored_chunks`: the
  above plus eligibility, warnings, applicability, the top factors, and every patient's audit
  row prepared and committed) with 1 and with 2 worker processes;
- the CLI itself (`ketapredict predict --jobs 2`, Parquet in and out: process start, imports,
  model load, read, validate, score, audit, write) on the whole table.

Nothing asserts a time; the machine is shared, so compare ratios. Usage: `-h`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import serve_latency as sl
from threadpoolctl import threadpool_limits

from features import transform as tf
from features.schema import INPUT_FIELDS
from features.simulate import simulate_cohort
from features.validation import validate_table
from ketapredict.batch_engine import scored_chunks
from serving import registry
from serving.audit import AuditStore
from serving.batch_results import batch_scores
from training.config import TrainConfig
from training.train import train

GOAL_S = 60.0
GOAL_N = 1_000_000
SEED = 4
CHUNK = 50_000


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def chunked(frame: pd.DataFrame, fn: Callable[[pd.DataFrame], Any]) -> None:
    for start in range(0, len(frame), CHUNK):
        fn(frame.iloc[start : start + CHUNK])


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    sl.configure_environment(workdir)
    version, _ = sl.ensure_champion(workdir, args.n_train)
    predictor = registry.load_predictor(sl.CHAMPION_URI)
    n, sub = args.n, min(args.subset, args.n)
    print(f"simulating {n:,} patients …", flush=True)
    raw = simulate_cohort(n, SEED)[[f.name for f in INPUT_FIELDS]]
    data = workdir / "batch.parquet"
    raw.to_parquet(data, index=False)
    out: dict[str, Any] = {
        "n": n,
        "subset": sub,
        "model_version": version,
        "estimator": predictor.scorer.kind,
        "members": len(predictor.members),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    wall, validated = timed(lambda: validate_table(raw))
    frame = validated.frame
    out["validate_s"] = wall
    part = frame.iloc[:sub]
    with threadpool_limits(1):

        def probability_only(f: pd.DataFrame) -> None:
            predictor.calibrator(predictor.scorer.margin(tf.transform_array(f)))

        out["probability_only_s"], _ = timed(lambda: chunked(part, probability_only))
        out["score_s"], _ = timed(lambda: chunked(part, predictor.score))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for jobs, rows in ((1, part), (2, frame)):
            store = AuditStore(f"sqlite:///{Path(tmp) / f'audit{jobs}.db'}", key=bytes(32))
            # the chunks are counted and dropped, as the CLI writes and drops them
            out[f"engine_{jobs}_s"], out[f"engine_{jobs}_n"] = timed(
                lambda s=store, j=jobs, r=rows: sum(
                    len(t) for t in scored_chunks(predictor, r, s, caller="bench", jobs=j)
                )
            )
            store.close()
    out["cli_s"], out["cli_rows"] = cli_run(data, workdir)
    if args.lightgbm_rows:
        out.update(lightgbm_stage(frame.iloc[: args.lightgbm_rows], args.n_train))
    return out


def cli_run(data: Path, workdir: Path) -> tuple[float, int]:
    """Wall time and output rows of `ketapredict predict --jobs 2` on the table, with a new
    audit database (an audit table that earlier runs filled makes every insert slower)."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        env = {**os.environ, "KETAPREDICT_AUDIT_URL": f"sqlite:///{Path(tmp) / 'audit.db'}"}
        env.setdefault("KETAPREDICT_AUDIT_KEY", "0" * 64)
        scored = Path(tmp) / "scored.parquet"
        cmd = [sl.CLI, "predict", "--data", data, "--out", scored, "--jobs", "2"]
        start = time.perf_counter()
        done = subprocess.run(
            [str(c) for c in cmd], cwd=workdir, env=env, capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"ketapredict predict failed:\n{done.stderr[-2000:]}")
        return wall, len(pd.read_parquet(scored, columns=["probability"]))


def lightgbm_stage(part: pd.DataFrame, n_train: int) -> dict[str, Any]:
    """`Predictor.score` and `batch_scores` of a LightGBM model (trained here on the same
    simulated patients as the champion, without internal validation) on one core: what a
    health system whose champion is LightGBM would see."""
    lgbm_config = replace(TrainConfig(), candidates=("lightgbm",), validation_folds=0)
    training = validate_table(simulate_cohort(n_train, sl.TRAIN_SEED), training=True).frame
    print(f"training a LightGBM model on {n_train:,} patients …", flush=True)
    lgbm = train(training, lgbm_config, name="lightgbm-bench", synthetic=True).predictor
    with threadpool_limits(1):
        score_s, scores = timed(lambda: lgbm.score(part))
        table_s, _ = timed(lambda: batch_scores(lgbm, part, scores=scores))
    return {
        "lightgbm_rows": len(part),
        "lightgbm_members": len(lgbm.members),
        "lightgbm_score_s": score_s,
        "lightgbm_table_s": table_s,
    }


def report(r: dict[str, Any]) -> str:
    n, sub = r["n"], r["subset"]

    def rate(seconds: float, rows: int) -> float:
        return rows / seconds

    lines = [
        f"ketapredict batch-scale benchmark: {platform.python_version()}, {r['cpus']} CPU(s), "
        f"load average {r['load_average'][0]:.1f}; model version {r['model_version']} "
        f"({r['estimator']}, {r['members']} bootstrap members)",
        f"  validate_table, {n:,} rows            {r['validate_s']:7.1f} s "
        f"{rate(r['validate_s'], n):>10,.0f} patients/s",
        f"  probability only (no SHAP), 1 core    {r['probability_only_s']:7.1f} s "
        f"{rate(r['probability_only_s'], sub):>10,.0f} patients/s  ({sub:,} rows)",
        f"  score: interval + SHAP, 1 core        {r['score_s']:7.1f} s "
        f"{rate(r['score_s'], sub):>10,.0f} patients/s  ({sub:,} rows)",
        f"  engine (table + audit), 1 process     {r['engine_1_s']:7.1f} s "
        f"{rate(r['engine_1_s'], sub):>10,.0f} patients/s  ({sub:,} rows)",
        f"  engine (table + audit), 2 processes   {r['engine_2_s']:7.1f} s "
        f"{rate(r['engine_2_s'], n):>10,.0f} patients/s  ({n:,} rows)",
        f"  CLI predict --jobs 2, Parquet in/out  {r['cli_s']:7.1f} s "
        f"{rate(r['cli_s'], n):>10,.0f} patients/s  ({n:,} rows)",
        "",
        f"  SHAP + interval cost: score = {r['score_s'] / r['probability_only_s']:.1f}× "
        "probability only",
        f"  engine, 2 processes = {rate(r['engine_2_s'], n) / rate(r['engine_1_s'], sub):.2f}× "
        "1 process",
        f"  {GOAL_N:,} patients with explanations, audited: engine "
        f"{GOAL_N / rate(r['engine_2_s'], n):.0f} s, CLI {GOAL_N / rate(r['cli_s'], n):.0f} s "
        f"(goal {GOAL_S:.0f} s: engine {GOAL_N / rate(r['engine_2_s'], n) / GOAL_S:.2f}× the goal)",
    ]
    if "lightgbm_rows" in r:
        rows = r["lightgbm_rows"]
        per = (r["lightgbm_score_s"] + r["lightgbm_table_s"]) / rows
        lines += [
            "",
            f"  LightGBM model ({r['lightgbm_members']} bootstrap members), 1 core, "
            f"{rows:,} rows: score {rows / r['lightgbm_score_s']:,.0f} patients/s, table "
            f"{rows / r['lightgbm_table_s']:,.0f} patients/s; {GOAL_N:,} patients on "
            f"{r['cpus']} cores ≈ {GOAL_N * per / r['cpus']:.0f} s before the audit",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, help="reuse this directory's champion")
    p.add_argument("--n", type=int, default=GOAL_N, help="patients in the table")
    p.add_argument("--subset", type=int, default=200_000, help="rows for the 1-core stages")
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.add_argument(
        "--lightgbm-rows",
        type=int,
        default=0,
        help="also time a LightGBM model's score and table on this many rows (0: skip)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = run(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="kp-batch-") as tmp:
            results = run(args, Path(tmp))
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
