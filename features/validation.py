"""Check patient data against `features.schema` and build the canonical frame.

Data arrives through two doors: clinic tables (CSV or Parquet read by pandas) and JSON records
from the API. Each door has its own *type* rules, because pandas and JSON represent values
differently; after that, both share one set of *value* checks (plausible range, whole numbers,
category levels, identifier format, duplicates, cross-field), so a patient gets the same verdict
whichever way it arrives. Every problem is collected and raised together in `InvalidInput`;
nothing is clipped, rounded, coerced or dropped.

Conventions callers rely on:
- `Problem.index` counts patients from 0 in input order. `index == -1` means "the whole column"
  (a column-level problem such as a missing required column) or, with field `"<record>"`, the
  whole batch (no patients, too many patients).
- Privacy: messages quote the offending value only for clinical fields, never for `patient_id`
  or `site_id`; duplicates are reported by position. Unknown column or key names are echoed only
  when they look like field names (letters, digits, `_`), so a value mistaken for a header is
  not repeated.
- Tables: blank text (empty or only spaces) is missing. Numbers may arrive as text (surrounding
  spaces ignored). Booleans may be bool, pandas `boolean`, the numbers 0/1, or exactly the texts
  `TRUE_TEXTS`/`FALSE_TEXTS`; anything else ("yes", 2) is an error.
- JSON records: integers are ints (or floats with a whole value, 5.0), numbers are ints or
  floats, booleans only true/false, text only strings; null or absent is missing; `bool` is
  never a number; NaN is rejected (send null).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.schema import BY_NAME, FIELDS, ID_FIELD, INPUT_FIELDS, OUTCOME, Field

#: `Problem.field` of problems about a whole record or (with index -1) the whole batch.
RECORD = "<record>"
#: `Problem.index` of column-level and batch-level problems.
WHOLE = -1
#: Texts a table may use for booleans (pandas already parses most spellings itself).
TRUE_TEXTS: tuple[str, ...] = ("true", "True", "1")
FALSE_TEXTS: tuple[str, ...] = ("false", "False", "0")

_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
_NAME_LIKE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BOOLEAN_TEXT = {**dict.fromkeys(TRUE_TEXTS, 1.0), **dict.fromkeys(FALSE_TEXTS, 0.0)}
_NUMERIC_KINDS = ("integer", "number", "boolean")
_ORDER = {f.name: i for i, f in enumerate(FIELDS)}
_SHOWN_PROBLEMS = 20
_QUOTE_CHARS = 40

_Parsed = tuple[float | str | None, str | None]  # (value or None when missing, error or None)
_Parser = Callable[[Field, object], _Parsed]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, located by patient position and field."""

    index: int
    field: str
    message: str

    def describe(self) -> str:
        """One line for people, e.g. "patient 3, field hdd_90d: 120 is above ..."."""
        if self.index == WHOLE:
            where = "all patients" if self.field == RECORD else f"column {self.field}"
        elif self.field == RECORD:
            where = f"patient {self.index}"
        else:
            where = f"patient {self.index}, field {self.field}"
        return f"{where}: {self.message}"


