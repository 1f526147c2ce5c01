"""A data-dictionary record written as a FHIR R4 Bundle (Patient + one Observation per field).

The inverse of `features.fhir_in.bundle_to_record`, coded from the same schema: used by the
tests that round-trip patients through the FHIR route, by the benchmarks, and for the example
bundle a clinician can paste into the page.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from features.fhir_in import UCUM, field_coding
from features.schema import INPUT_FIELDS

_PATIENT_FIELDS = {"patient_id", "site_id", "sex", "age_years"}


def _value(kind: str, unit: str | None, value: Any) -> dict[str, Any]:
    if kind == "boolean":
        return {"valueBoolean": bool(value)}
    if kind == "category":
        return {"valueCodeableConcept": {"coding": [{"code": str(value)}], "text": str(value)}}
    if kind == "integer" and (unit or "").startswith("{"):
        return {"valueInteger": int(value)}
    number = int(value) if kind == "integer" else float(value)
    return {"valueQuantity": {"value": number, "unit": unit, "system": UCUM, "code": unit}}


def record_to_bundle(record: dict[str, Any], *, at: dt.datetime) -> dict[str, Any]:
    """Collection Bundle for one patient, every Observation effective one day before `at`.

    The birth date is chosen so that the completed age at `at` equals `age_years`.
    """
    pid = str(record["patient_id"])
    born = dt.date(at.year - int(record["age_years"]), 1, 1)  # birthday already passed at `at`
    patient = {
        "resourceType": "Patient",
        "id": pid,
        "gender": record["sex"],
        "birthDate": born.isoformat(),
    }
    when = (at - dt.timedelta(days=1)).isoformat()
    entries = [{"resource": patient}]
    for i, f in enumerate(INPUT_FIELDS):
        if f.name in _PATIENT_FIELDS or record.get(f.name) is None:
            continue
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": f"obs-{i}",
                    "status": "final",
                    "code": {"coding": [field_coding(f)]},
                    "subject": {"reference": f"Patient/{pid}"},
                    "effectiveDateTime": when,
                    **_value(f.kind, f.unit, record[f.name]),
                }
            }
        )
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}
