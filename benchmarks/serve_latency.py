"""Serving latency and batch throughput, each figure a ratio against a baseline from the same run.

Single patient, predict + explain: `POST /v1/predict` on the real BentoML server (a subprocess
on 127.0.0.1, persistent keep-alive client) against the same call in-process
(`validate_records` + `explain`, the floor), the in-process call wrapped in the API's pydantic
request/response models, and a bare HTTP round trip to `/healthz`. The four calls are
interleaved patient by patient in rotating order, so machine noise lands on all of them alike.

Batch: wall time of `ketapredict predict` with explanations (process start, imports, model load,
CSV read, scoring, CSV write) against in-process `validate_table` + `batch_scores` on the same
table, plus a one-patient CLI run that measures the CLI's fixed cost.

The machine is shared and noisy, so nothing here asserts a time: results are printed (and
optionally written as JSON). The script only talks to 127.0.0.1, downloads nothing, and stops
the server it started in every case. Usage: `.venv/bin/python benchmarks/serve_latency.py -h`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil
from pydantic import create_model

from features.records import to_records
from features.simulate import simulate_cohort, write_cohort
from features.validation import canonical_columns, validate_records, validate_table
from ketapredict.tables import read_table
from serving import registry
from serving.api_models import PatientBatch, PredictResponse
from serving.batch_results import batch_scores
from serving.predictor import Predictor
from serving.results import explain, model_info

HOST = "127.0.0.1"
CHAMPION_URI = f"models:/{registry.REGISTERED_MODEL}@{registry.CHAMPION}"
CLI = Path(sys.executable).with_name("ketapredict")
TRAIN_SEED, REQUEST_SEED, BATCH_SEED = 1, 2, 3
WARMUP_CALLS = 20
READY_TIMEOUT_S = 120.0  # bounded wait for /readyz
STOP_GRACE_S = 15.0  # SIGTERM, then SIGKILL
TRAIN_TIMEOUT_S = 1800.0  # generous bounds so the benchmark always stops by itself
PREDICT_TIMEOUT_S = 900.0
HTTP_TIMEOUT_S = 60.0
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "DO_NOT_TRACK": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "GIT_PYTHON_REFRESH": "quiet",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
#: What BentoML validates a `/v1/predict` body into before calling the service method.
RequestModel = create_model("RequestModel", patients=(PatientBatch, ...))


# --------------------------------------------------------------------------------- statistics


def summary_ms(samples_ns: Sequence[int]) -> dict[str, float]:
    ms = np.asarray(samples_ns, dtype=float) / 1e6
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "n": len(ms),
    }


# --------------------------------------------------------------------------------- processes


def run_logged(cmd: Sequence[object], log: Path, *, cwd: Path, timeout: float) -> float:
    """Run a command with its output in `log`; return its wall time in seconds."""
    with log.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.run(
            [str(c) for c in cmd],
            check=False,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[1]} exited with {proc.returncode}:\n{tail(log)}")
    return wall


def tail(log: Path, lines: int = 25) -> str:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise SystemExit(f"port {port} on {HOST} is in use: {exc}") from exc


@contextlib.contextmanager
def running_server(workdir: Path, port: int) -> Iterator[tuple[str, float]]:
    """`ketapredict serve` in its own process group; yields (base URL, seconds until ready)."""
    log_path = workdir / "serve.log"
    base = f"http://{HOST}:{port}"
    with log_path.open("wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(CLI), "serve", "--host", HOST, "--port", str(port)],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_ready(proc, base, log_path)
            yield base, time.perf_counter() - start
        finally:
            stop_group(proc)


def wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(base_url=base, trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{tail(log)}")
            with contextlib.suppress(httpx.TransportError):
                if client.get("/readyz").status_code == 200:
                    return
            time.sleep(0.25)
    raise RuntimeError(f"server not ready after {READY_TIMEOUT_S:.0f} s:\n{tail(log)}")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server: SIGTERM its process group, then SIGKILL whatever is left.

    BentoML starts its workers in sessions of their own, so they are outside the server's
    process group; they are found as its descendants before signalling and waited for too.
    """
    try:
        workers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _, alive = psutil.wait_procs(workers, timeout=STOP_GRACE_S)
    for worker in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    psutil.wait_procs(alive, timeout=STOP_GRACE_S)


# --------------------------------------------------------------------------------- model


