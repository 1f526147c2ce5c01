"""Where the MLflow store is and how a registered model is found and loaded.

Kept apart from `training.tracking` so that scoring (CLI `predict`, `serve`) does not import
the training stack (scikit-learn model selection, shap, matplotlib).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from serving.predictor import Predictor

REGISTERED_MODEL = "ketamine-aud-response"
CHAMPION, CHALLENGER = "champion", "challenger"


def default_tracking_uri(root: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` when set, else SQLite under ./mlruns with an absolute path."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    store = (root or Path.cwd()) / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(store / 'mlflow.db').resolve()}"


def configure_uri_only(root: Path | None = None) -> str:
    """Point tracking and registry at the store without touching experiments (read paths)."""
    uri = default_tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def version_of(model_uri: str) -> str:
    """Registry version behind `models:/name@alias` or `models:/name/N`; "" for other URIs."""
    if not model_uri.startswith("models:/"):
        return ""
    ref = model_uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    parts = ref.split("/")
    return parts[1] if len(parts) == 2 and parts[1].isdigit() else ""


def load_predictor(model_uri: str) -> Predictor:
    """Load the predictor from any MLflow model URI (registry alias, version or run)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        predictor = Predictor.load(Path(local) / "artifacts" / "predictor")
    predictor.metadata["version"] = version_of(model_uri)
    return predictor


def registry_version(alias: str = CHAMPION) -> str | None:
    """Version number behind an alias, or None when the alias is not set."""
    try:
        return str(MlflowClient().get_model_version_by_alias(REGISTERED_MODEL, alias).version)
    except MlflowException:
        return None
