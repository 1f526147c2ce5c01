"""`ketapredict predict --engine spark`: a health system's nightly scoring (DESIGN decision 7).

The champion scores as an MLflow Spark UDF (`mlflow.pyfunc.spark_udf`), so the cluster runs
the same artifact as the plain CLI and the service. The rest follows the plain engine's rules:

- Validation runs on the executors, partition by partition, with `validate_table`; only the
  problems (by global row and field, never an identifier) and per-partition row counts come
  back to the driver. Duplicate ids are the one cross-row rule: Spark groups the ids itself
  and the driver receives only the positions of repeats.
- The UDF's numbers (`serving.results.scores_frame`: probability, interval, SHAP per factor)
  go through `serving.batch_results.batch_scores` on the executors, so risk band, top
  factors, eligibility, warnings and applicability come from the plain engine's functions and
  the output has its columns, plus `logit` and one `shap__<factor>` column per factor.
- Each batch is audited (`AuditStore.prepare_table`, then `write`) before its rows reach the writer,
  and the output directory appears under `--out` only after the whole job succeeded.
  A retried task audits its patients again under the same request id: at least once, never
  zero times (docs/spark.md, "Task retries").
"""

from __future__ import annotations

import os
import sys
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, partial

import mlflow
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, DataType, DoubleType, StringType, StructField, StructType

from features import transform as tf
from features.schema import ID_FIELD, INPUT_FIELDS
from features.validation import WHOLE, InvalidInput, Problem, validate_table
from serving import registry
from serving.audit import AuditStore, key_from_env
from serving.auditing import URL_ENV
from serving.batch_results import batch_scores
from serving.predictor import Predictor, Scores
from serving.results import TOP_FACTORS, model_info

ROUTE = "cli:predict-spark"
DEFAULT_MASTER = "local[2]"
#: `monotonically_increasing_id()` puts the partition id in the upper 31 bits and the record
#: number within the partition in the lower 33 (documented in pyspark.sql.functions).
_ROW_BITS = 33
_POSITION = "_ketapredict_position"
_OUT = "_pyfunc_"  # prefix of the UDF's output columns, beside the input columns
_INPUTS = frozenset(f.name for f in INPUT_FIELDS)
_DUPLICATE = "same patient_id as patient {first}; ids must be unique"  # as in validate_table
_SHAP = tuple(f"shap__{n}" for n in tf.FACTOR_NAMES)
_CHECK = "kind string, part long, row long, field string, message string"

# pyspark 4 warns on every pandas call that it is not tested with pandas 3 (our lock's pandas);
# the engine's test compares it with the plain engine to 1e-9, which is the check that matters.
warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)


_TYPES: dict[str, DataType] = {
    "string": StringType(),
    "double": DoubleType(),
    "boolean": BooleanType(),
}


def _struct(columns: Sequence[tuple[str, str]]) -> StructType:
    return StructType([StructField(n, _TYPES[t]) for n, t in columns])


#: The pyfunc's output (`scores_frame`), pinned: `spark_udf` casts each field by name.
PYFUNC_RESULT = _struct(
    [
        ("patient_id", "string"),
        *[(n, "double") for n in ("probability", "probability_lower", "probability_upper")],
        ("logit", "double"),
        ("base_log_odds", "double"),
        ("typical", "boolean"),
        ("typicality_percentile", "double"),
        *[(n, "double") for n in _SHAP],
    ]
)
_FACTOR_COLUMNS = [
    (f"factor_{k}{s}", t)
    for k in range(1, min(TOP_FACTORS, len(_SHAP)) + 1)
    for s, t in (("", "string"), ("_value", "string"), ("_shap", "double"))
]
_TABLE = [  # `batch_table`'s columns, in its order
    ("patient_id", "string"),
    *[(n, "double") for n in ("probability", "probability_lower", "probability_upper")],
    ("risk_band", "string"),
    ("base_log_odds", "double"),
    *_FACTOR_COLUMNS,
    ("typical", "boolean"),
    ("typicality_percentile", "double"),
    ("unseen_missingness_pattern", "boolean"),
    *[(n, "string") for n in ("applicability", "eligibility", "eligibility_reasons")],
    *[(n, "string") for n in ("warnings", "model_name", "model_version")],
]
OUTPUT = _struct([*_TABLE, ("logit", "double"), *[(n, "double") for n in _SHAP]])


