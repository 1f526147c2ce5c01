"""Reading and writing patient tables (CSV or Parquet, chosen by the file extension)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pandas as pd

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


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically: a reader never sees a partial file, and a failure leaves none behind."""
    suffix = _check_suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=suffix, prefix=".tmp-")
    os.close(fd)
    try:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