class InvalidInput(ValueError):
    """The input cannot be used; `problems` lists every reason, sorted by patient and field."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("InvalidInput needs at least one problem")
        self.problems: tuple[Problem, ...] = tuple(sorted(problems, key=_problem_order))
        lines = [p.describe() for p in self.problems[:_SHOWN_PROBLEMS]]
        if len(self.problems) > _SHOWN_PROBLEMS:
            lines.append(f"... and {len(self.problems) - _SHOWN_PROBLEMS} more")
        super().__init__(f"{len(self.problems)} problem(s) in the input:\n" + "\n".join(lines))

    def __reduce__(self) -> tuple[type[InvalidInput], tuple[tuple[Problem, ...]]]:
        return (type(self), (self.problems,))


@dataclass(frozen=True, eq=False)
class Validated:
    """A canonical frame plus table-level warnings (e.g. ignored extra columns)."""

    frame: pd.DataFrame
    warnings: tuple[str, ...] = ()


def canonical_columns(*, training: bool = False) -> tuple[str, ...]:
    """Column names of the canonical frame, in schema order."""
    return tuple(f.name for f in _fields(training))


def reader_dtypes() -> dict[str, str]:
    """`dtype=` for `pandas.read_csv`, so identifiers such as "007" stay text."""
    return {f.name: "str" for f in INPUT_FIELDS if f.kind in ("string", "category")}


def canonical_frame(
    columns: Mapping[str, np.ndarray | Sequence[object]], *, n_rows: int, training: bool = False
) -> pd.DataFrame:
    """Assemble already-checked columns into the canonical frame.

    Numbers, integers and booleans become float64 (NaN missing); text becomes object holding
    `str` or None (explicitly object: pandas 3 would otherwise infer its `str` dtype). Absent
    columns are all missing. This does not validate; use `validate_table`/`validate_records`.
    """
    numbers: dict[str, np.ndarray] = {}
    texts: dict[str, np.ndarray] = {}
    for field in _fields(training):
        values = columns.get(field.name)
        if values is None:
            values = _empty(field, n_rows)
        if field.kind in _NUMERIC_KINDS:
            numbers[field.name] = np.asarray(values, dtype=float)
        else:
            texts[field.name] = np.asarray(values, dtype=object)
    index = pd.RangeIndex(n_rows)
    parts = [pd.DataFrame(numbers, index=index), pd.DataFrame(texts, index=index, dtype=object)]
    return pd.concat(parts, axis=1)[list(canonical_columns(training=training))]


def validate_table(df: pd.DataFrame, *, training: bool = False) -> Validated:
    """Check a clinic table; raise `InvalidInput` listing every problem.

    Extra columns (and `response_6m` when not training) are dropped with a warning; with
    `training=True` the outcome is required in every row and must be 0 or 1.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    fields = _fields(training)
    problems, warnings = _table_layout(df, fields)
    if len(df) == 0:
        problems.append(Problem(WHOLE, RECORD, "the table has no patients"))
    n = len(df)
    usable = set(df.columns[~df.columns.duplicated(keep=False)])
    if problems and not usable.intersection(BY_NAME):
        raise InvalidInput(problems)
    required = _required(fields)
    parsed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for field in fields:
        if field.name in usable:
            values, bad, found = _parse_cells(field, df[field.name], _table_value)
            problems.extend(found)
        else:  # absent or duplicated: reported once for the column, never per row
            values, bad = _empty(field, n), np.full(n, field.name in df or field.name in required)
        parsed[field.name] = (values, bad)
    problems.extend(_check_columns(parsed, required))
    if problems:
        raise InvalidInput(problems)
    columns = {name: values for name, (values, _) in parsed.items()}
    return Validated(canonical_frame(columns, n_rows=n, training=training), tuple(warnings))


def validate_records(
    records: Sequence[Mapping[str, object]], *, max_records: int = 1000
) -> Validated:
    """Check API records (parsed JSON objects); raise `InvalidInput` listing every problem.

    An unknown key is an error (a typo must not silently drop a value), and so is
    `response_6m`, which only training data carries.
    """
    if isinstance(records, str | bytes | Mapping) or not isinstance(records, Sequence):
        raise InvalidInput([Problem(WHOLE, RECORD, "expected a list of patient records")])
    if not records:
        raise InvalidInput([Problem(WHOLE, RECORD, "no patients")])
    if len(records) > max_records:
        message = f"{len(records)} patients exceed the limit of {max_records} per request"
        raise InvalidInput([Problem(WHOLE, RECORD, message)])
    problems = [p for i, record in enumerate(records) for p in _record_shape(i, record)]
    not_record = np.array([not isinstance(r, Mapping) for r in records])
    mappings = [r if isinstance(r, Mapping) else {} for r in records]
    parsed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for field in INPUT_FIELDS:
        cells = [r.get(field.name) for r in mappings]
        values, bad, found = _parse_cells(field, cells, _json_value)
        problems.extend(found)
        parsed[field.name] = (values, bad | not_record)
    problems.extend(_check_columns(parsed, _required(INPUT_FIELDS)))
    if problems:
        raise InvalidInput(problems)
    columns = {name: values for name, (values, _) in parsed.items()}
    return Validated(canonical_frame(columns, n_rows=len(records)))


# --- layout: columns and keys -------------------------------------------------------------


