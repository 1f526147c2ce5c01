"""Soak: 64 concurrent clients for 60 s against a real server; errors, latency and memory.

Run with `make soak`, or `python -m tests.faults.soak_run [--clients 64] [--seconds 60]`.
Without `--url` it simulates a cohort, trains it into a fresh MLflow store in `--workdir` (kept
and reused: a second run skips training) and starts `ketapredict serve` there; with `--url`
and `--token` it loads a server that is already running (`--pid` to sample its memory).

Clients are threads, each with its own connection, sending back to back: single-patient
`/v1/predict` calls, a batch of five every 7th call and a FHIR `RiskAssessment/$predict` every
10th. Every second the resident memory of the server's process tree (`bentoml serve` and its
workers) is sampled. The report (stdout, and JSON in test-artifacts/soak.json) gives requests,
errors by kind, p50/p95/p99 latency, RSS at start, after the warm-up, at the end and its
maximum, and the growth after the warm-up; with a server it started, also whether every
answered patient has its audit row. Exit 1 when any request failed, the audit trail is short,
or memory grew by more than `--max-growth-mib` after the warm-up.

Not collected by pytest (no `test_` prefix): it takes minutes and measures, it does not assert
timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy as sa

from features.fhir_bundle import record_to_bundle
from features.records import to_records
from features.validation import validate_table
from ketapredict.tables import read_table

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("ketapredict"))
FHIR = "/v1/fhir/RiskAssessment/$predict"
MIB = 1024 * 1024


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # "kind status" or "kind Error"
    patients_answered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def errors(self) -> dict[str, int]:
        return {k: n for k, n in self.statuses.items() if not k.endswith(" 200")}


def _records(path: Path) -> list[dict[str, Any]]:
    records = to_records(validate_table(read_table(path)).frame)
    return [{k: v for k, v in r.items() if k != "site_id"} for r in records]


def _client(
    url: str,
    token: str,
    templates: list[dict[str, Any]],
    counter: itertools.count,
    deadline: float,
    tally: Tally,
) -> None:
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as http:
        while time.monotonic() < deadline:
            n = next(counter)
            size = 5 if n % 7 == 3 else 1
            patients = [
                {**templates[(n + j) % len(templates)], "patient_id": f"SOAK-{n}-{j}"}
                for j in range(size)
            ]
            kind = "fhir" if n % 10 == 5 else "predict"
            started = time.perf_counter()
            try:
                if kind == "fhir":
                    bundle = record_to_bundle(patients[0], at=dt.datetime.now(dt.UTC))
                    r = http.post(FHIR, json=bundle)
                    size = 1
                else:
                    r = http.post("/v1/predict", json={"patients": patients})
                outcome = f"{kind} {r.status_code}"
            except httpx.HTTPError as exc:
                outcome = f"{kind} {type(exc).__name__}"
            elapsed = time.perf_counter() - started
            with tally.lock:
                tally.statuses[outcome] += 1
                if outcome.endswith(" 200"):
                    tally.latencies.append(elapsed)
                    tally.patients_answered += size


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _sample(pid: int, stop: threading.Event, samples: list[tuple[float, int]]) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        samples.append((time.monotonic() - t0, _tree_rss(pid)))
        stop.wait(1.0)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")


def _prepare(workdir: Path) -> None:
    """A trained workspace in `workdir` (reused when it already has a champion)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "new.parquet").exists():
        _run([CLI, "simulate", "--n", "40", "--seed", "4", "--out", "new.parquet"], workdir)
    if not (workdir / "mlruns" / "mlflow.db").exists():
        print(f"training a model in {workdir} (once; later runs reuse it)", flush=True)
        _run([CLI, "simulate", "--n", "1200", "--seed", "3", "--out", "cohort.csv"], workdir)
        _run([CLI, "train", "--data", "cohort.csv"], workdir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(workdir: Path, token: str, audit_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "BENTOML_HOME": str(workdir / "bentoml"),
        "KETAPREDICT_API_TOKENS": token,
        "KETAPREDICT_PUBLIC_URL": url,
        "KETAPREDICT_AUDIT_URL": audit_url,
        "BENTOML_DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (workdir / "serve-soak.log").open("wb")
    process = subprocess.Popen(
        [CLI, "serve", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited ({process.returncode}); see {log.name}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("server not ready after 300 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _audit_rows(audit_url: str) -> int:
    engine = sa.create_engine(audit_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM audit_event")).scalar() or 0)
    finally:
        engine.dispose()


def soak(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir).resolve()
    _prepare(workdir)
    templates = _records(workdir / "new.parquet")
    process = None
    audit_db = workdir / "soak-audit.db"
    audit_url = f"sqlite:///{audit_db}"
    if args.url:
        url, token, pid = args.url.rstrip("/"), args.token, args.pid
    else:
        token = "soak-" + secrets.token_hex(16)
        for stale in (audit_db, *audit_db.parent.glob(f"{audit_db.name}-*")):
            stale.unlink(missing_ok=True)  # a fresh audit log: rows are counted per run
        process, url = _start(workdir, token, audit_url)
        pid = process.pid
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample, args=(pid, stop, samples), daemon=True)
    tally, counter = Tally(), itertools.count()
    try:
        if pid:
            sampler.start()
        t0 = time.monotonic()
        deadline = t0 + args.seconds
        clients = [
            threading.Thread(target=_client, args=(url, token, templates, counter, deadline, tally))
            for _ in range(args.clients)
        ]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        wall = time.monotonic() - t0
        stop.set()
        if pid:
            sampler.join()
        rows = None if args.url else _audit_rows(audit_url)
    finally:
        stop.set()
        if process is not None:
            _stop(process)
    return _report(args, tally, samples, wall, rows)


def _report(
    args: argparse.Namespace,
    tally: Tally,
    samples: list[tuple[float, int]],
    wall: float,
    rows: int | None,
) -> dict[str, Any]:
    lat = sorted(tally.latencies)
    requests = sum(tally.statuses.values())
    report: dict[str, Any] = {
        "clients": args.clients,
        "seconds": round(wall, 1),
        "requests": requests,
        "requests_per_s": round(requests / wall, 1),
        "statuses": dict(sorted(tally.statuses.items())),
        "errors": tally.errors,
        "latency_ms": {
            name: round(1000 * _percentile(lat, q), 1)
            for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
        }
        | {"max": round(1000 * lat[-1], 1) if lat else None},
        "patients_answered": tally.patients_answered,
        "audit_rows": rows,
    }
    rss = [(t, b) for t, b in samples if b]
    if rss:
        warm = [b for t, b in rss if t >= args.warmup] or [rss[-1][1]]
        report["rss_mib"] = {
            "start": round(rss[0][1] / MIB, 1),
            "after_warmup": round(warm[0] / MIB, 1),
            "end": round(rss[-1][1] / MIB, 1),
            "max": round(max(b for _, b in rss) / MIB, 1),
            "growth_after_warmup": round((rss[-1][1] - warm[0]) / MIB, 1),
            "bound": args.max_growth_mib,
            "samples": len(rss),
        }
    problems = []
    if tally.errors:
        problems.append(f"{sum(tally.errors.values())} failed requests")
    if rows is not None and rows != tally.patients_answered:
        problems.append(f"{rows} audit rows for {tally.patients_answered} answered patients")
    if rss and report["rss_mib"]["growth_after_warmup"] > args.max_growth_mib:
        problems.append("memory grew beyond the bound after the warm-up")
    report["problems"] = problems
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--warmup", type=float, default=10, help="seconds before the RSS baseline")
    p.add_argument("--max-growth-mib", type=float, default=64)
    p.add_argument("--workdir", default=str(ROOT / "data" / "soak"))
    p.add_argument("--url", help="a running server (default: start one in --workdir)")
    p.add_argument("--token", help="its API token (with --url)")
    p.add_argument("--pid", type=int, help="its `bentoml serve` pid, to sample memory")
    args = p.parse_args(argv)
    if args.url and not args.token:
        p.error("--url needs --token")
    report = soak(args)
    out = ROOT / "test-artifacts" / "soak.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print("soak: " + ("; ".join(report["problems"]) if report["problems"] else "passed"))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
