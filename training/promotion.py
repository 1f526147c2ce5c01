"""Manual promotion: a person moves an alias to a version, with a recorded reason.

The gate decides automatically; this is the documented override for when a person must
decide otherwise (e.g. roll back, or promote a version that failed a criterion for a reason
the criteria did not foresee). The record — who, when, why, what it replaced and what the gate
had said — is stored on the model version and in an MLflow run, so the override is auditable.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import mlflow
from mlflow import MlflowClient

from serving.registry import CHALLENGER, CHAMPION, REGISTERED_MODEL, registry_version

PROMOTIONS_EXPERIMENT = "ketamine-aud-response-promotions"
MIN_REASON_LENGTH = 10


def promote(version: str, reason: str, *, by: str, alias: str = CHAMPION) -> dict[str, Any]:
    """Point `alias` at `version` and record why. Raises ValueError on a bad request.

    Call after `training.tracking.configure(PROMOTIONS_EXPERIMENT)`: the record is also logged
    as a run of that experiment.
    """
    if alias not in (CHAMPION, CHALLENGER):
        raise ValueError(f"alias must be {CHAMPION!r} or {CHALLENGER!r}")
    if len(reason.strip()) < MIN_REASON_LENGTH:
        raise ValueError(f"give a reason of at least {MIN_REASON_LENGTH} characters")
    client = MlflowClient()
    mv = client.get_model_version(REGISTERED_MODEL, version)
    record = {
        "version": str(mv.version),
        "alias": alias,
        "reason": reason.strip(),
        "by": by,
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "previous_version": registry_version(alias),
        "gate": json.loads(mv.tags["gate"]) if "gate" in mv.tags else None,
    }
    client.set_registered_model_alias(REGISTERED_MODEL, alias, str(mv.version))
    client.set_model_version_tag(REGISTERED_MODEL, str(mv.version), "override", json.dumps(record))
    with mlflow.start_run(run_name=f"promote v{mv.version} to {alias}"):
        mlflow.set_tags(
            {"promotion.version": str(mv.version), "promotion.alias": alias, "promotion.by": by}
        )
        mlflow.log_dict(record, "promotion.json")
    return record
