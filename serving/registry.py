"""Where the MLflow store is and how a registered model is found and loaded.

Kept apart from `training.tracking` so that scoring (CLI `predict`, `serve`) does not import
the training stack (scikit-learn model selection, shap, matplotlib); MLflow itself is imported
by the functions that use it, so the BentoML service (which imports the names below through
`serving.bento_store`) never loads it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from serving.predictor import Predictor

REGISTERED_MODEL = "ketamine-aud-response"
CHAMPION, CHALLENGER = "champion", "challenger"
#: Error codes with which a registry that *answered* says "no such model or alias".
_ABSENT = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})
#: How long `alias_version` may take against a tracking server that is down: one retry, 10 s
#: per attempt (MLflow's defaults, 7 retries with backoff, take about 4 minutes on a closed port).
PROBE_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class RegistryUnavailable(RuntimeError):
    """The registry could not answer (server down, refused, timed out, or failing)."""


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
    import mlflow  # noqa: PLC0415

    uri = default_tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def version_of(model_uri: str) -> str:
    """Registry version behind `models:/name@alias` or `models:/name/N`; "" for other URIs."""
    from mlflow import MlflowClient  # noqa: PLC0415

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
    import mlflow  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        predictor = Predictor.load(Path(local) / "artifacts" / "predictor")
    predictor.metadata["version"] = version_of(model_uri)
    return predictor


def registry_version(alias: str = CHAMPION) -> str | None:
    """Version number behind an alias, or None when the alias is not set."""
    from mlflow import MlflowClient  # noqa: PLC0415
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        return str(MlflowClient().get_model_version_by_alias(REGISTERED_MODEL, alias).version)
    except MlflowException:
        return None


def alias_version(alias: str = CHAMPION) -> str | None:
    """Version behind `alias`, None when the registry answers that it is not set.

    Unlike `registry_version`, tells "not set" from "could not ask", and asks quickly
    (`PROBE_HTTP`, unless `MLFLOW_HTTP_REQUEST_*` are set): `ketapredict serve` uses it to
    decide whether to start from the BentoML store alone.

    Raises:
        RegistryUnavailable: the tracking server or store did not answer.
    """
    from mlflow import MlflowClient  # noqa: PLC0415
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    with _env_defaults(PROBE_HTTP):
        try:
            return str(MlflowClient().get_model_version_by_alias(REGISTERED_MODEL, alias).version)
        except MlflowException as exc:
            if exc.error_code in _ABSENT:
                return None
            raise RegistryUnavailable(str(exc.error_code)) from exc
        except (OSError, ValueError) as exc:  # a broken URI or store below MLflow's own errors
            reason = type(exc).__name__
            raise RegistryUnavailable(reason) from exc


def shown_uri(uri: str) -> str:
    """A tracking URI fit for a log line: user and password removed."""
    head, sep, rest = uri.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return uri
    return f"{head}://{rest.split('@', 1)[1]}"


@contextlib.contextmanager
def _env_defaults(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables that are unset, for the block only."""
    added = [k for k in values if k not in os.environ]
    os.environ.update({k: values[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)
