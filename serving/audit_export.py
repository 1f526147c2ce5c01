"""Audit rows as FHIR R4 AuditEvents (IHE BALP-flavoured), for `ketapredict audit export`.

Why FHIR: a health system's audit repository ingests AuditEvents, not our table. Each event
follows the shape of BALP's RESTful events (type `rest`, action E, the client and server as
agents, the request id as an `XrequestId` entity) with the patient as an entity identified
only by its keyed hash (`urn:ketapredict:patient-key`); the export can therefore leave the
building without carrying an identifier. Every resource is validated with fhir.resources
(R4B, whose AuditEvent and Bundle match R4) before it is returned.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from serving.audit import AuditRow, AuditStore, canonical_json

PATIENT_KEY_SYSTEM = "urn:ketapredict:patient-key"
CALLER_SYSTEM = "urn:ketapredict:caller"
ROUTE_SYSTEM = "urn:ketapredict:route"
OBSERVER = "ketapredict"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:ketapredict:audit-event")
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_REST = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
_OPERATION = {"system": "http://hl7.org/fhir/restful-interaction", "code": "operation"}
_APP_SERVER = {
    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
    "code": "4",
    "display": "Application Server",
}
_PERSON = {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"}
_PATIENT_ROLE = {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}
_XREQUEST = {
    "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
    "code": "XrequestId",
}


def event_id(row: AuditRow) -> str:
    """A stable UUID per row, so exporting the same range twice yields the same resources."""
    return str(uuid.uuid5(_NAMESPACE, f"{row.id}/{row.request_id}/{row.patient_key}"))


def _agents(row: AuditRow) -> list[dict[str, Any]]:
    return [
        {
            "type": {"coding": [{"system": _DCM, "code": "110153", "display": "Source Role ID"}]},
            "who": {"identifier": {"system": CALLER_SYSTEM, "value": row.caller}},
            "requestor": True,
        },
        {
            "type": {
                "coding": [{"system": _DCM, "code": "110152", "display": "Destination Role ID"}]
            },
            "who": {"display": OBSERVER},
            "requestor": False,
        },
    ]


def _patient_entity(row: AuditRow) -> dict[str, Any]:
    details = {
        "model_name": row.model_name,
        "model_version": row.model_version,
        "key_id": row.key_id,
        "input_sha256": row.input_sha256,
        "output": canonical_json(row.output),
    }
    return {
        "what": {"identifier": {"system": PATIENT_KEY_SYSTEM, "value": row.patient_key}},
        "type": _PERSON,
        "role": _PATIENT_ROLE,
        "detail": [{"type": k, "valueString": v} for k, v in details.items()],
    }


def audit_event(row: AuditRow) -> dict[str, Any]:
    """One row as a validated AuditEvent resource (JSON-ready dict)."""
    resource = {
        "resourceType": "AuditEvent",
        "id": event_id(row),
        "type": _REST,
        "subtype": [_OPERATION, {"system": ROUTE_SYSTEM, "code": row.route}],
        "action": "E",
        "recorded": row.occurred_at.astimezone(UTC).isoformat(),
        "outcome": "0",
        "agent": _agents(row),
        "source": {"observer": {"display": OBSERVER}, "type": [_APP_SERVER]},
        "entity": [
            _patient_entity(row),
            {"what": {"identifier": {"value": row.request_id}}, "type": _XREQUEST},
        ],
    }
    AuditEvent.model_validate(resource)
    return resource


def audit_events(rows: Iterable[AuditRow]) -> list[dict[str, Any]]:
    """Rows as validated AuditEvent resources, in the rows' order."""
    return [audit_event(r) for r in rows]


def bundle(events: list[dict[str, Any]], *, timestamp: datetime | None = None) -> dict[str, Any]:
    """A validated `collection` Bundle of AuditEvents (no `entry` when there are none)."""
    resource: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": (timestamp or datetime.now(UTC)).astimezone(UTC).isoformat(),
    }
    if events:
        resource["entry"] = [{"fullUrl": f"urn:uuid:{e['id']}", "resource": e} for e in events]
    Bundle.model_validate(resource)
    return resource


def export(store: AuditStore, start: datetime, end: datetime) -> dict[str, Any]:
    """All records with start <= occurred_at < end as one collection Bundle."""
    return bundle(audit_events(store.rows(start, end)))


def parse_instant(text: str) -> datetime:
    """CLI `--start/--end`: ISO 8601; a bare date means midnight UTC; no zone means UTC.

    Assuming UTC rather than local time makes the same command export the same range on
    every machine.
    """
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def write_export(store: AuditStore, start: datetime, end: datetime, out: Path) -> int:
    """Write the Bundle as JSON to `out`; returns the number of AuditEvents written."""
    resource = export(store, start, end)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(resource, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(resource.get("entry", []))
