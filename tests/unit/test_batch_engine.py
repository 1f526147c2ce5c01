"""The plain batch engine: chunks in worker processes give the in-process table, all audited."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from features.schema import INPUT_FIELDS
from features.simulate import simulate_cohort
from features.validation import validate_table
from ketapredict.batch_engine import scored_chunks
from serving.audit import AuditStore, AuditUnavailable
from serving.audit.keys import patient_hash
from serving.predictor import Predictor
from serving.results import batch_table

KEY = bytes(range(32))


@pytest.fixture
def predictor(logistic_predictor: Predictor) -> Predictor:
    return logistic_predictor


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return validate_table(simulate_cohort(1000, seed=11)[[f.name for f in INPUT_FIELDS]]).frame


@pytest.mark.parametrize("jobs", [1, 2])
def test_chunks_in_workers_equal_one_pass_and_every_patient_is_audited(
    predictor, frame: pd.DataFrame, tmp_path: Path, jobs: int
) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", key=KEY)
    chunks = list(scored_chunks(predictor, frame, store, caller="test", jobs=jobs, chunk_rows=300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    out = pd.concat(chunks, ignore_index=True)
    pd.testing.assert_frame_equal(out, batch_table(predictor, frame))
    rows = store.rows(datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
    assert len(rows) == len(frame)
    assert {r.patient_key for r in rows} == {
        patient_hash(p, KEY) for p in frame["patient_id"].astype(str)
    }
    assert len({r.request_id for r in rows}) == 1


def test_an_unwritable_store_stops_the_batch_before_any_result(
    predictor, frame: pd.DataFrame, tmp_path: Path
) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}", key=KEY)
    store.engine.dispose()
    (tmp_path / "audit.db").unlink()
    (tmp_path / "audit.db").mkdir()  # the database file is now a directory: writes fail
    with pytest.raises(AuditUnavailable):
        list(scored_chunks(predictor, frame, store, caller="test", jobs=1, chunk_rows=300))
