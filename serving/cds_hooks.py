"""CDS Hooks 2.0 for the ketamine-AUD model: discovery, request model, card, checks, idempotency.

Why pure functions: the routes (mounted later on the BentoML FastAPI app) stay thin, and every
rule of the spec (interop.md §1) is testable without a server. The FHIR fallback fetch (the
only I/O besides the feedback store) lives in `serving.cds_fetch`.

Decisions (the contract for the EHR team):
- Two service ids, one per hook, both with the major version: `ketamine-aud-response-v1`
  (`patient-view`) and `ketamine-aud-response-order-v1` (`order-select`). One discovery entry
  has one `hook`, so one id per hook is the unambiguous reading; a breaking change gets `-v2`.
- Prefetch keys are generated from `features.schema`: `patient`, one key per LOINC-coded
  Observation field (named after the field, `_count=1`, newest first), and `local_inputs`: one
  search for every field without LOINC in `fhir_in.LOCAL_SYSTEM`. Age and sex come from the
  Patient resource (`fhir_in.PATIENT_FIELDS`), so their LOINC codes are not fetched.
- Required keys (`REQUIRED_KEYS`): `patient`, the keys of required LOINC fields (AUDIT) and
  `local_inputs` (heavy drinking days, drinks per day, infusions, dose). If one of them is
  missing and cannot be fetched, the route answers 412. Other missing keys only mean missing
  fields, which become warnings.
- Tokens (`fhirAuthorization.access_token`) are `SecretStr`, never logged, never echoed in
  errors: validation messages carry locations and reasons, never input values.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from serving.cds_fetch import (
    REQUIRED_KEYS,
    PrefetchUnavailable,
    missing_prefetch,
    prefetch_templates,
)
from serving.results import value_text

PATIENT_VIEW_ID = "ketamine-aud-response-v1"
ORDER_SELECT_ID = "ketamine-aud-response-order-v1"
SERVICE_HOOKS: dict[str, str] = {PATIENT_VIEW_ID: "patient-view", ORDER_SELECT_ID: "order-select"}
EXTENSION_KEY = "org.ketapredict.model-version"
__all__ = ["REQUIRED_KEYS", "PrefetchUnavailable", "missing_prefetch", "prefetch_templates"]
TITLE = "Ketamine-AUD 6-month response prediction"
DESCRIPTION = (
    "Predicts the probability of response at 6 months (no heavy drinking days, days 91-180) to "
    "ketamine infusion therapy for alcohol use disorder, with SHAP feature contributions, "
    "eligibility and warnings. Decision support only."
)
USAGE = (
    "Requires the Patient (sex, birth date), the latest AUDIT total and the local input-field "
    "Observations (heavy drinking days, drinks per drinking day, planned infusions and dose); "
    "returns HTTP 412 if neither prefetch nor FHIR server access can supply them."
)


def discovery(base_url: str = "", model_version: str | None = None) -> dict[str, Any]:
    """The `GET /cds-services` body. `base_url` is unused by the spec (ids are relative) but
    kept so a future `usageRequirements` link can point at this deployment."""
    del base_url
    services = []
    for sid, hook in SERVICE_HOOKS.items():
        svc: dict[str, Any] = {
            "hook": hook,
            "id": sid,
            "title": TITLE if hook == "patient-view" else f"{TITLE} (ketamine order)",
            "description": DESCRIPTION,
            "prefetch": prefetch_templates(),
            "usageRequirements": USAGE,
        }
        if model_version:
            svc["extension"] = {EXTENSION_KEY: model_version}
        services.append(svc)
    return {"services": services}


class FhirAuthorization(BaseModel):
    """OAuth 2.0 token for the FHIR callback; the token is a SecretStr so reprs hide it."""

    model_config = ConfigDict(extra="allow")
    access_token: SecretStr = Field(min_length=1)
    token_type: Literal["Bearer"]
    expires_in: int = Field(gt=0)
    scope: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    patient: str | None = None


class HookContext(BaseModel):
    """`patient-view` context; `order-select` adds `selections` and `draftOrders`."""

    model_config = ConfigDict(extra="allow")
    userId: str = Field(min_length=1)
    patientId: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]+$")
    encounterId: str | None = None
    selections: list[str] | None = None
    draftOrders: dict[str, Any] | None = None


class CdsRequest(BaseModel):
    """A hook call. Extra fields are allowed (spec extensibility); prefetch values may be null."""

    model_config = ConfigDict(extra="allow")
    hook: str = Field(min_length=1)
    hookInstance: uuid.UUID
    context: HookContext
    fhirServer: str | None = Field(default=None, pattern=r"^https?://")
    fhirAuthorization: FhirAuthorization | None = None
    prefetch: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _conditional_fields(self) -> CdsRequest:
        if self.fhirAuthorization is not None and not self.fhirServer:
            raise ValueError("fhirServer is required when fhirAuthorization is present")
        if self.hook == "order-select" and (
            not self.context.selections or not self.context.draftOrders
        ):
            raise ValueError("order-select requires context.selections and context.draftOrders")
        return self


class CdsRequestError(ValueError):
    """A 400: the body is not a valid hook call. `outcome` is safe to return and to log."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.outcome = operation_outcome(messages, code="invalid")


