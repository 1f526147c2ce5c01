"""FHIR R4 Patient + Observations -> one API record for `validate_records` (pure, no I/O).

Why a separate layer: the EHR speaks LOINC, UCUM and dated, versioned observations; the model
speaks the data dictionary. Every code and unit comes from `features.schema.FIELDS`, so the FHIR
door cannot drift from the table and JSON doors, and the record it builds goes through the same
`validate_records` checks (ranges, levels) as any other request.

Rules (the contract the EHR team tests against):
- Codes: each input field has exactly one code: its LOINC code (`http://loinc.org`) when the
  schema has one, else `LOCAL_SYSTEM` with the field name as code (`field_coding`). Observation
  components (e.g. a blood-pressure panel) are matched the same way.
- Patient: `id` -> patient_id, `gender` male|female -> sex (other/unknown/missing is a problem:
  the model needs sex assigned at birth), `birthDate` -> age_years in completed years on the
  date of `assessed_at` (a 29 February birthday counts from 1 March). A partial birthDate
  (YYYY, YYYY-MM) is used only when every possible birth day gives the same age; otherwise it is
  a problem. Observations coded as age or sex are ignored (`patient-field`): Patient decides.
- Observations: status final|amended|corrected only; dated by effectiveDateTime,
  effectivePeriod.end, else issued (a partial date counts from its first instant); dated in
  (assessed_at - lookback_days, assessed_at]; the newest per field wins (a tie keeps bundle
  order), older ones are `superseded`. Everything set aside is listed in `ignored` with its code
  and reason, never its value. Observations about another patient are a problem (a broken
  query must not mix people).
- Values: valueQuantity with UCUM `system` and `code`, converted by exact factors (`UNIT_FACTORS`)
  into the schema unit and refused otherwise; valueInteger for integer fields and for
  dimensionless (`{...}`) units; valueBoolean for flags; valueCodeableConcept (coding code or
  text) or valueString for categories.
- Problems are dicts {index, field, message, code} (`validation.Problem` fields plus an
  OperationOutcome issue type; `field` "<record>" for the whole bundle); messages
  name fields and units but never an identifier or a name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from features.schema import BY_NAME, ID_FIELD, INPUT_FIELDS, Field

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
#: Local code system for input fields that have no LOINC code; the code is the field name.
LOCAL_SYSTEM = "https://ketapredict.example.org/CodeSystem/input-fields"
ACCEPTED_STATUS = frozenset({"final", "amended", "corrected"})
#: Fields taken from the Patient resource, never from Observations.
PATIENT_FIELDS = ("patient_id", "sex", "age_years")
_NOT_OBSERVED = {ID_FIELD, "site_id"}
#: schema unit -> {UCUM code received: factor into the schema unit}. Exact UCUM relations only.
UNIT_FACTORS: dict[str, dict[str, float]] = {
    "mg/L": {"mg/L": 1.0, "mg/dL": 10.0, "ug/mL": 1.0},
    "pg/mL": {"pg/mL": 1.0, "ng/L": 1.0, "ng/mL": 1000.0},
    "ng/mL": {"ng/mL": 1.0, "ug/L": 1.0},
    "U/L": {"U/L": 1.0, "ukat/L": 60.0},
    "fL": {"fL": 1.0, "um3": 1.0},
    "kg/m2": {"kg/m2": 1.0},
    "%": {"%": 1.0},
    "mm[Hg]": {"mm[Hg]": 1.0},
    "mg/kg": {"mg/kg": 1.0},
    "a": {"a": 1.0},
    "d": {"d": 1.0},
}


def field_coding(f: Field) -> dict[str, str]:
    """The one Coding that identifies a field in FHIR (LOINC, else the local code system)."""
    return (
        {"system": LOINC, "code": f.loinc} if f.loinc else {"system": LOCAL_SYSTEM, "code": f.name}
    )


_BY_CODE: dict[tuple[str, str], Field] = {
    (c["system"], c["code"]): f
    for f in INPUT_FIELDS
    if f.name not in _NOT_OBSERVED
    for c in [field_coding(f)]
}


@dataclass(frozen=True)
class FhirInput:
    """A record for `validate_records`, the Observations it used, and what was set aside."""

    record: dict[str, Any]
    basis: list[str] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)


def prefetch_to_bundle(prefetch: dict[str, Any]) -> dict[str, Any]:
    """Flatten CDS Hooks prefetch values (resource, Bundle or null) into one collection Bundle.

    Search-outcome OperationOutcomes are dropped, and a resource seen twice is kept once.
    """
    resources: list[dict[str, Any]] = []
    for value in prefetch.values():
        resources.extend(_resources(value))
    seen: set[tuple[str, str]] = set()
    entries = []
    for r in resources:
        key = (r.get("resourceType", ""), r.get("id", ""))
        if r.get("resourceType") == "OperationOutcome" or (key[1] and key in seen):
            continue
        seen.add(key)
        entries.append({"resource": r})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _resources(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, dict):
        return []
    if value.get("resourceType") != "Bundle":
        return [value]
    return [r for e in value.get("entry") or [] for r in _resources(e.get("resource"))]


def bundle_to_record(
    bundle: dict[str, Any], *, assessed_at: datetime, lookback_days: int = 365
) -> FhirInput:
    """Map a Bundle (searchset or collection; nested Bundles are flattened) to one API record."""
    if assessed_at.tzinfo is None:
        raise ValueError("assessed_at must be timezone-aware")
    if bundle.get("resourceType") != "Bundle":
        raise ValueError("expected a FHIR Bundle")
    resources = _resources(bundle)
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    record, problems = _patient(patients, assessed_at)
    observations = [r for r in resources if r.get("resourceType") == "Observation"]
    own = f"Patient/{record[ID_FIELD]}" if ID_FIELD in record else None
    out = FhirInput(record, problems=problems)
    candidates: dict[str, list[tuple[datetime, dict[str, Any], dict[str, Any]]]] = {}
    window_start = assessed_at - timedelta(days=lookback_days)
    for obs in observations:
        tail = str((obs.get("subject") or {}).get("reference", "")).split("/")[-2:]
        if own and tail[0] == "Patient" and tail != own.split("/"):
            out.problems.append(_problem("<record>", "an Observation is about another patient"))
            continue
        for item in [obs, *(obs.get("component") or [])]:
            _sort_in(obs, item, window_start, assessed_at, candidates, out)
    for name, found in candidates.items():
        found.sort(key=lambda t: t[0], reverse=True)
        _, obs, item = found[0]
        _take(BY_NAME[name], obs, item, out)
        for _, older, _ in found[1:]:
            out.ignored.append(_ignored(older, BY_NAME[name], "superseded", "a newer one is used"))
    return out


def _sort_in(
    obs: dict[str, Any],
    item: dict[str, Any],
    window_start: datetime,
    assessed_at: datetime,
    candidates: dict[str, list[tuple[datetime, dict[str, Any], dict[str, Any]]]],
    out: FhirInput,
) -> None:
    """File one Observation (or component) under its field, or list it as ignored."""
    f = next((_BY_CODE[k] for k in _codes(item) if k in _BY_CODE), None)
    if f is None:
        if item is obs and not obs.get("component"):
            out.ignored.append(_ignored(obs, None, "unknown-code", "no input field has this code"))
        return
    status = obs.get("status")
    when = _obs_time(obs)
    if f.name in PATIENT_FIELDS:
        out.ignored.append(_ignored(obs, f, "patient-field", "taken from the Patient resource"))
    elif status not in ACCEPTED_STATUS:
        out.ignored.append(_ignored(obs, f, "status", f"status {status} is not final"))
    elif when is None:
        out.ignored.append(_ignored(obs, f, "undated", "no effective or issued date"))
    elif when > assessed_at:
        out.ignored.append(_ignored(obs, f, "after-assessment", "dated after the assessment"))
    elif when <= window_start:
        out.ignored.append(_ignored(obs, f, "stale", "older than the look-back window"))
    else:
        candidates.setdefault(f.name, []).append((when, obs, item))


def _take(f: Field, obs: dict[str, Any], item: dict[str, Any], out: FhirInput) -> None:
    value, message = _value(f, item)
    if message is not None:
        out.problems.append(_problem(f.name, message, "value"))
        return
    out.record[f.name] = value
    ref = f"Observation/{obs['id']}" if obs.get("id") else None
    if ref and ref not in out.basis:
        out.basis.append(ref)


def _value(f: Field, item: dict[str, Any]) -> tuple[Any, str | None]:
    """The value in the schema's type and unit, or why it cannot be used."""
    if f.kind == "boolean":
        v = item.get("valueBoolean")
        return (v, None) if isinstance(v, bool) else (None, f"{f.name} needs valueBoolean")
    if f.kind == "category":
        text = item.get("valueString")
        cc = item.get("valueCodeableConcept") or {}
        codes = [c.get("code") for c in cc.get("coding") or []] + [cc.get("text"), text]
        level = next((c for c in codes if c in f.levels), None)
        allowed = ", ".join(f.levels)
        return (level, None) if level else (None, f"{f.name} needs one of: {allowed}")
    if "valueInteger" in item and (f.kind == "integer" or (f.unit or "").startswith("{")):
        return item["valueInteger"], None
    q = item.get("valueQuantity")
    if not isinstance(q, dict) or not isinstance(q.get("value"), int | float):
        return None, f"{f.name} needs a valueQuantity with a number"
    return _convert(f, q)


