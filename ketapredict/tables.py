"""Reading and writing patient tables (CSV or Parquet, chosen by the file extension)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.validation import reader_dtypes

SUFFIXES = (".csv", ".parquet")


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path.name}: unsupported extension {suffix or '(none)'!r}; use .csv or .parquet"
        )
    return suffix


def read_table(path: Path) -> pd.DataFrame:
    """The table as pandas infers it, text fields kept as text (so "007" stays "007").

    The schema's validation then decides what is acceptable; nothing is coerced here.
    """
    if _check_suffix(path) == ".csv":
        return pd.read_csv(path, dtype=reader_dtypes())
    return pd.read_parquet(path)


def write_table_chunks(chunks: Iterable[pd.DataFrame], path: Path) -> int:
    """Write tables with equal columns as one file, atomically, holding one at a time.

    Parquet gets a row group per chunk with the first chunk's schema (a later chunk that does
    not fit it is an error, not a conversion); CSV gets one header. The file appears under
    `path` only after the last chunk, so a failure midway leaves the old file, or none.
    Returns the number of rows written.
    """
    suffix = _check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=suffix, prefix=".tmp-")
    os.close(fd)
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for i, chunk in enumerate(chunks):
            if suffix == ".csv":
                chunk.to_csv(tmp, index=False, mode="w" if i == 0 else "a", header=i == 0)
            else:
                table = _arrow(chunk, writer.schema if writer else None, i)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            rows += len(chunk)
        if writer is not None:
            writer.close()
            writer = None
        elif suffix == ".parquet":  # no chunk at all: still a readable, empty file
            pd.DataFrame().to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        if writer is not None:
            writer.close()
        Path(tmp).unlink(missing_ok=True)
        raise
    return rows


def _arrow(chunk: pd.DataFrame, schema: pa.Schema | None, i: int) -> pa.Table:
    """The chunk as Arrow, in the first chunk's schema; a mismatch names the column and types.

    Arrow's own message quotes the cell it could not convert, and the output table holds
    patient ids and factor values, which must not reach an error message.
    """
    try:
        return pa.Table.from_pandas(chunk, schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if schema is None:
            raise ValueError(f"output chunk {i + 1} cannot be stored as Parquet") from None
        for field in schema:
            try:
                pa.array(chunk[field.name], type=field.type, from_pandas=True)
            except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError):
                raise ValueError(
                    f"output chunk {i + 1}: column {field.name!r} does not fit the first "
                    f"chunk's type {field.type}"
                ) from None
        raise ValueError(f"output chunk {i + 1} does not fit the first chunk's columns") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