@dataclass(frozen=True)
class AuditTarget:
    """Where executors write audit rows: the driver's store and key, sent with the task.

    Shipping them from the driver (not each executor's environment) guarantees one store and
    one pseudonym key for the whole run. Both are secrets, so neither appears in `repr`.
    """

    url: str = field(repr=False)
    key: bytes = field(repr=False)

    @classmethod
    def from_env(cls) -> AuditTarget:
        return cls(os.environ[URL_ENV], key_from_env())


@dataclass(frozen=True)
class Checked:
    """A validated input: the Spark frame of the schema's columns, its size and warnings."""

    frame: DataFrame
    n: int
    warnings: tuple[str, ...]


def session(master: str | None = None) -> SparkSession:
    """The Spark session: `master`, else spark-submit's, else `local[2]` on this machine.

    A local session binds to 127.0.0.1 without the web UI and runs its Python workers in
    this interpreter (PySpark would otherwise start whatever `python3` is on PATH).
    """
    if master is None and "PYSPARK_GATEWAY_PORT" not in os.environ:  # not under spark-submit
        master = DEFAULT_MASTER
    builder = SparkSession.builder.appName("ketapredict-predict")
    if master is not None:
        builder = builder.master(master)
    local = master is not None and master.startswith("local")
    if local:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        for key, value in (
            ("spark.driver.host", "127.0.0.1"),
            ("spark.driver.bindAddress", "127.0.0.1"),
            ("spark.ui.enabled", "false"),
            ("spark.ui.showConsoleProgress", "false"),
        ):
            builder = builder.config(key, value)
    spark = builder.config("spark.sql.execution.arrow.pyspark.enabled", "true").getOrCreate()
    if local:  # a command's stderr is for its own messages; a cluster keeps its log4j setup
        spark.sparkContext.setLogLevel("ERROR")
    return spark


def check_paths(data: str, out: str) -> None:
    """Refuse CSV early: Spark reads and writes Parquet here (before a session starts)."""
    for what, path in (("--data", data), ("--out", out)):
        if path.rstrip("/").lower().endswith(".csv"):
            raise ValueError(f"{what}: the spark engine reads and writes Parquet, not CSV")


def read_checked(spark: SparkSession, data: str) -> Checked:
    """Read Parquet and validate it on the executors; raise `InvalidInput` with every problem.

    Rows are numbered from 0 in Spark's read order, which for one file is the file's order
    (the numbers the plain engine reports).
    """
    raw = spark.read.parquet(data).withColumn(_POSITION, F.monotonically_increasing_id())
    found = raw.mapInPandas(_check_partition, _CHECK).collect()
    offsets, n = _offsets({r.part: r.row for r in found if r.kind == "count"})
    problems = {
        Problem(r.row if r.row == WHOLE else offsets[r.part] + r.row, r.field, r.message)
        for r in found
        if r.kind == "problem"
    }
    if n == 0:  # the plain engine's verdict on an empty table, from the header (it raises)
        validate_table(pd.DataFrame(columns=[c for c in raw.columns if c != _POSITION]))
    if ID_FIELD in raw.columns:
        problems |= _duplicates(raw, offsets, problems)
    if problems:
        raise InvalidInput(list(problems))
    notes = dict.fromkeys(r.message for r in found if r.kind == "warning")
    inputs = [c for c in raw.columns if c in _INPUTS]
    return Checked(raw.select(*inputs), n, tuple(notes))


