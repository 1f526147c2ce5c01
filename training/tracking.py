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
from training.card import card_markdown
from training.config import TrainConfig

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
    """Log one run, register a version and apply the gate. Call after `configure`."""
    with mlflow.start_run() as run:
        mlflow.set_tags(
            {
                "data.path": data_path.name,
                "data.sha256": data_hash,
                "git.commit": git_commit(),
                "estimator": result.selection.chosen,
                "synthetic_data": str(result.predictor.metadata.get("synthetic_data", False)),
            }
        )
        mlflow.log_params(cfg.as_params())
        mlflow.log_params({f"hyper.{k}": str(v) for k, v in result.hyper.items()})
        mlflow.log_metrics({k: v for k, v in result.metrics.items() if np.isfinite(v)})
        for name, fig in result.figures.items():
            mlflow.log_figure(fig, name)
        mlflow.log_dict(
            {"outer_log_loss": result.selection.outer_log_loss}, "selection/nested_cv.json"
        )
        if table_warnings:
            mlflow.log_dict({"warnings": list(table_warnings)}, "data/validation_warnings.json")
        card = result.predictor.metadata["model_card"]
        mlflow.log_dict(card, "model_card/model_card.json")
        mlflow.log_text(card_markdown(card), "model_card/model_card.md")
        info = _log_model(result.predictor)
        mv = mlflow.register_model(info.model_uri, REGISTERED_MODEL)
        verdict = apply_gate(str(mv.version), result, heldout)
        mlflow.log_dict(verdict, "gate/verdict.json")
        mlflow.set_tag("gate.verdict", verdict["alias"])
    return Logged(run.info.run_id, info.model_uri, str(mv.version), verdict)


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


def apply_gate(version: str, result: TrainResult, heldout: pd.DataFrame) -> dict[str, Any]:
    """The first version becomes champion; later ones only if they beat it on this held-out set.

    "Beat" means a lower Brier score on exactly these patients (the champion scores them
    now). The verdict and both scores are returned for logging.
    """
    client = MlflowClient()
    y = heldout["response_6m"].to_numpy(dtype=int)
    new_brier = float(brier_score_loss(y, result.test_probability))
    current = registry_version(CHAMPION)
    verdict: dict[str, Any] = {
        "version": version,
        "criterion": "lower held-out Brier",
        "candidate_brier": new_brier,
        "champion_version": current,
    }
    if current is None:
        alias, verdict["reason"] = CHAMPION, "no champion yet"
    else:
        champ = load_predictor(f"models:/{REGISTERED_MODEL}@{CHAMPION}")
        champ_brier = float(brier_score_loss(y, champ.score(heldout).probability))
        verdict["champion_brier"] = champ_brier
        if new_brier < champ_brier:
            alias, verdict["reason"] = CHAMPION, "beats the champion on the same held-out data"
        else:
            alias, verdict["reason"] = CHALLENGER, "does not beat the champion"
    client.set_registered_model_alias(REGISTERED_MODEL, alias, version)
    client.set_model_version_tag(REGISTERED_MODEL, version, "gate", json.dumps(verdict))
    verdict["alias"] = alias
    return verdict
