"""`ketapredict`: the command line of the service (DESIGN "Interfaces").

Exit codes: 0 success, 2 invalid input (every problem listed on stderr), 1 anything else.
The CLI is the I/O edge: it reads and writes files and talks to MLflow and BentoML; the
functions it calls are pure.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_INVALID = 0, 1, 2
DEFAULT_MODEL_URI = "models:/ketamine-aud-response@champion"
DEMO_N, DEMO_SEED = 3000, 7

# Quiet, offline-friendly defaults for the libraries the commands load.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _ensure_audit_env() -> None:
    """Embedded defaults for the audit trail: SQLite under ./mlruns and a local key file.

    A deployment sets `KETAPREDICT_AUDIT_URL` and `KETAPREDICT_AUDIT_KEY` from its secret store;
    on one machine the key is created once in ./mlruns/audit.key (mode 0600) and reused, so
    keyed patient hashes stay comparable across runs.
    """
    import secrets

    from serving.audit import KEY_ENV, default_url
    from serving.auditing import URL_ENV

    root = Path.cwd()
    os.environ.setdefault(URL_ENV, default_url(root))
    feedback = (root / "mlruns" / "cds_feedback.db").resolve()
    os.environ.setdefault("KETAPREDICT_CDS_FEEDBACK_URL", f"sqlite:///{feedback}")
    if os.environ.get(KEY_ENV):
        return
    key_file = root / "mlruns" / "audit.key"
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_hex(32))
    os.environ[KEY_ENV] = key_file.read_text().strip()


def _ensure_api_token() -> str | None:
    """With no token configured, create one, keep only its digest, and return it to print.

    `KETAPREDICT_API_TOKENS` or `KETAPREDICT_API_TOKENS_FILE` set by a deployment win; on one
    machine the digests live in ./mlruns/api_tokens.sha256 and each `serve` adds a fresh token.
    """
    from serving.auth import new_token

    if os.environ.get("KETAPREDICT_API_TOKENS") or os.environ.get("KETAPREDICT_API_TOKENS_FILE"):
        return None
    digests = Path.cwd() / "mlruns" / "api_tokens.sha256"
    digests.parent.mkdir(parents=True, exist_ok=True)
    token, digest = new_token()
    with digests.open("a") as fh:
        fh.write(digest + "\n")
    digests.chmod(0o600)
    os.environ["KETAPREDICT_API_TOKENS_FILE"] = str(digests.resolve())
    return token


def _simulate(args: argparse.Namespace) -> int:
    from features.simulate import simulate_cohort, write_cohort

    frame = simulate_cohort(args.n, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_cohort(frame, args.out)
    rate = frame["response_6m"].mean()
    print(f"wrote {len(frame)} synthetic patients to {args.out} (response rate {rate:.1%})")
    return EXIT_OK


def _load_training_table(path: Path):
    from features.validation import validate_table
    from ketapredict.tables import read_table

    raw = read_table(path)
    validated = validate_table(raw, training=True)
    truth = raw["true_probability"] if "true_probability" in raw.columns else None
    ancestry = raw["ancestry"].astype(object) if "ancestry" in raw.columns else None
    return validated, truth, ancestry


def _train(args: argparse.Namespace) -> int:
    from ketapredict.tables import file_sha256
    from training import tracking
    from training.config import TrainConfig
    from training.train import summary_lines, train

    validated, truth, ancestry = _load_training_table(args.data)
    for w in validated.warnings:
        print(f"warning: {w}", file=sys.stderr)
    cfg = TrainConfig(seed=args.seed) if args.seed is not None else TrainConfig()
    synthetic = truth is not None
    result = train(
        validated.frame,
        cfg,
        name=tracking.REGISTERED_MODEL,
        truth=truth,
        ancestry=ancestry,
        synthetic=synthetic,
    )
    tracking.configure(args.experiment)
    heldout = validated.frame.iloc[result.test_idx].reset_index(drop=True)
    logged = tracking.log_training(
        result,
        cfg,
        data_path=args.data,
        data_hash=file_sha256(args.data),
        heldout=heldout,
        table_warnings=validated.warnings,
    )
    print(f"run id: {logged.run_id}")
    print(f"registered: {tracking.REGISTERED_MODEL} version {logged.version}")
    for line in summary_lines(result):
        print(line)
    v = logged.verdict
    for check in v["checks"]:
        print(f"  {'pass' if check['passed'] else 'FAIL'} {check['name']}: {check['detail']}")
    print(f"gate: version {logged.version} -> {v['alias']} ({v['reason']})")
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    if args.engine == "spark":
        return _predict_spark(args)
    import getpass
    from concurrent.futures import ThreadPoolExecutor

    from features.validation import validate_table
    from ketapredict.batch_engine import scored_chunks
    from ketapredict.tables import read_table, write_table_chunks
    from serving import registry
    from serving.auditing import open_store

    args.data, args.out = Path(args.data), Path(args.out)
    registry.configure_uri_only()
    with ThreadPoolExecutor(max_workers=1) as loader:
        # the model loads (registry lookup, artifact copy, parsing) while the table is read
        # and checked: a few seconds of a population run; bad input still fails before any
        # patient is scored
        model = loader.submit(registry.load_predictor, args.model)
        validated = validate_table(read_table(args.data))
        predictor = model.result()
    for w in validated.warnings:
        print(f"warning: {w}", file=sys.stderr)
    _ensure_audit_env()
    store = open_store()
    # every chunk is audited before it is written; the file appears after them all
    chunks = scored_chunks(
        predictor, validated.frame, store, caller=f"cli:{getpass.getuser()}", jobs=args.jobs
    )
    written = write_table_chunks(chunks, args.out)
    print(
        f"scored {written} patients with {predictor.metadata['name']} version "
        f"{predictor.metadata['version']} -> {args.out}"
    )
    return EXIT_OK


def _predict_spark(args: argparse.Namespace) -> int:
    """The same model as a Spark UDF over a Parquet file or directory (docs/spark.md).

    Paths stay strings, so cluster URIs (hdfs://, s3a://) reach Spark intact. A session this
    command creates is stopped at the end; one that already exists is left running.
    """
    import getpass

    from pyspark.sql import SparkSession

    from ketapredict import spark_engine
    from serving import registry
    from serving.auditing import open_store

    spark_engine.check_paths(args.data, args.out)
    existing = SparkSession.getActiveSession()
    spark = spark_engine.session(args.spark_master)
    try:
        checked = spark_engine.read_checked(spark, args.data)
        for w in checked.warnings:
            print(f"warning: {w}", file=sys.stderr)
        registry.configure_uri_only()
        _ensure_audit_env()
        open_store().close()  # migrate and fail fast on the driver, before any patient is scored
        model = spark_engine.score(
            spark,
            checked,
            args.out,
            args.model,
            audit=spark_engine.AuditTarget.from_env(),
            caller=f"cli:{getpass.getuser()}",
        )
    finally:
        if existing is None:
            spark.stop()
    print(
        f"scored {checked.n} patients with {model['name']} version {model['version']} "
        f"on Spark -> {args.out}"
    )
    return EXIT_OK


#: Seconds an idle keep-alive connection stays open on the server (see `_serve`).
KEEP_ALIVE_S = 75


def _serve(args: argparse.Namespace) -> int:
    """Choose the model, check it, then exec `bentoml serve` on it (docs/operations.md).

    The model: `KETAPREDICT_MODEL_TAG` when set (the registry is not asked); else the
    registry's champion, imported into the BentoML store; else, when the registry cannot be
    reached, the newest champion already imported, with a warning. Whichever it is, its files
    are checked and it is loaded once here, so a missing or corrupt model ends the command
    with one line instead of a server whose worker fails and restarts forever.
    """
    from serving import registry
    from serving.batcher import natural_batching
    from serving.bento_store import ModelUnusable, import_alias, load_checked, newest_imported

    try:
        natural_batching(os.environ)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    explicit = os.environ.get("KETAPREDICT_MODEL_TAG", "").strip()
    if explicit:
        tag = explicit
        print(f"model {tag} from KETAPREDICT_MODEL_TAG; the MLflow registry is not consulted")
    else:
        uri = registry.configure_uri_only()
        try:
            version = registry.alias_version(registry.CHAMPION)
        except registry.RegistryUnavailable as exc:
            tag = newest_imported(registry.CHAMPION)
            if tag is None:
                print(
                    f"error: the MLflow registry at {registry.shown_uri(uri)} cannot be reached "
                    f"({exc}) and the BentoML model store holds no imported champion. Start the "
                    "tracking server, or set KETAPREDICT_MODEL_TAG to a model in the store.",
                    file=sys.stderr,
                )
                return EXIT_ERROR
            print(
                f"WARNING: the MLflow registry at {registry.shown_uri(uri)} cannot be reached "
                f"({exc}); serving {tag}, the newest champion imported into the BentoML store, "
                "which may not be the registry's champion now. Set KETAPREDICT_MODEL_TAG to "
                "choose the model explicitly.",
                file=sys.stderr,
            )
        else:
            if version is None:
                print(
                    "error: no champion to serve: no version has passed the gate. Train again, "
                    "or promote a version with `ketapredict promote VERSION --reason TEXT`.",
                    file=sys.stderr,
                )
                return EXIT_ERROR
            tag = import_alias(registry.CHAMPION)
    try:
        model, _predictor = load_checked(tag)
    except ModelUnusable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    tag = model.tag
    _ensure_audit_env()
    token = _ensure_api_token()
    base = f"http://{args.host}:{args.port}"
    os.environ.setdefault("KETAPREDICT_PUBLIC_URL", base)
    env = {**os.environ, "KETAPREDICT_MODEL_TAG": str(tag)}
    auth = f"-H 'Authorization: Bearer {token}'" if token else "-H 'Authorization: Bearer $TOKEN'"
    print(f"serving {tag} on {base}")
    if token:
        print(f"API token for this machine (shown once; only its digest is stored): {token}")
    print(f"  curl -s {auth} {base}/v1/model")
    print(
        f"  curl -s {auth} -X POST {base}/v1/predict "
        "-H 'content-type: application/json' -d @examples/predict-request.json"
    )
    sys.stdout.flush()
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    cmd = [
        bentoml,
        "serve",
        "serving.service:KetaPredict",
        "--host",
        args.host,
        "--port",
        str(args.port),
        # longer than clients' pool expiry (httpx 5 s, load balancers typically 60 s): with
        # uvicorn's 5 s a client could reuse a connection the server was just closing
        "--timeout-keep-alive",
        str(KEEP_ALIVE_S),
    ]
    os.chdir(Path(__file__).resolve().parent.parent)
    os.execve(bentoml, cmd, env)
    return EXIT_ERROR  # pragma: no cover - execve does not return


def _promote(args: argparse.Namespace) -> int:
    import getpass

    from training import tracking
    from training.promotion import PROMOTIONS_EXPERIMENT, promote

    tracking.configure(PROMOTIONS_EXPERIMENT)
    try:
        record = promote(
            args.version, args.reason, by=args.by or getpass.getuser(), alias=args.alias
        )
    except ValueError as exc:
        print(f"invalid input: {exc}", file=sys.stderr)
        return EXIT_INVALID
    previous = record["previous_version"] or "none"
    print(f"{record['alias']}: version {record['version']} (was {previous}), by {record['by']}")
    print(f"reason recorded: {record['reason']}")
    return EXIT_OK


def _audit_export(args: argparse.Namespace) -> int:
    from serving.audit_export import parse_instant, write_export
    from serving.auditing import open_store

    _ensure_audit_env()
    try:
        start, end = parse_instant(args.start), parse_instant(args.end)
    except ValueError as exc:
        print(f"invalid input: {exc}", file=sys.stderr)
        return EXIT_INVALID
    n = write_export(open_store(), start, end, args.out)
    print(f"wrote {n} AuditEvents ({args.start} to {args.end}) to {args.out}")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    data = Path("data") / "demo_cohort.csv"
    steps: Sequence[tuple[Callable[[argparse.Namespace], int], argparse.Namespace]] = (
        (_simulate, argparse.Namespace(n=DEMO_N, seed=DEMO_SEED, out=data)),
        (_train, argparse.Namespace(data=data, experiment=args.experiment, seed=None)),
    )
    for step, step_args in steps:
        if (code := step(step_args)) != EXIT_OK:
            return code
    return _serve(args)


def _bento(args: argparse.Namespace) -> int:
    from serving.build import build_bento

    built = build_bento(args.alias, version=args.version)
    print(
        f"built {built.tag} with {built.model_tag} ({built.registered_model} version "
        f"{built.registered_version}, {built.alias})"
    )
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from training.biomarkers_cli import add_parser as add_biomarkers_parser

    p = argparse.ArgumentParser(prog="ketapredict", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="write a synthetic cohort (CSV or Parquet)")
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_simulate)

    t = sub.add_parser("train", help="validate, train, evaluate, log to MLflow, register, gate")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--experiment", default="ketamine-aud-response")
    t.add_argument("--seed", type=int, default=None, help="override the configured seed")
    t.set_defaults(func=_train)

    r = sub.add_parser("predict", help="score a table with the champion (or --model URI)")
    r.add_argument("--data", required=True, help="CSV or Parquet (spark: Parquet file or dir)")
    r.add_argument("--out", required=True, help="CSV or Parquet (spark: a Parquet directory)")
    r.add_argument("--model", default=DEFAULT_MODEL_URI)
    r.add_argument("--engine", choices=("plain", "spark"), default="plain")
    r.add_argument(
        "--jobs",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="plain engine: worker processes (default: one per CPU)",
    )
    r.add_argument(
        "--spark-master",
        default=None,
        help="with --engine spark: Spark master (default local[2], or spark-submit's)",
    )
    r.set_defaults(func=_predict)

    add_biomarkers_parser(sub)

    b = sub.add_parser("bento", help="build a Bento with the champion (or an alias) inside")
    b.add_argument("--alias", default="champion", choices=("champion", "challenger"))
    b.add_argument("--version", default=None, help="the Bento's version (default: BentoML's)")
    b.set_defaults(func=_bento)

    m = sub.add_parser("promote", help="move an alias to a version, with a recorded reason")
    m.add_argument("version")
    m.add_argument("--reason", required=True, help="why a person overrides the gate")
    m.add_argument("--alias", default="champion", choices=("champion", "challenger"))
    m.add_argument("--by", default=None, help="who decides (default: the login name)")
    m.set_defaults(func=_promote)

    a = sub.add_parser("audit", help="the audit trail of predictions")
    asub = a.add_subparsers(dest="audit_command", required=True)
    e = asub.add_parser("export", help="FHIR AuditEvents (a Bundle) for a time range")
    e.add_argument("--start", required=True, help="ISO date or instant (UTC when no zone)")
    e.add_argument("--end", required=True, help="exclusive end, ISO date or instant")
    e.add_argument("--out", type=Path, required=True)
    e.set_defaults(func=_audit_export)

    for name, helptext, func in (
        ("serve", "start the BentoML service on the champion", _serve),
        ("demo", "simulate, train and serve", _demo),
    ):
        v = sub.add_parser(name, help=helptext)
        v.add_argument("--port", type=int, default=3000)
        v.add_argument("--host", default="127.0.0.1")
        if name == "demo":
            v.add_argument("--experiment", default="ketamine-aud-response")
        v.set_defaults(func=func)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from features.validation import InvalidInput

    try:
        return args.func(args)
    except InvalidInput as exc:
        print(f"invalid input: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem.describe()}", file=sys.stderr)
        return EXIT_INVALID
    except Exception as exc:  # the edge: one line, no traceback, no patient data
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