def _check_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Problems of one partition (rows numbered within it), its warnings and its row count."""
    part, seen, out = 0, 0, []
    for batch in batches:
        position = batch.pop(_POSITION).to_numpy()
        part, seen = int(position[0]) >> _ROW_BITS, seen + len(batch)
        rows = position & ((1 << _ROW_BITS) - 1)
        try:
            notes = validate_table(batch.reset_index(drop=True)).warnings
            out += [("warning", part, WHOLE, "", w) for w in notes]
        except InvalidInput as exc:
            for p in _without_local_duplicates(exc.problems, batch):
                row = WHOLE if p.index == WHOLE else int(rows[p.index])
                out.append(("problem", part, row, p.field, p.message))
    if seen:
        out.append(("count", part, seen, "", ""))
        yield pd.DataFrame(out, columns=["kind", "part", "row", "field", "message"])


def _without_local_duplicates(problems: Sequence[Problem], batch: pd.DataFrame) -> list[Problem]:
    """Drop this batch's duplicate-id problems: `_duplicates` reports them for the whole table.

    Whether an id is valid depends on its value alone, so a patient_id problem on a row whose
    id first appeared on a row *without* a patient_id problem can only be "duplicate".
    """
    flagged = {p.index for p in problems if p.field == ID_FIELD and p.index != WHOLE}
    if not flagged or ID_FIELD not in batch:
        return list(problems)
    try:
        codes, _ = pd.factorize(batch[ID_FIELD])
    except TypeError:  # unhashable ids are type errors, never duplicates
        return list(problems)
    first: dict[int, int] = {}
    for i, code in enumerate(codes):
        first.setdefault(int(code), i)
    repeats = {
        i
        for i in flagged
        if codes[i] >= 0 and first[codes[i]] != i and first[codes[i]] not in flagged
    }
    return [p for p in problems if not (p.field == ID_FIELD and p.index in repeats)]


def _offsets(counts: dict[int, int]) -> tuple[dict[int, int], int]:
    offsets, total = {}, 0
    for part in sorted(counts):
        offsets[part], total = total, total + counts[part]
    return offsets, total


def _duplicates(raw: DataFrame, offsets: dict[int, int], problems: set[Problem]) -> set[Problem]:
    """Repeated valid ids across the whole table, by position only (the ids stay in Spark)."""
    groups = (
        raw.where(F.col(ID_FIELD).isNotNull())
        .groupBy(ID_FIELD)
        .agg(F.collect_list(_POSITION).alias("at"))
        .where(F.size("at") > 1)
        .select("at")
        .collect()
    )
    invalid = {p.index for p in problems if p.field == ID_FIELD}
    found = set()
    for (at,) in groups:
        rows = sorted(offsets[a >> _ROW_BITS] + (a & ((1 << _ROW_BITS) - 1)) for a in at)
        if not invalid.intersection(rows):  # an invalid id is reported as such, once per row
            message = _DUPLICATE.format(first=rows[0])
            found |= {Problem(r, ID_FIELD, message) for r in rows[1:]}
    return found


def pin(model_uri: str) -> str:
    """`models:/name@alias` as `models:/name/N`, so the UDF and the audit use one version."""
    if model_uri.startswith("models:/") and "@" in model_uri:
        name = model_uri.removeprefix("models:/").split("@", 1)[0]
        return f"models:/{name}/{registry.version_of(model_uri)}"
    return model_uri


def score(
    spark: SparkSession,
    checked: Checked,
    out: str,
    model_uri: str,
    *,
    audit: AuditTarget,
    caller: str,
) -> dict[str, str]:
    """Score, explain and audit every patient, then publish `out`; return the model's name
    and version. The MLflow tracking URI must already point at the registry."""
    pinned = pin(model_uri)
    predictor = registry.load_predictor(pinned)
    model = model_info(predictor)
    # batch_scores() given scores reads only reference, typicality and name/version
    facts = replace(predictor, members=(), documents={}, uncertainty={}, metadata=dict(model))
    udf = mlflow.pyfunc.spark_udf(spark, pinned, result_type=PYFUNC_RESULT, env_manager="local")
    inputs = checked.frame.columns
    scored = checked.frame.withColumn(_OUT, udf(F.struct(*inputs))).select(
        *inputs, *[F.col(f"{_OUT}.{n}").alias(_OUT + n) for n in PYFUNC_RESULT.fieldNames()]
    )
    request = str(uuid.uuid4())
    explain_and_audit = partial(
        _explain_and_audit, facts=facts, audit=audit, caller=caller, request=request, inputs=inputs
    )
    _write_then_publish(spark, scored.mapInPandas(explain_and_audit, OUTPUT), out)
    return model


def _explain_and_audit(
    batches: Iterator[pd.DataFrame],
    *,
    facts: Predictor,
    audit: AuditTarget,
    caller: str,
    request: str,
    inputs: Sequence[str],
) -> Iterator[pd.DataFrame]:
    """The plain engine's table for each batch, audited before it is handed to the writer."""
    store = _store(audit.url, audit.key)
    for batch in batches:
        frame = validate_table(batch[list(inputs)].reset_index(drop=True)).frame
        s = batch[[_OUT + n for n in PYFUNC_RESULT.fieldNames()]].reset_index(drop=True)
        s.columns = PYFUNC_RESULT.fieldNames()
        if not s["patient_id"].astype(object).equals(frame[ID_FIELD].astype(object)):
            raise RuntimeError("the model's output rows are not aligned with its input rows")
        scores = Scores(
            logit=s["logit"].to_numpy(dtype=float),
            probability=s["probability"].to_numpy(dtype=float),
            lower=s["probability_lower"].to_numpy(dtype=float),
            upper=s["probability_upper"].to_numpy(dtype=float),
            base_log_odds=s["base_log_odds"].to_numpy(dtype=float),
            contributions=s[list(_SHAP)].to_numpy(dtype=float),
            values=tf.factor_values(frame),
        )
        table, outputs = batch_scores(facts, frame, scores=scores)
        if list(table.columns) != [n for n, _ in _TABLE]:
            raise RuntimeError(
                "serving.results.batch_table changed; update ketapredict.spark_engine"
            )
        model = model_info(facts)
        store.write(
            store.prepare_table(
                caller=caller,
                route=ROUTE,
                model_name=model["name"],
                model_version=model["version"],
                request_id=request,
                frame=frame,
                outputs=outputs,
            ),
            request_id=request,
        )
        yield pd.concat([table, s[["logit", *_SHAP]]], axis=1)[OUTPUT.fieldNames()]


