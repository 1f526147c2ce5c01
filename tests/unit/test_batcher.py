"""Natural batching: grouping, per-request results and errors, and audited batch predictions."""

from __future__ import annotations

import asyncio
import gc
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from features.records import to_records
from features.schema import INPUT_FIELDS
from features.simulate import simulate_cohort
from features.validation import InvalidInput, validate_records, validate_table
from serving.audit import AuditStore
from serving.batcher import NaturalBatcher, Submission, natural_batching, predict_and_audit
from serving.predictor import Predictor
from serving.results import explain

KEY = bytes(range(32))


def _run(batcher: NaturalBatcher, items: list, stagger: float = 0.0) -> list:
    """Submit the first item, then (after `stagger` s) the rest at once; gather outcomes."""

    async def main() -> list:
        first = asyncio.ensure_future(batcher.submit(items[0]))
        await asyncio.sleep(stagger)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in items[1:]]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    return asyncio.run(main())


def test_requests_queued_behind_a_running_batch_go_together() -> None:
    calls: list[list[int]] = []

    def work(items: list[int]) -> list[int]:
        calls.append(items)
        time.sleep(0.05)
        return [i * 10 for i in items]

    out = _run(NaturalBatcher(work, max_size=100), list(range(10)), stagger=0.01)
    assert out == [i * 10 for i in range(10)]
    assert calls == [[0], list(range(1, 10))], "a lone request goes at once; the rest wait"
    calls.clear()
    out = _run(NaturalBatcher(work, max_size=4), list(range(10)), stagger=0.01)
    assert out == [i * 10 for i in range(10)]
    assert [len(c) for c in calls] == [1, 4, 4, 1]


def test_an_item_error_reaches_its_caller_alone_and_a_batch_error_reaches_all() -> None:
    def work(items: list[int]) -> list[int | BaseException]:
        if 99 in items:
            raise RuntimeError("store down")
        return [ValueError(f"bad {i}") if i == 3 else i for i in items]

    out = _run(NaturalBatcher(work), [1, 2, 3, 4])
    assert out[:2] == [1, 2] and out[3] == 4
    assert isinstance(out[2], ValueError)
    out = _run(NaturalBatcher(work), [1, 99, 5], stagger=0.0)
    assert all(isinstance(o, RuntimeError) for o in out[1:])


@pytest.fixture
def predictor(logistic_predictor: Predictor) -> Predictor:
    return logistic_predictor


@pytest.fixture(scope="module")
def records() -> list[dict]:
    raw = simulate_cohort(12, seed=12)[[f.name for f in INPUT_FIELDS]]
    return to_records(validate_table(raw).frame)


def test_a_batch_answers_each_request_as_if_alone_and_audits_it_under_its_id(
    predictor, records: list[dict], tmp_path: Path
) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", key=KEY)
    subs = [
        Submission(records[0:1], "token:a", "req-1"),
        Submission(records[1:5], "token:b", "req-2"),
        Submission(records[5:12], "token:a", "req-3"),
    ]
    out = predict_and_audit(predictor, store, "/v1/predict", subs)
    for s, answer in zip(subs, out, strict=True):
        assert answer == explain(predictor, validate_records(s.records).frame)
    rows = store.rows(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    assert [r.request_id for r in rows].count("req-2") == 4
    assert {(r.request_id, r.caller) for r in rows} == {
        ("req-1", "token:a"),
        ("req-2", "token:b"),
        ("req-3", "token:a"),
    }


def test_one_bad_request_or_a_shared_pseudonym_harms_no_other(
    predictor, records: list[dict], tmp_path: Path
) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", key=KEY)
    bad = {**records[2], "hdd_90d": 120}
    subs = [
        Submission(records[0:2], "token:a", "req-1"),
        Submission([bad], "token:b", "req-2"),
        Submission(records[0:1], "token:c", "req-3"),  # same pseudonym as in req-1
    ]
    out = predict_and_audit(predictor, store, "/v1/predict", subs)
    assert isinstance(out[1], InvalidInput)
    assert out[0] == explain(predictor, validate_records(records[0:2]).frame)
    assert out[2] == explain(predictor, validate_records(records[0:1]).frame)
    rows = store.rows(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    assert sorted(r.request_id for r in rows) == ["req-1", "req-1", "req-3"]


def test_a_running_batch_survives_garbage_collection() -> None:
    """The event loop keeps only weak references to tasks; garbage collection while a batch
    runs must not lose it or its callers' answers."""

    def work(items: list[int]) -> list[int]:
        time.sleep(0.2)
        return items

    batcher = NaturalBatcher(work)

    async def main() -> list:
        pending = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        for _ in range(5):
            await asyncio.sleep(0.02)
            gc.collect()
        return await asyncio.wait_for(asyncio.gather(*pending), timeout=5)

    assert asyncio.run(main()) == [0, 1, 2]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, True),
        ({"KETAPREDICT_BATCHING": " Natural "}, True),
        ({"KETAPREDICT_BATCHING": "off"}, False),
    ],
)
def test_batching_is_on_unless_switched_off(environ: dict[str, str], expected: bool) -> None:
    assert natural_batching(environ) is expected


@pytest.mark.parametrize("value", ["no", "0", "naturall", "on"])
def test_an_unknown_batching_mode_is_refused_not_read_as_off(value: str) -> None:
    with pytest.raises(ValueError, match="KETAPREDICT_BATCHING must be one of natural, off"):
        natural_batching({"KETAPREDICT_BATCHING": value})