#: A throwaway API token for the benchmark's own server (requests must authenticate, as in use).
BENCH_TOKEN = "bench-" + secrets.token_hex(16)


def configure_environment(workdir: Path) -> None:
    """Point this process and its children at the work directory's stores, quietly."""
    os.environ.update(QUIET_ENV)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"
    os.environ["BENTOML_HOME"] = str(workdir / "bentoml")
    os.environ["KETAPREDICT_API_TOKENS"] = BENCH_TOKEN
    (workdir / "mlruns").mkdir(parents=True, exist_ok=True)
    registry.configure_uri_only()


def ensure_champion(workdir: Path, n_train: int) -> tuple[str, float | None]:
    """Reuse the champion in the work directory's store, or simulate and train one."""
    if (workdir / "mlruns" / "mlflow.db").is_file():
        version = registry.registry_version(registry.CHAMPION)
        if version is not None:
            return version, None
    data = workdir / "train.csv"
    write_cohort(simulate_cohort(n_train, TRAIN_SEED), data)
    wall = run_logged(
        [CLI, "train", "--data", data], workdir / "train.log", cwd=workdir, timeout=TRAIN_TIMEOUT_S
    )
    version = registry.registry_version(registry.CHAMPION)
    if version is None:
        raise RuntimeError(f"training registered no champion:\n{tail(workdir / 'train.log')}")
    return version, wall


# --------------------------------------------------------------------------------- measurements


def via_api_models(predictor: Predictor, body: bytes) -> str:
    """The service method with BentoML's request validation and response encoding around it."""
    patients = RequestModel.model_validate_json(body).patients
    frame = validate_records([p.model_dump() for p in patients]).frame
    response = PredictResponse(
        predictions=explain(predictor, frame),
        model=model_info(predictor),
        synthetic_data=bool(predictor.metadata.get("synthetic_data", False)),
        notice="decision support, not a decision",
    )
    return response.model_dump_json()


def check_same(http: dict[str, Any], local: dict[str, Any]) -> None:
    """The server and the in-process call must answer the same numbers for the same patient."""
    if http["patient_id"] != local["patient_id"] or not math.isclose(
        http["probability"], local["probability"], rel_tol=1e-9, abs_tol=1e-12
    ):
        raise RuntimeError(
            f"server and in-process disagree for {local['patient_id']}: "
            f"{http['probability']} vs {local['probability']}"
        )


def measure_single(
    client: httpx.Client, predictor: Predictor, records: list[dict[str, Any]]
) -> dict[str, Any]:
    """Per patient, the four calls in an order that rotates each round.

    Rotation spreads position effects evenly: a call that follows a wait (this process idles
    while the server works, and the server while this process works) measured slower than the
    same call right after other work, presumably colder caches.
    """
    bodies = [json.dumps({"patients": [r]}).encode() for r in records]
    headers = {"content-type": "application/json"}
    calls: dict[str, Callable[[int], Any]] = {
        "http": lambda k: client.post("/v1/predict", content=bodies[k], headers=headers),
        "in_process": lambda k: explain(predictor, validate_records([records[k]]).frame),
        "api_models": lambda k: via_api_models(predictor, bodies[k]),
        "healthz": lambda k: client.get("/healthz"),
    }
    names = list(calls)
    for i in range(WARMUP_CALLS):
        for name in names:
            calls[name](i % len(records))
    samples: dict[str, list[int]] = {name: [] for name in names}
    gc.collect()
    for k in range(len(records)):
        answers = {}
        for name in names[k % 4 :] + names[: k % 4]:
            start = time.perf_counter_ns()
            answers[name] = calls[name](k)
            samples[name].append(time.perf_counter_ns() - start)
        answers["healthz"].raise_for_status()
        answers["http"].raise_for_status()
        check_same(answers["http"].json()["predictions"][0], answers["in_process"][0])
    return {name: summary_ms(s) for name, s in samples.items()}