def _fields(training: bool) -> tuple[Field, ...]:
    return INPUT_FIELDS + ((BY_NAME[OUTCOME],) if training else ())


def _required(fields: Sequence[Field]) -> frozenset[str]:
    return frozenset(f.name for f in fields if f.required or f.training_only)


def _table_layout(df: pd.DataFrame, fields: Sequence[Field]) -> tuple[list[Problem], list[str]]:
    """Column-level problems (missing, duplicated) and warnings (ignored columns)."""
    names = [str(c) for c in df.columns]
    wanted = {f.name for f in fields}
    if not wanted.intersection(names):
        message = "no column is in the data dictionary; is the header row missing?"
        return [Problem(WHOLE, RECORD, message)], []
    problems = [
        Problem(WHOLE, f.name, "required column is missing")
        for f in fields
        if f.name not in names and (f.required or f.training_only)
    ]
    problems += [
        Problem(WHOLE, name, "column appears more than once")
        for name in sorted({n for n in names if names.count(n) > 1} & wanted)
    ]
    warnings = []
    extra = [_unknown_name(n) for n in dict.fromkeys(names) if n not in BY_NAME]
    if extra:
        warnings.append(f"ignored columns not in the data dictionary: {', '.join(extra)}")
    if OUTCOME in names and OUTCOME not in wanted:
        warnings.append(f"ignored column {OUTCOME}: the outcome is used only in training")
    return problems, warnings


def _record_shape(index: int, record: object) -> list[Problem]:
    """Whole-record problems: not an object, unknown keys, the training-only outcome."""
    if not isinstance(record, Mapping):
        return [Problem(index, RECORD, f"record is {_type_word(record)}, not a JSON object")]
    problems = []
    for key in record:
        name = str(key)
        if name == OUTCOME:
            message = f"{OUTCOME} is the training outcome; a prediction request must not send it"
            problems.append(Problem(index, name, message))
        elif name not in BY_NAME:
            shown = _unknown_name(name)
            field = name if _NAME_LIKE.fullmatch(name) else RECORD
            problems.append(Problem(index, field, f"unknown field {shown}"))
    return problems


def _unknown_name(name: str) -> str:
    """An unknown column/key name for a message, with the closest field name if any."""
    if not _NAME_LIKE.fullmatch(name):
        return "(a name that is not shown because it does not look like a field name)"
    close = difflib.get_close_matches(name, [f.name for f in INPUT_FIELDS], n=1, cutoff=0.6)
    return f"{name} (did you mean {close[0]}?)" if close else name


# --- types: one cell at a time ------------------------------------------------------------


