"""Copy a registered MLflow model into the BentoML model store (DESIGN decision 6).

The service then loads from the BentoML store only, so it starts and serves while the MLflow
tracking server is down, and a Bento built from it carries the exact model (reference/mlops.md
§2.2, option B: no MLflow at serving time).
"""

from __future__ import annotations

import re

import bentoml
import mlflow
from bentoml.exceptions import NotFound
from mlflow import MlflowClient

from serving.predictor import Predictor
from serving.registry import REGISTERED_MODEL

BENTO_MODEL = REGISTERED_MODEL


def bento_version(mlflow_version: str, run_id: str) -> str:
    """A tag version unique across MLflow stores: registry version plus run id prefix."""
    return f"v{mlflow_version}-{re.sub(r'[^a-z0-9]', '', run_id.lower())[:12]}"


def import_alias(alias: str = "champion") -> bentoml.Tag:
    """Import the version behind `alias` unless the store already holds it; return its tag."""
    mv = MlflowClient().get_model_version_by_alias(REGISTERED_MODEL, alias)
    version, run_id = str(mv.version), str(mv.run_id or "norun")
    tag = bentoml.Tag(BENTO_MODEL, bento_version(version, run_id))
    try:
        return bentoml.models.get(tag).tag
    except NotFound:
        pass
    metadata = {
        "mlflow_version": version,
        "mlflow_run_id": run_id,
        "alias": alias,
        "source_uri": f"models:/{REGISTERED_MODEL}/{version}",
    }
    with bentoml.models.create(tag, labels={"alias": alias}, metadata=metadata) as ref:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{REGISTERED_MODEL}/{version}", dst_path=ref.path
        )
        Predictor.load(ref.path_of("artifacts/predictor"))  # refuse to store a broken model
    return tag
