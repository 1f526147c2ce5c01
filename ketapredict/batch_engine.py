"""The plain batch engine of `ketapredict predict`: chunks, worker processes, audit first.

A validated table is cut into chunks; each chunk is scored (`serving.batch_results.batch_scores`,
explanations included) and its audit rows are prepared (keyed hashes, output summaries) in a
worker process, so the CPU-heavy parts run on every core. The parent commits each chunk's audit
rows, in chunk order, before it hands on that chunk's results; the CLI streams them into a
temporary file and moves it into place only after every row is audited: an answer may go
unwritten, but never unaudited, and memory holds a few chunks, not the whole output. Worker
processes are forked after the model and the table are loaded, so they share them instead of
copying.
"""

from __future__ import annotations

import multiprocessing as mp
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
from threadpoolctl import threadpool_limits

from serving.audit import AuditStore
from serving.audit.rows import Prepared
from serving.batch_results import batch_scores
from serving.predictor import Predictor
from serving.results import model_info

#: Rows per chunk: large enough that per-chunk costs vanish, small enough that a worker's
#: intermediate arrays stay well below a gigabyte.
CHUNK_ROWS = 50_000


@dataclass(frozen=True)
class Job:
    """What every chunk needs; set once in the parent and inherited by forked workers."""

    predictor: Predictor
    frame: pd.DataFrame
    store: AuditStore
    caller: str
    route: str
    request_id: str


_JOB: Job | None = None


def _score_chunk(bounds: tuple[int, int]) -> tuple[pd.DataFrame, Prepared]:
    """Score rows [start, stop) and prepare their audit rows (no database access here)."""
    if _JOB is None:
        raise RuntimeError("batch worker started without a job")
    start, stop = bounds
    frame = _JOB.frame.iloc[start:stop]
    with threadpool_limits(1):
        table, outputs = batch_scores(_JOB.predictor, frame)
    model = model_info(_JOB.predictor)
    rows = _JOB.store.prepare_table(
        caller=_JOB.caller,
        route=_JOB.route,
        model_name=model["name"],
        model_version=model["version"],
        request_id=_JOB.request_id,
        frame=frame,
        outputs=outputs,
    )
    return table, rows


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _results(job: Job, jobs: int, size: int) -> Iterator[tuple[pd.DataFrame, Prepared]]:
    global _JOB  # noqa: PLW0603 - the one hand-over to forked workers
    _JOB = job
    bounds = _chunks(len(job.frame), size)
    try:
        if jobs <= 1 or len(bounds) <= 1:
            yield from map(_score_chunk, bounds)
            return
        with mp.get_context("fork").Pool(min(jobs, len(bounds))) as pool:
            yield from pool.imap(_score_chunk, bounds)
    finally:
        _JOB = None


def scored_chunks(
    predictor: Predictor,
    frame: pd.DataFrame,
    store: AuditStore,
    *,
    caller: str,
    route: str = "cli:predict",
    jobs: int = 1,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[pd.DataFrame]:
    """The output table of a validated frame, a chunk at a time, in row order; each chunk is
    yielded only after its audit rows are committed.

    Raises `AuditUnavailable` when the store cannot commit a chunk; the chunks committed
    before it stay in the log, which is the truth: they were scored.
    """
    job = Job(predictor, frame, store, caller, route, str(uuid.uuid4()))
    for table, rows in _results(job, jobs, chunk_rows):
        store.write(rows, request_id=job.request_id)
        yield table
