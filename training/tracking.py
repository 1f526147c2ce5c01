"""MLflow at the edge: where the store is, what a run logs, registration and the simple gate.

Everything is logged explicitly (no autolog): parameters, metrics, figures, data hash, git
commit, seed, the gate's inputs and verdict, and one pyfunc model that carries the complete
predictor (DESIGN decisions 2 and 5).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata as pkg_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from sklearn.metrics import brier_score_loss

from serving.predictor import Predictor
from serving.registry import (
    CHALLENGER,
    CHAMPION,
    REGISTERED_MODEL,
    default_tracking_uri,
    load_predictor,
    registry_version,
)
from training.config import TrainConfig
from training.documents import build_documents
from training.gate import ACCEPTANCE_FILE, Criteria, evaluate_gate

if TYPE_CHECKING:
    from training.train import TrainResult

DEFAULT_EXPERIMENT = "ketamine-aud-response"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
MODEL_CODE = PACKAGE_ROOT / "serving" / "mlflow_model.py"
_RUNTIME_PACKAGES = ("lightgbm", "numpy", "pandas", "scipy", "mlflow", "pydantic")


def configure(experiment: str = DEFAULT_EXPERIMENT, root: Path | None = None) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns the URI.

    For the embedded SQLite store the experiment's artifacts go to ./mlruns/artifacts,
    fixed at creation (MLflow would otherwise pin `<cwd>/mlruns/<id>`, reference/mlops.md).
    """
    uri = default_tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    return uri


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PACKAGE_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _requirements() -> list[str]:
    return [f"{p}=={pkg_metadata.version(p)}" for p in _RUNTIME_PACKAGES]


@dataclass(frozen=True)
class Logged:
    run_id: str
    model_uri: str
    version: str
    verdict: dict[str, Any]


def log_training(
    result: TrainResult,
    cfg: TrainConfig,
    *,
    data_path: Path,
    data_hash: str,
    heldout: pd.DataFrame,
    table_warnings: tuple[str, ...],
) -> Logged:
    """Log one run, judge it by the gate, log the model with its documents, register, alias.

    The gate runs before the model is logged so that the model card shipped inside the model
    carries the verdict. Call after `configure`.
    """
    with mlflow.start_run() as run:
        _log_evidence(result, cfg, data_path, data_hash, table_warnings)
        criteria = Criteria.load()
        evidence = {**result.gate_evidence(), **champion_brier(heldout)}
        verdict = evaluate_gate(evidence, criteria).to_dict()
        mlflow.log_text(ACCEPTANCE_FILE.read_text(), "gate/acceptance.toml")
        mlflow.log_dict({"evidence": evidence, "verdict": verdict}, "gate/verdict.json")
        mlflow.log_metric("gate_passed", float(verdict["passed"]))
        for check in verdict["checks"]:
            mlflow.log_metric(f"gate.{check['name']}", float(check["passed"]))
        result.predictor.documents = build_documents(result, verdict)
        for name, text in result.predictor.documents.items():
            mlflow.log_text(text, f"model_card/{name}")
        info = _log_model(result.predictor)
        mv = mlflow.register_model(info.model_uri, REGISTERED_MODEL)
        alias, reason = _alias_for(verdict, evidence)
        client = MlflowClient()
        client.set_registered_model_alias(REGISTERED_MODEL, alias, str(mv.version))
        gate_tag = {
            "passed": verdict["passed"],
            "alias": alias,
            "reason": reason,
            "criteria_version": verdict["criteria_version"],
            "failed": [c["name"] for c in verdict["checks"] if not c["passed"]],
        }
        client.set_model_version_tag(
            REGISTERED_MODEL, str(mv.version), "gate", json.dumps(gate_tag)
        )
        mlflow.set_tags({"gate.verdict": alias, "gate.passed": str(verdict["passed"])})
    return Logged(
        run.info.run_id, info.model_uri, str(mv.version), {**gate_tag, "checks": verdict["checks"]}
    )


def _log_evidence(
    result: TrainResult,
    cfg: TrainConfig,
    data_path: Path,
    data_hash: str,
    table_warnings: tuple[str, ...],
) -> None:
    mlflow.set_tags(
        {
            "data.path": data_path.name,
            "data.sha256": data_hash,
            "git.commit": git_commit(),
            "estimator": result.selection.chosen,
            "synthetic_data": str(result.predictor.metadata.get("synthetic_data", False)),
            "sample_size_adequate": str(result.sample_size["adequate"]),
        }
    )
    mlflow.log_params(cfg.as_params())
    mlflow.log_params({f"hyper.{k}": str(v) for k, v in result.hyper.items()})
    mlflow.log_metrics({k: v for k, v in result.metrics.items() if np.isfinite(v)})
    for name, fig in result.figures.items():
        mlflow.log_figure(fig, name)
    mlflow.log_dict({"outer_log_loss": result.selection.outer_log_loss}, "selection/nested_cv.json")
    mlflow.log_dict(result.sample_size, "validation/sample_size.json")
    if result.validation is not None:
        mlflow.log_params(
            {
                "internal_validation.folds": str(result.validation.folds),
                "internal_validation.repeats": str(result.validation.repeats),
            }
        )
        mlflow.log_dict(result.validation.to_dict(), "validation/internal_validation.json")
    if result.decision_curve is not None:
        mlflow.log_dict(result.decision_curve.to_dict("list"), "validation/decision_curve.json")
    if result.fairness is not None:
        mlflow.log_dict(result.fairness.to_dict(), "validation/fairness.json")
        mlflow.log_text(result.fairness.to_markdown(), "validation/fairness.md")
    if table_warnings:
        mlflow.log_dict({"warnings": list(table_warnings)}, "data/validation_warnings.json")


def champion_brier(heldout: pd.DataFrame) -> dict[str, Any]:
    """The current champion's Brier score on this run's held-out patients, if there is one."""
    current = registry_version(CHAMPION)
    if current is None:
        return {"champion_version": None, "champion_brier": None}
    champ = load_predictor(f"models:/{REGISTERED_MODEL}@{CHAMPION}")
    y = heldout["response_6m"].to_numpy(dtype=int)
    return {
        "champion_version": current,
        "champion_brier": float(brier_score_loss(y, champ.score(heldout).probability)),
    }


def _alias_for(verdict: dict[str, Any], evidence: dict[str, Any]) -> tuple[str, str]:
    if verdict["passed"]:
        if evidence["champion_version"] is None:
            return CHAMPION, "passed the acceptance criteria; no champion yet"
        return CHAMPION, "passed the acceptance criteria and is not worse than the champion"
    failed = ", ".join(c["name"] for c in verdict["checks"] if not c["passed"])
    return CHALLENGER, f"did not pass: {failed}"


def _log_model(predictor: Predictor) -> Any:
    """Log the pyfunc; no input example, since an example row would copy patient data."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictor"
        predictor.save(path)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"predictor": str(path)},
            code_paths=[str(PACKAGE_ROOT / "features"), str(PACKAGE_ROOT / "serving")],
            pip_requirements=_requirements(),
        )