@cache
def _store(url: str, key: bytes) -> AuditStore:
    """One store per Python worker (workers are reused), so migrations run once per worker."""
    return AuditStore(url, key=key)


def _write_then_publish(spark: SparkSession, table: DataFrame, out: str) -> None:
    """Write beside `out` and move it into place only after the whole job succeeded, so a
    failed job leaves `out` as it was and no partial output behind."""
    jvm = spark.sparkContext._jvm
    target = jvm.org.apache.hadoop.fs.Path(out)
    fs = target.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    staging = jvm.org.apache.hadoop.fs.Path(
        target.getParent(), f".{target.getName()}.tmp-{uuid.uuid4().hex}"
    )
    try:
        table.write.parquet(staging.toString())
    except Exception as exc:
        fs.delete(staging, True)
        raise RuntimeError(f"the Spark job failed: {_cause(exc)}; nothing was written") from exc
    if fs.exists(target):
        fs.delete(target, True)
    if not fs.rename(staging, target):
        raise RuntimeError(f"could not move the scores into place; they are in {staging}")


#: Root exceptions whose messages are ours and name no value; any other root exception is
#: reported by its type alone, since an executor's message may quote a patient's record.
_VALUE_FREE_ERRORS = frozenset({"AuditUnavailable"})


def _cause(exc: Exception) -> str:
    """The root Python exception of a failed Spark job, one line (Spark's text is pages)."""
    lines = str(exc).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    tail = lines[starts[-1] + 1 :] if starts else []
    root = next((line for line in tail if line and not line[0].isspace()), None)
    if root is None:
        return type(exc).__name__
    kind = root.split(":", 1)[0].strip()
    return root if kind.rsplit(".", 1)[-1] in _VALUE_FREE_ERRORS else kind