def _convert(f: Field, q: dict[str, Any]) -> tuple[Any, str | None]:
    code = q.get("code")
    if q.get("system") != UCUM or not code:
        return None, f"{f.name}: the unit must be a UCUM code (system {UCUM})"
    target = f.unit or "1"
    factors = UNIT_FACTORS.get(target, {target: 1.0, "1": 1.0})
    if code not in factors:
        expected = ", ".join(factors)
        return None, f"{f.name}: unit {code} cannot be converted to {target} (use {expected})"
    value = float(f"{q['value'] * factors[code]:.12g}")  # 1.1 ukat/L -> 66, not 66.00000000000001
    if f.kind == "integer" and value == int(value):
        return int(value), None
    return value, None


def _patient(patients: list[dict[str, Any]], at: datetime) -> tuple[dict[str, Any], list]:
    """patient_id, sex and age_years from the single Patient, plus problems."""
    ids = {p.get("id") for p in patients}
    if len(ids) != 1:
        message = "no Patient resource" if not ids else "more than one Patient resource"
        return {}, [_problem("<record>", message, "structure")]
    p = patients[0]
    record: dict[str, Any] = {ID_FIELD: p["id"]} if p.get("id") else {}
    problems = [] if record else [_problem(ID_FIELD, "Patient.id is missing", "required")]
    gender = p.get("gender")
    if gender in BY_NAME["sex"].levels:
        record["sex"] = gender
    else:
        shown = f"is {gender}" if gender in ("other", "unknown") else "is missing or invalid"
        message = f"Patient.gender {shown}; sex assigned at birth (male or female) is required"
        problems.append(_problem("sex", message, "required"))
    age, message = _age(p.get("birthDate"), at.date())
    if message:
        problems.append(_problem("age_years", message, "value"))
    else:
        record["age_years"] = age
    return record, problems


