"""`ketapredict biomarkers`: the added value of each biomarker group, as files and an MLflow run.

The I/O edge of `training.biomarkers`: read and validate the table, run the analysis, write
`biomarkers.html` and `biomarkers.json`, log both and the figures to the experiment
`ketamine-aud-response-biomarkers`, and print one verdict line per group. Heavy imports wait
inside `run`, so registering the subcommand costs the CLI nothing at start-up.

Registered by `ketapredict.cli.build_parser` with `add_parser(sub)`; `ketapredict.cli.main`
maps `InvalidInput` to exit code 2 and any other failure to 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

EXPERIMENT = "ketamine-aud-response-biomarkers"
DEFAULT_OUT_DIR = Path("reports")
DEFAULT_SEED = 20261127  # TrainConfig's seed, so a default run is reproducible
HTML_NAME, JSON_NAME = "biomarkers.html", "biomarkers.json"


def add_parser(subparsers: Any) -> None:
    """Add the `biomarkers` subcommand to the CLI's subparsers (from `add_subparsers`)."""
    b = subparsers.add_parser(
        "biomarkers",
        help="added value of each biomarker group over clinical data (nested models)",
    )
    b.add_argument("--data", type=Path, required=True, help="training table (CSV or Parquet)")
    b.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    b.add_argument("--seed", type=int, default=DEFAULT_SEED)
    b.add_argument("--folds", type=int, default=5)
    b.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for CIs")
    b.add_argument(
        "--logistic-only",
        action="store_true",
        help="skip the LightGBM comparison (about half the run time)",
    )
    b.add_argument("--experiment", default=EXPERIMENT)
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the analysis; returns 0. Invalid input raises `InvalidInput` for the CLI to map."""
    from features.validation import validate_table  # noqa: PLC0415
    from ketapredict.tables import file_sha256, read_table  # noqa: PLC0415
    from training import biomarker_report as br  # noqa: PLC0415
    from training.biomarkers import biomarker_value  # noqa: PLC0415

    validated = validate_table(read_table(args.data), training=True)
    for w in validated.warnings:
        _say(f"warning: {w}", sys.stderr)
    estimators = ("logistic",) if args.logistic_only else ("logistic", "lightgbm")
    started = time.monotonic()
    report = biomarker_value(
        validated.frame,
        seed=args.seed,
        folds=args.folds,
        resamples=args.resamples,
        estimators=estimators,
    )
    seconds = time.monotonic() - started
    figs = br.figures(report)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html, js = out_dir / HTML_NAME, out_dir / JSON_NAME
    html.write_text(br.render_html(report, figs), encoding="utf-8")
    js.write_text(br.render_json(report), encoding="utf-8")
    run_id = _log(args, report, figs, (html, js), file_sha256(args.data), seconds)
    _say(f"biomarker added value: {report.n} patients, {report.events} responders")
    for line in report.summary_lines():
        _say(f"  {line}")
    _say(f"report: {html} and {js} ({seconds:.0f} s)")
    _say(f"mlflow run id: {run_id} (experiment {args.experiment})")
    return 0


def _say(line: str, stream: Any = None) -> None:
    (stream or sys.stdout).write(line + "\n")


def _log(
    args: argparse.Namespace,
    report: Any,
    figs: dict[str, Any],
    files: tuple[Path, ...],
    data_hash: str,
    seconds: float,
) -> str:
    import mlflow  # noqa: PLC0415

    from training import tracking  # noqa: PLC0415

    tracking.configure(args.experiment)
    with mlflow.start_run() as active:
        mlflow.set_tags(
            {
                "data.path": Path(args.data).name,
                "data.sha256": data_hash,
                "git.commit": tracking.git_commit(),
                "analysis": "biomarker_added_value",
            }
        )
        mlflow.log_params(
            {
                "seed": args.seed,
                "folds": report.folds,
                "resamples": report.resamples,
                "estimators": ",".join(report.estimators),
                "n": report.n,
            }
        )
        mlflow.log_metrics({**_metrics(report), "runtime_seconds": seconds})
        for s in report.steps:
            mlflow.set_tag(f"verdict.{s.spec.key}", s.verdict)
        for name, fig in figs.items():
            mlflow.log_figure(fig, f"biomarkers/{name}")
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="biomarkers")
    return active.info.run_id


def _metrics(report: Any) -> dict[str, float]:
    """Flat MLflow metrics: LR χ², df, p and each estimator's gains with CI bounds."""
    out: dict[str, float] = {}
    for s in report.steps:
        key = s.spec.key
        out |= {f"{key}.lr_chi2": s.lr.chi2, f"{key}.lr_df": s.lr.df, f"{key}.lr_p": s.lr.p_value}
        for kind, gain in s.gains.items():
            for metric in ("deviance", "brier", "auroc", "net_benefit"):
                ci = getattr(gain, metric)
                base = f"{key}.{kind}.{metric}_gain"
                out |= {base: ci.estimate, f"{base}_low": ci.low, f"{base}_high": ci.high}
    return {k: float(v) for k, v in out.items() if math.isfinite(v)}  # NaN: nothing to test