def measure_batch(workdir: Path, predictor: Predictor, n: int) -> dict[str, Any]:
    frame = simulate_cohort(n, BATCH_SEED)[list(canonical_columns())]
    big, one = workdir / f"batch-{n}.csv", workdir / "batch-1.csv"
    frame.to_csv(big, index=False)
    frame.head(1).to_csv(one, index=False)
    scored = workdir / "scored.csv"

    def cli(data: Path, out: Path) -> float:
        cmd = [CLI, "predict", "--data", data, "--out", out]
        return run_logged(cmd, workdir / "predict.log", cwd=workdir, timeout=PREDICT_TIMEOUT_S)

    cli_one_s = cli(one, workdir / "scored-1.csv")
    cli_s = cli(big, scored)
    raw = read_table(big)
    gc.collect()
    start = time.perf_counter()
    table, _ = batch_scores(predictor, validate_table(raw).frame)
    in_process_s = time.perf_counter() - start

    from_cli = pd.read_csv(scored)
    if len(from_cli) != n or not np.allclose(from_cli["probability"], table["probability"]):
        raise RuntimeError("`ketapredict predict` and in-process batch scoring disagree")
    marginal = (n - 1) / (cli_s - cli_one_s) if n > 1 and cli_s > cli_one_s else None
    return {
        "patients": n,
        "cli_wall_s": cli_s,
        "cli_patients_per_s": n / cli_s,
        "cli_one_patient_wall_s": cli_one_s,
        "cli_marginal_patients_per_s": marginal,
        "in_process_s": in_process_s,
        "in_process_patients_per_s": n / in_process_s,
    }


# --------------------------------------------------------------------------------- report


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b > 0 else "n/a"


def report(results: dict[str, Any]) -> str:
    env, m = results["environment"], results["model"]
    lines = [
        f"ketapredict serving benchmark: one run on {env['cpus']} CPU(s), Python {env['python']}; "
        f"model {m['name']} version {m['version']} ({m['estimator']}, "
        f"{m['bootstrap_members']} bootstrap members)",
        "",
        *single_lines(results["single_patient"]),
        "",
        *batch_lines(results),
    ]
    if not env["bytecode_cached"]:
        lines += [
            "",
            "note: the venv holds no compiled bytecode and this process may not write any, so "
            "every new process",
            "      compiles its imports from source; the CLI and start-up figures include that "
            "(`make setup` compiles it).",
        ]
    return "\n".join(lines)