def operation_outcome(messages: list[str], code: str = "processing") -> dict[str, Any]:
    """A FHIR OperationOutcome (error) for non-2xx answers (CDS Hooks 3 asks for one)."""
    issues = [{"severity": "error", "code": code, "diagnostics": m} for m in messages if m]
    issues = issues or [{"severity": "error", "code": code}]
    return {"resourceType": "OperationOutcome", "issue": issues}


def _where(err: Any) -> str:
    """`loc: msg` of one pydantic error, without its `input` (which may hold the token)."""
    return f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"


def parse_request(body: Any, service_id: str) -> CdsRequest:
    """Validate a hook call for `service_id`; raise CdsRequestError (→ 400) naming locations only.

    Pydantic's messages would include the offending input (possibly the token), so only `loc`
    and `msg` are kept.
    """
    try:
        req = CdsRequest.model_validate(body)
    except ValidationError as e:
        raise CdsRequestError([_where(err) for err in e.errors()]) from None
    expected = SERVICE_HOOKS.get(service_id)
    if expected is not None and req.hook != expected:
        raise CdsRequestError([f"hook: service {service_id} answers {expected} only"])
    return req


def selects_ketamine(request: CdsRequest) -> bool:
    """True if a selected draft order mentions ketamine (RxNorm 6130 or text), so order-select
    fires only for the order it is about instead of on every order (alert fatigue)."""
    selected = set(request.context.selections or [])
    for entry in (request.context.draftOrders or {}).get("entry") or []:
        res = entry.get("resource") or {}
        if f"{res.get('resourceType')}/{res.get('id')}" not in selected:
            continue
        concept = res.get("medicationCodeableConcept") or res.get("code") or {}
        codings = concept.get("coding") or []
        if any(c.get("code") == "6130" and "rxnorm" in str(c.get("system")) for c in codings):
            return True
        text = " ".join([str(concept.get("text", ""))] + [str(c.get("display")) for c in codings])
        if "ketamine" in text.lower():
            return True
    return False