def _parse_cells(
    field: Field, cells: pd.Series | list[object], parse: _Parser
) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Parse a column into canonical values, a mask of cells with errors, and the problems.

    A table column (Series) with a numeric dtype is read in one go; other table columns are
    parsed once per distinct value. JSON values (a list) are parsed one by one, so a JSON NaN
    is never merged with a missing value.
    """
    if isinstance(cells, pd.Series):
        if field.kind in _NUMERIC_KINDS and _plain_numeric(cells.dtype, field):
            return _numeric_cells(field, cells)
        inferred = pd.api.types.infer_dtype(cells, skipna=True)
        if field.kind in ("string", "category") and inferred in ("string", "empty"):
            return _text_cells(cells)
        codes, uniques = _distinct(cells, inferred)
    else:
        codes, uniques = np.arange(len(cells)), list(cells)
    results = [parse(field, u) for u in uniques]
    missing: object = np.nan if field.kind in _NUMERIC_KINDS else None
    lookup = np.array([v if v is not None else missing for v, _ in results] + [missing], object)
    failed = np.array([e is not None for _, e in results] + [False])
    values = lookup[codes]
    values = values.astype(float) if field.kind in _NUMERIC_KINDS else values
    bad = failed[codes]
    problems = [Problem(int(i), field.name, str(results[codes[i]][1])) for i in np.flatnonzero(bad)]
    return values, bad, problems


def _distinct(cells: pd.Series, inferred: str) -> tuple[np.ndarray, list[object]]:
    """Codes (-1 = missing) and distinct values; every cell where `True == 1` could merge a
    boolean with a number, or where cells are unhashable."""
    if inferred not in ("mixed", "mixed-integer"):
        try:
            codes, index = pd.factorize(cells)
            return codes, index.tolist()
        except TypeError:
            pass
    return np.arange(len(cells)), cells.tolist()


def _plain_numeric(dtype: object, field: Field) -> bool:
    """Numeric dtypes read directly; bool dtypes only for boolean fields."""
    if pd.api.types.is_bool_dtype(dtype):
        return field.kind == "boolean"
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype)


def _text_cells(cells: pd.Series) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """A column holding only text (or missing): blanks become None; no type can be wrong."""
    values = cells.to_numpy(dtype=object, na_value=None, copy=True)
    values[(cells.str.strip() == "").to_numpy(dtype=bool)] = None
    return values, np.zeros(len(values), bool), []


def _numeric_cells(field: Field, cells: pd.Series) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    values = cells.to_numpy(dtype=float, na_value=np.nan)
    if field.kind != "boolean":
        return values, np.zeros(len(values), bool), []
    bad = ~np.isnan(values) & (values != 0) & (values != 1)
    return values, bad, _each(field.name, bad, lambda i: _not_boolean(values[i], table=True))


def _table_value(field: Field, value: object) -> _Parsed:
    """One table cell: like JSON, but blanks are missing and numbers/booleans may be text."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None, None
    if isinstance(value, float) and math.isnan(value):
        return None, None
    if isinstance(value, str) and not value.strip():
        return None, None
    if isinstance(value, str) and field.kind in ("integer", "number"):
        text = value.strip()
        return (float(text), None) if _NUMBER_TEXT.fullmatch(text) else _type_error(field, value)
    if isinstance(value, str) and field.kind == "boolean":
        flag = _BOOLEAN_TEXT.get(value.strip())
        return (flag, None) if flag is not None else (None, _not_boolean(value, table=True))
    if field.kind == "boolean" and isinstance(value, int | float) and not isinstance(value, bool):
        return (float(value), None) if value in (0, 1) else (None, _not_boolean(value, table=True))
    return _json_value(field, value)


def _json_value(field: Field, value: object) -> _Parsed:
    """One JSON value, strictly typed: a wrong type from an API client is a bug to report."""
    if value is None:
        return None, None
    if field.kind in ("string", "category"):
        if not isinstance(value, str):
            return _type_error(field, value)
        return (value, None) if value.strip() else (None, None)
    if field.kind == "boolean":
        return (float(value), None) if isinstance(value, bool) else (None, _not_boolean(value))
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _type_error(field, value)
    try:
        number = float(value)
    except OverflowError:
        return None, "the number is far too large"
    if math.isnan(number):
        return None, "NaN is not a number; send null for a missing value"
    return number, None


def _type_error(field: Field, value: object) -> _Parsed:
    expected = "text" if field.kind in ("string", "category") else "a number"
    if field.group == "identity":
        return None, f"must be {expected}, not {_type_word(value)}"
    return None, f"{_show(value)} is not {expected}"


def _not_boolean(value: object, *, table: bool = False) -> str:
    hint = f" (use {', '.join(TRUE_TEXTS)} or {', '.join(FALSE_TEXTS)})" if table else ""
    return f"{_show(value)} is not true or false{hint}"


# --- values: shared by both doors ---------------------------------------------------------


def _check_columns(
    parsed: Mapping[str, tuple[np.ndarray, np.ndarray]], required: frozenset[str]
) -> list[Problem]:
    """Value checks on parsed columns; cells already reported (`bad`) are skipped."""
    problems: list[Problem] = []
    good: dict[str, np.ndarray] = {}
    for name, (values, bad) in parsed.items():
        field = BY_NAME[name]
        missing = pd.isna(values)
        if name in required:
            problems += _each(name, ~bad & missing, lambda _: "required value is missing")
        flagged = _check_values(field, values, ~bad & ~missing)
        problems += flagged
        failed = np.zeros(len(values), bool)
        failed[[p.index for p in flagged]] = True
        good[name] = ~bad & ~missing & ~failed
    problems += _check_onset(parsed, good)
    problems += _check_duplicates(parsed[ID_FIELD][0], good[ID_FIELD])
    return problems


