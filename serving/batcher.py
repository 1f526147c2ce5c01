"""Natural batching for the prediction route: requests that arrive while a batch is being scored
wait, and go together as the next batch.

Why not BentoML's `batchable=True`: a batchable API receives the inputs of many requests as one
argument with one request context, but every prediction must be audited under *its* caller and
request id, and BentoML's dispatcher also holds a lone request back to wait for company. Here
there is no timer: an idle service scores a request at once (a single patient waits for
nothing), and under load the requests queued behind a running batch share the next one, which
spreads the fixed costs (pandas set-up, the audit commit) over every patient in it. One batch
runs at a time per worker, so the model keeps its single thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from starlette.concurrency import run_in_threadpool

from features.validation import InvalidInput, validate_records
from serving.audit import AuditStore, AuditUnavailable
from serving.audit.rows import Prepared
from serving.predictor import Predictor
from serving.results import explain, model_info

#: The environment variable that chooses how `/v1/predict` runs, and the values it takes.
BATCHING_ENV = "KETAPREDICT_BATCHING"
BATCHING_MODES = ("natural", "off")

T = TypeVar("T")
R = TypeVar("R")


def natural_batching(environ: Mapping[str, str]) -> bool:
    """Whether `/v1/predict` batches naturally: yes unless `KETAPREDICT_BATCHING=off`.

    Unset or empty means the default; any other value is refused rather than read as "off":
    a typo must not quietly change how the service behaves under load.
    """
    mode = (environ.get(BATCHING_ENV) or "natural").strip().lower()
    if mode not in BATCHING_MODES:
        raise ValueError(f"{BATCHING_ENV} must be one of {', '.join(BATCHING_MODES)}, not {mode!r}")
    return mode == "natural"


@dataclass
class NaturalBatcher(Generic[T, R]):
    """Run `work` on lists of submitted items, one list at a time, in a worker thread.

    `work(items)` returns one entry per item: its result, or an exception for that item alone
    (the others still get theirs). An exception raised by `work` itself fails the whole batch.
    `size(item)` counts patients, so a batch stays within `max_size` unless one item alone
    exceeds it.
    """

    work: Callable[[list[T]], Sequence[R | BaseException]]
    max_size: int = 256
    size: Callable[[T], int] = lambda _item: 1
    on_batch: Callable[[int, int], None] | None = None
    """Called with (items, patients) per batch: for metrics."""
    _queue: list[tuple[T, asyncio.Future[R]]] = field(default_factory=list, init=False)
    _running: bool = field(default=False, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if not self._running:
            self._running = True
            # the loop holds tasks weakly: keep the running batch's task alive here
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _next_batch(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch, total = [], 0
        while self._queue:
            n = self.size(self._queue[0][0])
            if batch and total + n > self.max_size:
                break
            batch.append(self._queue.pop(0))
            total += n
        return batch

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._next_batch()
                items = [item for item, _ in batch]
                if self.on_batch is not None:
                    self.on_batch(len(items), sum(self.size(i) for i in items))
                try:
                    results = await run_in_threadpool(self.work, items)
                    if len(results) != len(batch):
                        raise RuntimeError("batch work returned the wrong number of results")
                except BaseException as exc:  # the whole batch failed: tell every caller
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # the caller went away
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._running = False


@dataclass(frozen=True)
class Submission:
    """One request's patients, with who asked and the request id its audit rows carry."""

    records: list[dict[str, Any]]
    caller: str
    request_id: str


def predict_and_audit(
    predictor: Predictor, store: AuditStore, route: str, subs: list[Submission]
) -> list[list[dict[str, Any]] | BaseException]:
    """Every submission's predictions, audited in one transaction for the whole batch.

    The patients of all submissions are validated and explained as one frame (every step is
    row-wise, so each patient gets exactly the numbers it would get alone); each submission's
    audit rows carry its own caller and request id. When the combined check fails (a bad
    record, or the same pseudonym in two requests), each submission is handled on its own, so
    one request's problem is never another's. AuditUnavailable fails the whole batch: nothing
    is answered that was not recorded.
    """
    if len(subs) > 1:
        try:
            frame = validate_records(
                [r for s in subs for r in s.records], max_records=sum(len(s.records) for s in subs)
            ).frame
        except InvalidInput:
            return [_alone(predictor, store, route, s) for s in subs]
    else:
        frame = validate_records(subs[0].records).frame
    predictions = explain(predictor, frame)
    model = model_info(predictor)
    rows: list[Prepared] = []
    out: list[list[dict[str, Any]] | BaseException] = []
    at = 0
    for s in subs:
        part = predictions[at : at + len(s.records)]
        at += len(s.records)
        rows.append(
            store.prepare(
                caller=s.caller,
                route=route,
                model_name=model["name"],
                model_version=model["version"],
                request_id=s.request_id,
                patients=[
                    (str(r["patient_id"]), r, p) for r, p in zip(s.records, part, strict=True)
                ],
            )
        )
        out.append(part)
    store.write(rows, request_id=subs[0].request_id)
    return out


def _alone(
    predictor: Predictor, store: AuditStore, route: str, sub: Submission
) -> list[dict[str, Any]] | BaseException:
    try:
        result = predict_and_audit(predictor, store, route, [sub])[0]
    except AuditUnavailable:
        raise
    except Exception as exc:  # this request's own problem, answered to it alone
        return exc
    return result