class HookCache:
    """Same hookInstance (and patient) within `ttl` seconds → the identical response.

    Why: an EHR that retries after a timeout must get the same card uuids, or feedback and
    the stored RiskAssessment no longer match what the clinician saw. The patient is part of
    the key so a reused hookInstance can never return another patient's card.
    """

    def __init__(
        self,
        ttl: float = 300.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl, self.max_entries, self._clock = ttl, max_entries, clock
        self._items: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(service_id: str, request: CdsRequest) -> tuple[str, str, str]:
        return (service_id, str(request.hookInstance), request.context.patientId)

    def get(self, key: tuple[str, str, str]) -> dict[str, Any] | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None or self._clock() - hit[0] > self.ttl:
                self._items.pop(key, None)
                return None
            return copy.deepcopy(hit[1])

    def put(self, key: tuple[str, str, str], response: dict[str, Any]) -> None:
        now = self._clock()
        with self._lock:
            if len(self._items) >= self.max_entries:
                self._items = {k: v for k, v in self._items.items() if now - v[0] <= self.ttl}
                while len(self._items) >= self.max_entries:
                    self._items.pop(next(iter(self._items)))
            self._items[key] = (now, copy.deepcopy(response))


# --- card and response --------------------------------------------------------------------

SUMMARY_LIMIT = 139  # the spec says "<140 characters"
INDICATORS = frozenset({"info", "warning", "critical"})
DECISION_SUPPORT = "Decision support, not a decision."
SYNTHETIC = (
    "Trained on synthetic data generated by the ketapredict simulator, not on patients: "
    "for demonstration and testing only."
)
_MD_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\`*_[]<>|#"} | {"\n": " ", "\r": " "})


def _md(text: object) -> str:
    """Escape a value for a GFM table cell or list item (no HTML, no broken tables)."""
    return str(text).translate(_MD_SPECIAL)


def _pct(p: float) -> str:
    """Whole percent; extremes shown as <1%/>99% so a rounded 0% or 100% never looks certain."""
    return "<1%" if p < 0.005 else ">99%" if p > 0.995 else f"{round(100 * p)}%"


def summary_text(prediction: dict[str, Any]) -> str:
    """One sentence < 140 characters; the model version is truncated first, never the result."""
    band = prediction.get("risk_band")
    head = f"Ketamine for AUD: predicted 6-month response {_pct(prediction['probability'])}"
    head += f" ({band})." if band else "."
    status = (prediction.get("eligibility") or {}).get("status")
    if status and status != "eligible":
        head += f" Eligibility: {status}."
    version = str((prediction.get("model") or {}).get("version") or "")
    tail = f" Model v{version}" if version else ""
    if len(head) + len(tail) > SUMMARY_LIMIT:
        room = SUMMARY_LIMIT - len(head) - 1
        tail = tail[:room] + "…" if room > len(" Model v") else ""
    return (head + tail)[:SUMMARY_LIMIT]


def _effect(shap: float) -> str:
    direction = "raises" if shap > 0 else "lowers" if shap < 0 else "no effect"
    return f"{direction} ({shap:+.2f})"


def detail_markdown(prediction: dict[str, Any], *, synthetic: bool = False, top: int = 5) -> str:
    """GFM detail: interval, top factors, eligibility with sources, warnings, notices."""
    p = prediction["probability"]
    lines = [
        f"**Predicted probability of response at 6 months: {_pct(p)}**"
        f" ({_md(prediction.get('risk_band', ''))})"
    ]
    interval = prediction.get("probability_interval")
    if interval:
        lines.append(f"Uncertainty interval: {_pct(interval[0])} to {_pct(interval[1])}.")
    factors = prediction.get("contributions", [])[:top]
    if factors:
        lines += ["", "| Factor | Value | Effect on response (SHAP, log-odds) |", "|---|---|---|"]
        lines += [
            f"| {_md(c['label'])} | {_md(value_text(c))} | {_effect(float(c['shap']))} |"
            for c in factors
        ]
    elig = prediction.get("eligibility") or {}
    if elig.get("status"):
        lines += ["", f"**Eligibility: {_md(elig['status'])}**"]
        for r in elig.get("reasons") or []:
            source = f" (source: {_md(r['source'])})" if r.get("source") else ""
            lines.append(f"- {_md(r['message'])}{source}")
    warnings = prediction.get("warnings") or []
    if warnings:
        lines += ["", "**Warnings**"]
        lines += [f"- {_md(w['message'] if isinstance(w, dict) else w)}" for w in warnings]
    if synthetic:
        lines += ["", f"_{SYNTHETIC}_"]
    lines += ["", DECISION_SUPPORT]
    return "\n".join(lines)


def card(
    prediction: dict[str, Any],
    *,
    model_card_url: str,
    risk_assessment: dict[str, Any] | None,
    service_label: str,
    synthetic: bool = False,
) -> dict[str, Any]:
    """The one `info` card (a prognosis, not a safety alert), with a save-to-chart suggestion."""
    model = prediction.get("model") or {}
    out: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary_text(prediction),
        "indicator": "info",
        "detail": detail_markdown(prediction, synthetic=synthetic),
        "source": {"label": service_label, "url": model_card_url},
        "links": [
            {"label": "Model card and validation", "url": model_card_url, "type": "absolute"}
        ],
    }
    if risk_assessment:
        name = " ".join(str(model.get(k)) for k in ("name", "version") if model.get(k))
        action = {
            "type": "create",
            "description": f"Create RiskAssessment ({name})".replace(" ()", ""),
            "resource": risk_assessment,
        }
        out["suggestions"] = [
            {
                "label": "Save this risk assessment to the chart",
                "uuid": str(uuid.uuid4()),
                "actions": [action],
            }
        ]
        out["selectionBehavior"] = "at-most-one"
    return out


def response(cards: list[dict[str, Any]]) -> dict[str, Any]:
    """The `POST /cds-services/{id}` body; `{"cards": []}` is the one allowed empty array."""
    return {"cards": list(cards)}


def _empty_paths(obj: Any, path: str = "$") -> list[str]:
    if obj is None or obj in ("", [], {}):
        return [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _empty_paths(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _empty_paths(v, f"{path}[{i}]")]
    return []


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _check_action(a: dict[str, Any], at: str) -> list[str]:
    errs = []
    if a.get("type") not in {"create", "update", "delete"}:
        errs.append(f"{at}.type must be create|update|delete")
    if a.get("type") in {"create", "update"} and not a.get("resource"):
        errs.append(f"{at}.resource is required for {a.get('type')}")
    if a.get("type") == "delete" and not a.get("resourceId"):
        errs.append(f"{at}.resourceId is required for delete")
    return errs


def _check_card(c: dict[str, Any], at: str) -> list[str]:
    errs = []
    s = c.get("summary")
    if not isinstance(s, str) or not 0 < len(s) < 140:
        errs.append(f"{at}.summary must be a string of fewer than 140 characters")
    if c.get("indicator") not in INDICATORS:
        errs.append(f"{at}.indicator must be info|warning|critical")
    if not isinstance(c.get("source"), dict) or not c["source"].get("label"):
        errs.append(f"{at}.source.label is required")
    if "uuid" in c and not _is_uuid(c["uuid"]):
        errs.append(f"{at}.uuid is not a UUID")
    suggestions = c.get("suggestions") or []
    if suggestions and c.get("selectionBehavior") not in {"at-most-one", "any"}:
        errs.append(f"{at}.selectionBehavior (at-most-one|any) is required with suggestions")
    for i, sg in enumerate(suggestions):
        if not sg.get("label"):
            errs.append(f"{at}.suggestions[{i}].label is required")
        if "uuid" in sg and not _is_uuid(sg["uuid"]):
            errs.append(f"{at}.suggestions[{i}].uuid is not a UUID")
        for j, a in enumerate(sg.get("actions") or []):
            errs += _check_action(a, f"{at}.suggestions[{i}].actions[{j}]")
            if not a.get("description"):
                errs.append(f"{at}.suggestions[{i}].actions[{j}].description is required")
    errs += [
        f"{at}.overrideReasons[{i}].display is required"
        for i, r in enumerate(c.get("overrideReasons") or [])
        if not r.get("display")
    ]
    for i, link in enumerate(c.get("links") or []):
        if not (link.get("label") and link.get("url")) or link.get("type") not in {
            "absolute",
            "smart",
        }:
            errs.append(f"{at}.links[{i}] needs label, url and type absolute|smart")
        if link.get("type") != "smart" and "appContext" in link:
            errs.append(f"{at}.links[{i}].appContext is only allowed for smart links")
    return errs


def assert_cds_response_valid(resp: Any) -> list[str]:
    """Spec violations (by path, never by value) of a CDS Hooks 2.0 response; [] when valid."""
    if not isinstance(resp, dict) or not isinstance(resp.get("cards"), list):
        return ["$.cards must be an array"]
    errs = [f"{p} is null or empty" for p in _empty_paths(resp) if p != "$.cards"]
    for i, c in enumerate(resp["cards"]):
        errs += _check_card(c, f"$.cards[{i}]") if isinstance(c, dict) else [f"$.cards[{i}]"]
    for i, a in enumerate(resp.get("systemActions") or []):
        errs += _check_action(a, f"$.systemActions[{i}]")
    uuids = [c.get("uuid") for c in resp["cards"] if isinstance(c, dict) and c.get("uuid")]
    if len(uuids) != len(set(uuids)):
        errs.append("$.cards uuids must be unique")
    return errs


# --- feedback -----------------------------------------------------------------------------

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


class AcceptedSuggestion(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: uuid.UUID


class OverrideReason(BaseModel):
    model_config = ConfigDict(extra="allow")
    reason: dict[str, Any] | None = None
    userComment: str | None = None


class Feedback(BaseModel):
    """One feedback item; `acceptedSuggestions` is required when the card was accepted."""

    model_config = ConfigDict(extra="allow")
    card: uuid.UUID
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: AwareDatetime

    @field_validator("outcomeTimestamp", mode="before")
    @classmethod
    def _rfc3339(cls, v: Any) -> Any:
        # pydantic would also take epoch numbers and dates; the spec says RFC 3339 text.
        if not isinstance(v, str) or not _RFC3339.match(v):
            raise ValueError("outcomeTimestamp must be an RFC 3339 date-time with offset")
        return v

    @model_validator(mode="after")
    def _accepted_needs_suggestions(self) -> Feedback:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is required when outcome is accepted")
        return self


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    feedback: list[Feedback] = Field(min_length=1)


def parse_feedback(body: Any) -> FeedbackRequest:
    """Validate a feedback body; CdsRequestError (→ 400) names locations, never values."""
    try:
        return FeedbackRequest.model_validate(body)
    except ValidationError as e:
        raise CdsRequestError([_where(err) for err in e.errors()]) from None


_meta = sa.MetaData()
feedback_table = sa.Table(
    "cds_feedback",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("service_id", sa.String(128), nullable=False),
    sa.Column("card", sa.String(36), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("outcome_timestamp", sa.String(40), nullable=False),  # UTC, ...Z
    sa.Column("accepted_suggestions", sa.Text),  # JSON list of suggestion uuids
    sa.Column("override_reason", sa.Text),  # JSON of the overrideReason object
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.UniqueConstraint("service_id", "card", "outcome", "outcome_timestamp", name="uq_feedback"),
)


#: PostgreSQL advisory-lock key for creating the feedback table (any constant; distinct from
#: the audit migrations' key).
_FEEDBACK_LOCK = zlib.crc32(b"ketapredict.cds_feedback")


class FeedbackStore:
    """Idempotent feedback log: the spec lets a card's feedback arrive more than once.

    The unique key (service, card, outcome, outcomeTimestamp normalised to UTC) turns a
    repeated POST into a no-op, whatever the backend (no dialect-specific upsert needed).
    """

    def __init__(self, url: str = "sqlite:///cds_feedback.db") -> None:
        self.engine = sa.create_engine(url, hide_parameters=True)
        # Replicas starting together on one PostgreSQL would race to CREATE TABLE (seen:
        # DuplicateTable in 1-3 of 8 starts); an advisory lock held by the creating
        # transaction makes the others wait and then find the table.
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _FEEDBACK_LOCK})
            _meta.create_all(conn)

    def record(self, service_id: str, fb: Feedback) -> bool:
        """Store one item; True if new, False if it was a repeat."""
        ts = fb.outcomeTimestamp.astimezone(UTC).isoformat().replace("+00:00", "Z")
        row = {
            "service_id": service_id,
            "card": str(fb.card),
            "outcome": fb.outcome,
            "outcome_timestamp": ts,
            "accepted_suggestions": json.dumps([str(s.id) for s in fb.acceptedSuggestions])
            if fb.acceptedSuggestions
            else None,
            "override_reason": fb.overrideReason.model_dump_json(exclude_none=True)
            if fb.overrideReason
            else None,
            "received_at": datetime.now(UTC),
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(feedback_table.insert().values(**row))
        except sa.exc.IntegrityError:
            return False
        return True

    def record_all(self, service_id: str, request: FeedbackRequest) -> int:
        """Store every item; returns how many were new."""
        return sum(self.record(service_id, fb) for fb in request.feedback)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(feedback_table)).scalar_one()
            )
