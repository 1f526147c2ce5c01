"""One `explain` result -> an R4 RiskAssessment dict, and the checks fhir.resources skips.

Why: the EHR stores what the clinician saw, so the resource must carry the model version
(contained Device `#model`, `method.coding.version`), the inputs (`basis`), the explanation in
words (`rationale`) and in numbers (extension), and a deterministic `identifier` so a retried
call is a duplicate for conditional create (`If-None-Exist: identifier=...`), not a new record.

Conventions (documented for the EHR team):
- `probabilityDecimal` is a fraction in 0..1 (not a percentage); a `note` says so.
- `qualitativeRisk` (risk-probability low|moderate|high) is the service's band of the probability
  of *response*, not of harm.
- `identifier` is `urn:uuid:` uuid5(`_NAMESPACE`, model name + version + subject + occurrence +
  basis + every contribution's feature and value): same inputs, same UUID.
- `whenPeriod` is occurrence + 91 days to occurrence + 180 days (the outcome window, counted
  from the assessment because the first infusion date is not known yet).
- Extensions: `INTERVAL_URL` (sub-extensions `low`, `high`: valueDecimal 0..1) because
  `probabilityRange` would need % units, and `CONTRIBUTION_URL`, repeated per factor
  (sub-extensions `feature`: CodeableConcept, `shap`: valueDecimal, log-odds).
- Factor codes: LOINC or the input-field code system (`features.fhir_in.field_coding`), and
  `DERIVED_SYSTEM` for derived factors such as the AST/ALT ratio.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fhir.resources.R4B.riskassessment import RiskAssessment
from pydantic import ValidationError

from features.fhir_in import field_coding
from features.schema import BY_NAME
from serving.results import value_text

SITE = "https://ketapredict.example.org"
INTERVAL_URL = f"{SITE}/fhir/StructureDefinition/probability-interval"
CONTRIBUTION_URL = f"{SITE}/fhir/StructureDefinition/feature-contribution"
MODEL_SYSTEM = f"{SITE}/CodeSystem/models"
DERIVED_SYSTEM = f"{SITE}/CodeSystem/derived-factors"
RISK_SYSTEM = "http://terminology.hl7.org/CodeSystem/risk-probability"
SECURITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
OUTCOME_TEXT = "Response to ketamine infusion at 6 months (no heavy drinking days, days 91-180)"
RISK_DISPLAY = {
    "low": "Low likelihood",
    "moderate": "Moderate likelihood",
    "high": "High likelihood",
}
RISK_CODES = frozenset({"negligible", "low", "moderate", "high", "certain"})
OBSERVATION_STATUS = frozenset(
    {"registered", "preliminary", "final", "amended", "corrected", "cancelled"}
    | {"entered-in-error", "unknown"}
)
TOP_RATIONALE = 3
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, f"{SITE}/RiskAssessment")


def risk_assessment(
    prediction: dict[str, Any],
    *,
    subject_ref: str,
    basis: list[str],
    occurrence: datetime,
    model_card_url: str | None = None,
) -> dict[str, Any]:
    """Build the RiskAssessment for one `serving.results.explain` item."""
    if occurrence.tzinfo is None:
        raise ValueError("occurrence must be timezone-aware")
    model = prediction["model"]
    name, version = model.get("name"), model.get("version")
    if not name or not version:
        raise ValueError("the prediction has no model name or version")
    band = prediction["risk_band"]
    if band not in RISK_DISPLAY:
        raise ValueError(f"unknown risk band {band!r}")
    refs = list(dict.fromkeys([subject_ref, *basis]))
    when = occurrence.astimezone(UTC)
    contributions = prediction["contributions"]
    key = json.dumps(
        [name, version, subject_ref, when.isoformat(), refs]
        + [[c["feature"], c["value"]] for c in contributions],
        default=str,
    )
    notes = [
        "probabilityDecimal is the probability of response as a fraction from 0 to 1; "
        "qualitativeRisk is its band (likelihood of response, not a risk of harm).",
        f"Eligibility: {prediction['eligibility']['status']}. "
        f"Warnings: {len(prediction.get('warnings') or [])}.",
        "Decision support, not a decision.",
    ]
    if model_card_url:
        notes.append(f"Model card: {model_card_url}")
    low, high = prediction["probability_interval"]
    return {
        "resourceType": "RiskAssessment",
        "meta": {
            "security": [
                {
                    "system": SECURITY_SYSTEM,
                    "code": "AIAST",
                    "display": "Artificial Intelligence asserted",
                }
            ]
        },
        "contained": [
            {
                "resourceType": "Device",
                "id": "model",
                "deviceName": [{"name": name, "type": "model-name"}],
                "version": [{"value": version}],
            }
        ],
        "identifier": [
            {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid5(_NAMESPACE, key)}"}
        ],
        "status": "final",
        "method": {"coding": [{"system": MODEL_SYSTEM, "code": name, "version": version}]},
        "subject": {"reference": subject_ref},
        "occurrenceDateTime": when.isoformat().replace("+00:00", "Z"),
        "performer": {"reference": "#model"},
        "basis": [{"reference": r} for r in refs],
        "prediction": [
            {
                "extension": [
                    _complex(INTERVAL_URL, low=_decimal(low), high=_decimal(high)),
                    *(_contribution(c) for c in contributions),
                ],
                "outcome": {"text": OUTCOME_TEXT},
                "probabilityDecimal": _decimal(prediction["probability"]),
                "qualitativeRisk": {
                    "coding": [{"system": RISK_SYSTEM, "code": band, "display": RISK_DISPLAY[band]}]
                },
                "whenPeriod": {
                    "start": (when + timedelta(days=91)).date().isoformat(),
                    "end": (when + timedelta(days=180)).date().isoformat(),
                },
                "rationale": rationale(contributions),
            }
        ],
        "note": [{"text": t} for t in notes],
    }


def rationale(contributions: list[dict[str, Any]], top: int = TOP_RATIONALE) -> str:
    """'Main factors (SHAP, log-odds): Heavy drinking days 48 days (−0.41); ...'."""
    ranked = sorted(contributions, key=lambda c: -abs(c["shap"]))[:top]
    if not ranked:
        return "No factor contributions were available."
    parts = [
        f"{c['label']} {value_text(c)} ({_signed(c['shap'])})".replace("  ", " ") for c in ranked
    ]
    return "Main factors (SHAP, log-odds): " + "; ".join(parts) + "."


def _signed(x: float) -> str:
    return f"{'−' if x < 0 else '+'}{abs(x):.2f}"


def _decimal(x: float) -> float:
    return round(float(x), 4)


def _complex(url: str, **values: float) -> dict[str, Any]:
    return {"url": url, "extension": [{"url": k, "valueDecimal": v} for k, v in values.items()]}


def _contribution(c: dict[str, Any]) -> dict[str, Any]:
    f = BY_NAME.get(c["feature"])
    coding = field_coding(f) if f else {"system": DERIVED_SYSTEM, "code": c["feature"]}
    concept = {"coding": [coding], "text": c.get("label") or c["feature"]}
    return {
        "url": CONTRIBUTION_URL,
        "extension": [
            {"url": "feature", "valueCodeableConcept": concept},
            {"url": "shap", "valueDecimal": _decimal(c["shap"])},
        ],
    }


def find_empty(obj: Any, path: str = "$") -> list[str]:
    """Paths of null, empty or blank strings, lists and dicts (FHIR JSON forbids them)."""
    if obj is None or (isinstance(obj, str) and not obj.strip()):
        return [path]
    if isinstance(obj, dict):
        inner = [p for k, v in obj.items() for p in find_empty(v, f"{path}.{k}")]
        return inner if obj else [path]
    if isinstance(obj, list):
        inner = [p for i, v in enumerate(obj) for p in find_empty(v, f"{path}[{i}]")]
        return inner if obj else [path]
    return []


def assert_no_empty(obj: Any) -> None:
    """Raise ValueError naming (by path, never by value) every empty element."""
    empty = find_empty(obj)
    if empty:
        raise ValueError("empty elements: " + ", ".join(empty))


def check_risk_assessment(ra: dict[str, Any]) -> list[str]:
    """Every reason `ra` is not a valid RiskAssessment for us; an empty list means valid.

    fhir.resources checks structure and types; this adds what it skips: the status binding,
    ras-1/ras-2 and our 0..1 convention, risk-probability codes, extension urls and values
    (ext-1), local `#` references resolving to contained resources, and empty elements. Messages
    carry paths, never input values (which may hold patient references).
    """
    errors = [f"empty element at {p}" for p in find_empty(ra)]
    try:
        RiskAssessment.model_validate(ra)
    except ValidationError as e:
        errors += [f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()]
    if ra.get("status") not in OBSERVATION_STATUS:
        errors.append("status is not in the observation-status value set")
    for i, pred in enumerate(ra.get("prediction") or []):
        errors += _check_prediction(i, pred)
    contained = {r.get("id") for r in ra.get("contained") or [] if isinstance(r, dict)}
    for ref in _references(ra):
        if ref.startswith("#") and ref[1:] not in contained:
            errors.append(f"reference {ref} has no contained resource")
    errors += _check_extensions(ra, "$")
    return errors


def _check_prediction(i: int, pred: dict[str, Any]) -> list[str]:
    errors = []
    p = pred.get("probabilityDecimal")
    if isinstance(p, int | float) and p > 100:
        errors.append(f"prediction[{i}].probabilityDecimal > 100 (ras-2)")
    if isinstance(p, int | float) and not 0 <= p <= 1:
        errors.append(f"prediction[{i}].probabilityDecimal is not a fraction in 0..1")
    rng = pred.get("probabilityRange") or {}
    for end in ("low", "high"):
        q = rng.get(end)
        if q is not None and (q.get("system"), q.get("code")) != ("http://unitsofmeasure.org", "%"):
            errors.append(f"prediction[{i}].probabilityRange.{end} is not in UCUM % (ras-1)")
    for coding in (pred.get("qualitativeRisk") or {}).get("coding") or []:
        if coding.get("system") == RISK_SYSTEM and coding.get("code") not in RISK_CODES:
            errors.append(f"prediction[{i}].qualitativeRisk code is not in risk-probability")
    return errors


def _references(obj: Any) -> list[str]:
    if isinstance(obj, dict):
        own = [obj["reference"]] if isinstance(obj.get("reference"), str) else []
        return own + [r for k, v in obj.items() if k != "reference" for r in _references(v)]
    if isinstance(obj, list):
        return [r for v in obj for r in _references(v)]
    return []


def _check_extensions(obj: Any, path: str) -> list[str]:
    """ext-1: an extension has a url and either sub-extensions or a value, not both."""
    errors: list[str] = []
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            errors += _check_extensions(v, f"{path}[{i}]")
    if not isinstance(obj, dict):
        return errors
    for k, v in obj.items():
        if k in ("extension", "modifierExtension") and isinstance(v, list):
            for j, ext in enumerate(v):
                has_value = any(key.startswith("value") for key in ext)
                if not ext.get("url") or has_value == bool(ext.get("extension")):
                    errors.append(f"{path}.{k}[{j}] breaks ext-1 or has no url")
        errors += _check_extensions(v, f"{path}.{k}")
    return errors