def single_lines(s: dict[str, Any]) -> list[str]:
    http, floor, api, health = s["http"], s["in_process"], s["api_models"], s["healthz"]
    rows = [
        ("HTTP POST /v1/predict (keep-alive)", http),
        ("in-process validate_records + explain", floor),
        ("in-process + API pydantic models, JSON", api),
        ("HTTP GET /healthz (bare round trip)", health),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [
        f"Single patient, predict + explain: {http['n']} requests, each a different patient, "
        f"after {WARMUP_CALLS} warm-up rounds; the four calls interleaved, order rotating",
        f"  {'':{width}}  {'p50':>9} {'p99':>9} {'mean':>9}",
        *(
            f"  {name:{width}}  {r['p50_ms']:6.2f} ms {r['p99_ms']:6.2f} ms {r['mean_ms']:6.2f} ms"
            for name, r in rows
        ),
        "",
        *(
            f"  HTTP {k} {http[f'{k}_ms']:.2f} ms = {ratio(http[f'{k}_ms'], floor[f'{k}_ms'])} "
            f"in-process {k} {floor[f'{k}_ms']:.2f} ms"
            for k in ("p50", "p99", "mean")
        ),
    ]
    overhead = http["p50_ms"] - floor["p50_ms"]
    pydantic_ms = api["p50_ms"] - floor["p50_ms"]
    rest = overhead - pydantic_ms - health["p50_ms"]
    lines += [
        f"  HTTP overhead over /healthz p50 = +{http['p50_ms'] - health['p50_ms']:.2f} ms; "
        f"/healthz p50 {health['p50_ms']:.2f} ms = {ratio(health['p50_ms'], http['p50_ms'])} "
        "HTTP p50",
        f"  HTTP p50 - in-process p50 = +{overhead:.2f} ms "
        f"({ratio(overhead, http['p50_ms'])} HTTP p50), as differences of medians:",
        f"    bare round trip {health['p50_ms']:.2f} ms, pydantic request/response models "
        f"{pydantic_ms:+.2f} ms, the rest (BentoML dispatch) {rest:+.2f} ms",
    ]
    return lines


def batch_lines(results: dict[str, Any]) -> list[str]:
    b = results["batch"]
    per_patient_ms = 1e3 / b["in_process_patients_per_s"]
    single_ms = results["single_patient"]["in_process"]["p50_ms"]
    lines = [
        f"Batch, `ketapredict predict` with explanations: {b['patients']:,} patients",
        f"  CLI (process start, imports, model load, read, score, write) {b['cli_wall_s']:7.2f} s "
        f"{b['cli_patients_per_s']:9,.0f} patients/s",
        f"  CLI on one patient (its fixed cost)                          "
        f"{b['cli_one_patient_wall_s']:7.2f} s",
        f"  in-process validate_table + batch_scores                     "
        f"{b['in_process_s']:7.2f} s {b['in_process_patients_per_s']:9,.0f} patients/s",
        "",
        f"  CLI {b['cli_patients_per_s']:,.0f} patients/s = "
        f"{ratio(b['cli_patients_per_s'], b['in_process_patients_per_s'])} "
        f"in-process {b['in_process_patients_per_s']:,.0f} patients/s",
    ]
    if b["cli_marginal_patients_per_s"] is not None:
        marginal = b["cli_marginal_patients_per_s"]
        lines.append(
            f"  CLI without its fixed cost {marginal:,.0f} patients/s = "
            f"{ratio(marginal, b['in_process_patients_per_s'])} in-process"
        )
    startup = results["server_startup_s"]
    lines += [
        f"  in-process single-patient p50 {single_ms:.2f} ms = "
        f"{ratio(single_ms, per_patient_ms)} the per-patient cost in batch {per_patient_ms:.3f} ms",
        f"  serve start-up to /readyz {startup:.1f} s = "
        f"{ratio(startup, b['cli_one_patient_wall_s'])} the one-patient CLI run",
    ]
    return lines


# --------------------------------------------------------------------------------- main


def bytecode_cached() -> bool:
    """Whether the heavy imports have compiled bytecode (else each process compiles them)."""
    for package in ("pandas", "mlflow", "lightgbm", "bentoml"):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            continue
        if not Path(importlib.util.cache_from_source(spec.origin)).is_file():
            return False
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, help="reused if it holds a champion (default: temp)")
    p.add_argument("--n-train", type=int, default=3000, help="patients to train on")
    p.add_argument("--requests", type=int, default=300, help="single-patient requests")
    p.add_argument("--batch", type=int, default=20000, help="patients in the batch table")
    p.add_argument("--port", type=int, help="server port on 127.0.0.1 (default: a free one)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = p.parse_args(argv)
    for name in ("n_train", "requests", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    configure_environment(workdir)
    port = args.port or free_port()
    check_port_free(port)
    print(f"work directory {workdir}; server on {HOST}:{port}", flush=True)
    version, train_s = ensure_champion(workdir, args.n_train)
    trained = f"trained in {train_s:.0f} s" if train_s is not None else "reused"
    print(f"champion: version {version} ({trained})", flush=True)
    predictor = registry.load_predictor(CHAMPION_URI)
    records = to_records(simulate_cohort(args.requests, REQUEST_SEED))

    with (
        running_server(workdir, port) as (base, startup_s),
        httpx.Client(
            base_url=base,
            trust_env=False,
            timeout=HTTP_TIMEOUT_S,
            headers={"Authorization": f"Bearer {BENCH_TOKEN}"},
        ) as client,
    ):
        print(f"server ready in {startup_s:.1f} s; measuring single-patient calls", flush=True)
        single = measure_single(client, predictor, records)
    print(f"server stopped; scoring {args.batch:,} patients in batch", flush=True)
    batch = measure_batch(workdir, predictor, args.batch)
    meta = predictor.metadata
    return {
        "environment": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "bytecode_cached": bytecode_cached(),
        },
        "config": {
            "n_train": args.n_train,
            "requests": args.requests,
            "batch": args.batch,
            "warmup_calls": WARMUP_CALLS,
            "seeds": {"train": TRAIN_SEED, "requests": REQUEST_SEED, "batch": BATCH_SEED},
            "model_trained_in_this_run": train_s is not None,
        },
        "model": {
            "name": meta.get("name", registry.REGISTERED_MODEL),
            "version": version,
            "estimator": meta.get("estimator", predictor.scorer.kind),
            "bootstrap_members": len(predictor.members),
        },
        "server_startup_s": startup_s,
        "single_patient": single,
        "batch": batch,
    }


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the `finally` that stops the server


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="ketapredict-bench-")) if temporary else args.workdir
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        results = run(args, workdir)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    results["total_s"] = time.perf_counter() - started
    print()
    print(report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