def _age(birth: Any, on: date) -> tuple[int | None, str | None]:
    """Completed years; a partial birthDate only when all its possible days agree."""
    if not isinstance(birth, str) or not birth:
        return None, "Patient.birthDate is missing"
    try:
        parts = [int(x) for x in birth.split("-")]
        first = date(parts[0], parts[1] if len(parts) > 1 else 1, parts[2] if len(parts) > 2 else 1)
        last = date(parts[0], parts[1] if len(parts) > 1 else 12, parts[2] if len(parts) > 2 else 1)
        if len(parts) < 3:
            last = (last.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    except (ValueError, IndexError):
        return None, "Patient.birthDate is not a FHIR date"
    if last > on:
        return None, "Patient.birthDate is after the assessment date"
    young, old = _years(last, on), _years(first, on)
    if young != old:
        return None, "Patient.birthDate is partial and the age at the assessment is ambiguous"
    return old, None


def _years(birth: date, on: date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _obs_time(obs: dict[str, Any]) -> datetime | None:
    text = obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("end")
    return _instant(text or obs.get("issued"))


def _instant(text: Any) -> datetime | None:
    """A FHIR date/dateTime/instant as an aware datetime (UTC when no zone; partial -> start)."""
    if not isinstance(text, str) or not text:
        return None
    padded = text + "-01-01"[len(text) - 4 :] if len(text) < 10 else text
    try:
        t = datetime.fromisoformat(padded.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _codes(item: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c.get("system"), c.get("code")) for c in (item.get("code") or {}).get("coding") or []]


def _ignored(obs: dict[str, Any], f: Field | None, reason: str, detail: str) -> dict[str, Any]:
    codes = [f"{s}|{c}" for s, c in _codes(obs)]
    out: dict[str, Any] = {"code": codes[0] if codes else None, "reason": reason, "detail": detail}
    if obs.get("id"):
        out["reference"] = f"Observation/{obs['id']}"
    if f is not None:
        out["field"] = f.name
    return out


def _problem(name: str, message: str, code: str = "invalid") -> dict[str, Any]:
    """Shaped like `validation.Problem` (index 0: the one patient) plus an issue-type code."""
    return {"index": 0, "field": name, "message": message, "code": code}


def problems_to_operation_outcome(problems: list[Any]) -> dict[str, Any]:
    """An R4 OperationOutcome (severity error) from FHIR-mapping problems or `Problem`s.

    Accepts the dicts above and `features.validation.Problem` objects, so both the mapping step
    and `validate_records` answer the EHR the same way. At least one problem is required.
    """
    if not problems:
        raise ValueError("an OperationOutcome needs at least one issue")
    issues = []
    for p in problems:
        d = p if isinstance(p, dict) else {"field": p.field, "message": p.message}
        issue = {"severity": "error", "code": d.get("code") or "invalid"}
        issue["diagnostics"] = f"{d['field']}: {d['message']}"
        issue["details"] = {"text": d["message"]}
        issues.append(issue)
    return {"resourceType": "OperationOutcome", "issue": issues}
