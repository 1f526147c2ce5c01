"""Streaming the batch output into one file: same content as a one-shot write, atomic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from ketapredict.tables import read_table, write_table_chunks

WARNING = '[{"code": "missing_input", "message": "a, b"}]'


def _table(n: int, start: int = 0) -> pd.DataFrame:
    rows = range(start, start + n)
    return pd.DataFrame(
        {
            "patient_id": [f"P-{i:04d}" for i in rows],
            "probability": [i / 1000 + 1e-9 for i in rows],
            "typical": [i % 3 != 0 for i in rows],
            "warnings": [
                '[{"code": "missing_input", "message": "a, b"}]' if i % 2 else "[]" for i in rows
            ],
        }
    )


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_chunks_make_the_file_a_one_shot_write_makes(tmp_path: Path, suffix: str) -> None:
    chunks = [_table(5), _table(3, 5), _table(4, 8)]
    whole = pd.concat(chunks, ignore_index=True)
    out = tmp_path / f"scored{suffix}"
    assert write_table_chunks(iter(chunks), out) == 12
    one_shot = tmp_path / f"one{suffix}"
    if suffix == ".csv":
        whole.to_csv(one_shot, index=False)
        assert out.read_text() == one_shot.read_text()
    else:
        pd.testing.assert_frame_equal(pd.read_parquet(out), whole, check_exact=True)
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_failure_midway_leaves_the_old_file_and_no_partial_one(
    tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"scored{suffix}"
    write_table_chunks([_table(2)], out)
    before = out.read_bytes()

    def failing() -> Iterator[pd.DataFrame]:
        yield _table(5)
        raise RuntimeError("audit store gone")

    with pytest.raises(RuntimeError, match="audit store gone"):
        write_table_chunks(failing(), out)
    assert out.read_bytes() == before
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_chunk_that_does_not_fit_the_first_ones_schema_is_an_error(tmp_path: Path) -> None:
    odd = _table(2, 5)
    odd["probability"] = ["high", "low"]  # text where the first chunk had numbers
    with pytest.raises(Exception, match=r"probability|double|float") as raised:
        write_table_chunks([_table(5), odd], tmp_path / "scored.parquet")
    # the output holds patient ids and values: the message names the column, not the cell
    assert not any(cell in str(raised.value) for cell in ("high", "low", "P-00"))
    assert not (tmp_path / "scored.parquet").exists()


def test_no_chunks_write_an_empty_readable_file(tmp_path: Path) -> None:
    out = tmp_path / "scored.parquet"
    assert write_table_chunks([], out) == 0
    assert read_table(out).empty
