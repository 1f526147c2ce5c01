"""The service's side of the audit trail: one call per answered request, or no answer at all.

Every route that predicts calls `audit_answer` after computing its answer and before sending
it; if the store cannot commit, the route answers 503 instead (a prediction without its audit
record must not leave the service). Caller and request id are labels, never tokens.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from serving.audit import AuditStore, AuditUnavailable, default_url, key_from_env

URL_ENV = "KETAPREDICT_AUDIT_URL"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def open_store(root: Path | None = None) -> AuditStore:
    """The store named by `KETAPREDICT_AUDIT_URL`, else SQLite under ./mlruns (embedded)."""
    url = os.environ.get(URL_ENV) or default_url(root or Path.cwd())
    return AuditStore(url, key=key_from_env())


def request_id(headers: Mapping[str, str]) -> str:
    """The caller's X-Request-Id when it is a safe label, else a fresh UUID."""
    given = headers.get("x-request-id", "")
    return given if _REQUEST_ID.fullmatch(given) else str(uuid.uuid4())


def audit_answer(
    store: AuditStore,
    *,
    caller: str,
    route: str,
    model: Mapping[str, str],
    request: str,
    records: Sequence[Mapping[str, Any]],
    results: Sequence[Mapping[str, Any]],
) -> None:
    """Commit one row per patient; raises AuditUnavailable when the store cannot."""
    store.record(
        caller=caller,
        route=route,
        model_name=model["name"],
        model_version=model["version"] or "unversioned",
        request_id=request,
        patients=[(str(r["patient_id"]), r, res) for r, res in zip(records, results, strict=True)],
    )


__all__ = ["AuditUnavailable", "audit_answer", "open_store", "request_id"]
