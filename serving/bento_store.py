"""Copy a registered MLflow model into the BentoML model store (DESIGN decision 6), and check it.

The service then loads from the BentoML store only, so it starts and serves while the MLflow
tracking server is down, and a Bento built from it carries the exact model (reference/mlops.md
§2.2, option B: no MLflow at serving time).

Every import also writes `CHECKSUMS` into the model: the SHA-256 of each predictor file. A model
whose files were truncated or garbled after the import (a full disk, a bad copy, a hand edit)
then fails `load_checked` with a message naming the model and the file, before any server
starts, instead of loading numbers nobody trained (text formats such as LightGBM's still parse
after a flipped digit). Models imported before checksums existed are checked by loading only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from serving.predictor import Predictor
from serving.registry import CHAMPION, REGISTERED_MODEL

BENTO_MODEL = REGISTERED_MODEL
PREDICTOR_DIR = "artifacts/predictor"
CHECKSUMS = "ketapredict-checksums.json"


class ModelUnusable(RuntimeError):
    """The model named by a tag is missing from the BentoML store or cannot be served.

    The message is one line: which tag, what is wrong, what to do. It holds paths and file
    names, never model content.
    """


def bento_version(mlflow_version: str, run_id: str) -> str:
    """A tag version unique across MLflow stores: registry version plus run id prefix."""
    return f"v{mlflow_version}-{re.sub(r'[^a-z0-9]', '', run_id.lower())[:12]}"


def import_alias(alias: str = CHAMPION) -> bentoml.Tag:
    """Import the version behind `alias` unless the store already holds it; return its tag.

    A model already in the store is returned as it is: `load_checked` is what finds out
    whether its files are still intact.
    """
    import mlflow  # noqa: PLC0415 (the service imports this module and never needs MLflow)
    from mlflow import MlflowClient  # noqa: PLC0415

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
        predictor_dir = Path(ref.path_of(PREDICTOR_DIR))
        Predictor.load(predictor_dir)  # refuse to store a broken model
        Path(ref.path_of(CHECKSUMS)).write_text(
            json.dumps({"files": _digests(predictor_dir)}, indent=1, sort_keys=True)
        )
    return tag


def newest_imported(alias: str = CHAMPION) -> bentoml.Tag | None:
    """The most recently imported model that was `alias` when it was imported, or None.

    For starting while the registry cannot be asked: it is the newest champion this store
    has seen, which is not necessarily the registry's champion now.
    """
    try:
        models = bentoml.models.list(BENTO_MODEL)
    except NotFound:  # BentoML's answer for "no model of that name at all"
        return None
    found = [
        m
        for m in models
        if m.info.labels.get("alias") == alias or m.info.metadata.get("alias") == alias
    ]
    if not found:
        return None
    return max(found, key=lambda m: m.creation_time).tag


def load_checked(tag: str | bentoml.Tag) -> tuple[bentoml.Model, Predictor]:
    """The store's model for `tag` and its predictor, after checking every file.

    Raises:
        ModelUnusable: no such model in the store, a file differs from its checksum or is
            missing, or the predictor does not load.
    """
    listing = f"List the store with `bentoml models list {BENTO_MODEL}`."
    try:
        model = bentoml.models.get(tag)
    except NotFound:
        raise ModelUnusable(
            f"model {tag} is not in the BentoML model store ({_store()}). {listing}"
        ) from None
    except ValueError as exc:  # a malformed tag
        raise ModelUnusable(f"model tag {tag!r} is not valid: {_reason(exc)}. {listing}") from None
    shown = str(model.tag)
    predictor_dir = Path(model.path_of(PREDICTOR_DIR))
    fix = (
        f"Delete it (`bentoml models delete {shown}`) and run `ketapredict serve` again to "
        "re-import it from the registry."
    )
    problem = _checksum_problem(Path(model.path), predictor_dir)
    if problem is not None:
        raise ModelUnusable(f"model {shown} in {model.path} is corrupt: {problem}. {fix}")
    try:
        predictor = Predictor.load(predictor_dir)
    except Exception as exc:  # any failure to load is the same verdict: cannot serve it
        raise ModelUnusable(
            f"model {shown} in {model.path} cannot be loaded: {type(exc).__name__}: "
            f"{_reason(exc)}. {fix}"
        ) from None
    return model, predictor


def _digests(predictor_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(predictor_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(predictor_dir.rglob("*"))
        if p.is_file()
    }


def _checksum_problem(model_dir: Path, predictor_dir: Path) -> str | None:
    """What differs from the checksums written at import; None when all match or none exist."""
    listing = model_dir / CHECKSUMS
    if not listing.exists():
        return None  # imported before checksums: Predictor.load is the only check
    try:
        expected = json.loads(listing.read_text())["files"]
        if not isinstance(expected, dict) or not expected:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return f"{CHECKSUMS} is unreadable"
    for name, digest in sorted(expected.items()):
        path = predictor_dir / name
        if not path.is_file():
            return f"{PREDICTOR_DIR}/{name} is missing"
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return f"{PREDICTOR_DIR}/{name} does not match its checksum from the import"
    return None


def _store() -> str:
    """The model store's folder, as BentoML documents it: $BENTOML_HOME/models."""
    return str(Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml") / "models")


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
