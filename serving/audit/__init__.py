"""Audit log for predictions: keyed pseudonyms, one row per patient, SQLite or PostgreSQL.

See `store.AuditStore` for the write path the service uses and `serving.audit_export` for
FHIR AuditEvents.
"""

from serving.audit.keys import (
    KEY_ENV,
    caller_label,
    canonical_json,
    input_hash,
    key_from_env,
    key_id,
    output_summary,
    patient_hash,
)
from serving.audit.migrate import current, downgrade, upgrade
from serving.audit.store import AuditRow, AuditStore, AuditUnavailable, default_url
from serving.audit.table import audit_event

__all__ = [
    "KEY_ENV",
    "AuditRow",
    "AuditStore",
    "AuditUnavailable",
    "audit_event",
    "caller_label",
    "canonical_json",
    "current",
    "default_url",
    "downgrade",
    "input_hash",
    "key_from_env",
    "key_id",
    "output_summary",
    "patient_hash",
    "upgrade",
]