def _check_values(field: Field, values: np.ndarray, present: np.ndarray) -> list[Problem]:
    """Range and whole-number checks, category levels, identifier format."""
    name = field.name
    if field.kind == "category":
        unknown = present & ~pd.Series(values).isin(field.levels).to_numpy()
        allowed = ", ".join(field.levels)
        return _each(name, unknown, lambda i: f"{_show(values[i])} is not one of: {allowed}")
    if field.name == ID_FIELD:
        wrong = present.copy()
        wrong[present] = ~pd.Series(values[present], dtype=object).str.fullmatch(_ID_PATTERN)
        message = "must be 1-64 letters, digits, '-' or '_' (the value is not shown)"
        return _each(name, wrong, lambda _: message)
    if field.kind not in ("integer", "number"):
        return []
    none = np.zeros(len(values), bool)
    infinite = present & np.isinf(values)
    finite = present & ~infinite
    fractional = finite & (np.floor(values) != values) if field.kind == "integer" else none
    ranged = finite & ~fractional
    low = ranged & (values < field.minimum) if field.minimum is not None else none
    high = ranged & (values > field.maximum) if field.maximum is not None else none
    return [
        *_each(name, infinite, lambda i: f"{_num(values[i])} is not a finite number"),
        *_each(name, fractional, lambda i: f"{_num(values[i])} is not a whole number"),
        *_each(name, low, lambda i: f"{_num(values[i])} is {_bound(field, 'minimum')}"),
        *_each(name, high, lambda i: f"{_num(values[i])} is {_bound(field, 'maximum')}"),
    ]


def _check_onset(
    parsed: Mapping[str, tuple[np.ndarray, np.ndarray]], good: Mapping[str, np.ndarray]
) -> list[Problem]:
    """AUD cannot begin after the baseline visit."""
    age, onset = parsed["age_years"][0], parsed["aud_onset_age_years"][0]
    later = good["age_years"] & good["aud_onset_age_years"]
    later[later] = onset[later] > age[later]
    return _each(
        "aud_onset_age_years",
        later,
        lambda i: f"age at AUD onset {_num(onset[i])} is greater than age {_num(age[i])}",
    )


def _check_duplicates(ids: np.ndarray, good: np.ndarray) -> list[Problem]:
    """Each repeat of a patient_id, named by its position and the first one's (never the id)."""
    positions = np.flatnonzero(good)
    if len(positions) < 2:
        return []
    codes, _ = pd.factorize(ids[positions])
    _, first = np.unique(codes, return_index=True)
    first_position = positions[first[codes]]
    return [
        Problem(int(p), ID_FIELD, f"same patient_id as patient {int(f)}; ids must be unique")
        for p, f in zip(positions, first_position, strict=True)
        if p != f
    ]


def _each(name: str, mask: np.ndarray, message: Callable[[int], str]) -> list[Problem]:
    return [Problem(int(i), name, message(int(i))) for i in np.flatnonzero(mask)]


# --- words ---------------------------------------------------------------------------------


def _empty(field: Field, n: int) -> np.ndarray:
    return np.full(n, np.nan) if field.kind in _NUMERIC_KINDS else np.full(n, None, object)


def _bound(field: Field, which: str) -> str:
    """ "above the plausible maximum of 90 days" (the unit as a clinician reads it)."""
    bound = field.minimum if which == "minimum" else field.maximum
    side = "below" if which == "minimum" else "above"
    return f"{side} the plausible {which} of {_num(float(bound))} {field.unit_label}".rstrip()


def _num(value: float) -> str:
    """120.0 -> "120", 2.5 -> "2.5", inf -> "inf"."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _show(value: object) -> str:
    """A rejected clinical value as the user typed it (never used for identity fields)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)[:_QUOTE_CHARS]
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, str):
        text = value if len(value) <= _QUOTE_CHARS else value[:_QUOTE_CHARS] + "..."
        return f'"{text}"'
    return _type_word(value)


def _type_word(value: object) -> str:
    """The JSON-ish kind of a value, for messages that must not quote it."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a value of type {type(value).__name__}"


def _problem_order(problem: Problem) -> tuple[int, int, str]:
    return problem.index, _ORDER.get(problem.field, len(_ORDER)), problem.field
