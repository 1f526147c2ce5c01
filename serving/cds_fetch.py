"""Prefetch templates and the fallback FHIR fetch for CDS Hooks calls (interop.md §1.2).

Why here: this is the only code that calls the EHR back, with its short-lived bearer token, so
the rules that protect the token and the latency budget live in one place:
- Templates are generated from `features.schema` (`prefetch_templates`), never hand-written.
- Only *omitted* keys are fetched. A `null` key means the EHR searched and found nothing
  (spec: "no data → null"), so asking again would only spend the ~500 ms budget.
- Required keys (`REQUIRED_KEYS`: the Patient, the required LOINC fields (AUDIT) and the local
  input-field search that carries heavy drinking days, drinks, infusions and dose) must end up
  with data, from prefetch or fetch; otherwise `PrefetchUnavailable` → HTTP 412. Optional keys
  that fail are dropped: their fields become missing-field warnings downstream.
- The token is sent only over https (or http to a loopback host, for tests), redirects are not
  followed (they could carry it to another host), and neither the token nor the URL (it holds
  the patient id) is logged or put into an exception message; exceptions are raised
  `from None` so no httpx traceback with the URL leaks into logs, and a filter on the `httpx`
  logger redacts the path and query of its per-request INFO line.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx

from features.fhir_in import LOCAL_SYSTEM, PATIENT_FIELDS
from features.schema import ID_FIELD, INPUT_FIELDS

if TYPE_CHECKING:
    from serving.cds_hooks import CdsRequest

log = logging.getLogger(__name__)


class _RedactRequestUrls(logging.Filter):
    """httpx logs every request URL at INFO; ours hold the patient id, so keep scheme+host."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("HTTP Request:") and isinstance(record.args, tuple):
            args = list(record.args)
            for i, a in enumerate(args):
                if isinstance(a, httpx.URL):
                    args[i] = f"{a.scheme}://{a.netloc.decode()}/[redacted]"
            record.args = tuple(args)
        return True


if not any(isinstance(f, _RedactRequestUrls) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_RedactRequestUrls())

LOCAL_KEY = "local_inputs"
_OBS = "Observation?patient={{context.patientId}}&code="
_OBSERVED = [f for f in INPUT_FIELDS if f.name not in {ID_FIELD, "site_id", *PATIENT_FIELDS}]
_TOKEN = re.compile(r"\{\{context\.([A-Za-z]+)\}\}")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def prefetch_templates() -> dict[str, str]:
    """Key -> FHIR query template: Patient, one key per LOINC field, one local-code search.

    LOINC keys ask for the newest Observation only (`_count=1`). The local search ORs all
    local codes, newest first; `fhir_in.bundle_to_record` keeps the newest per field.
    """
    out = {"patient": "Patient/{{context.patientId}}"}
    for f in _OBSERVED:
        if f.loinc:
            out[f.name] = f"{_OBS}http://loinc.org|{f.loinc}&_sort=-date&_count=1"
    local = ",".join(f"{LOCAL_SYSTEM}|{f.name}" for f in _OBSERVED if not f.loinc)
    out[LOCAL_KEY] = f"{_OBS}{local}&_sort=-date&_count=100"
    return out


#: Keys without which no prediction is possible (412 when they have no data).
REQUIRED_KEYS: tuple[str, ...] = (
    "patient",
    *(f.name for f in _OBSERVED if f.loinc and f.required),
    LOCAL_KEY,
)


class PrefetchUnavailable(Exception):
    """Required data could not be obtained: the route answers 412 with `outcome`."""

    def __init__(self, keys: list[str], reason: str, code: str = "processing") -> None:
        super().__init__(f"prefetch unavailable for {', '.join(keys)}: {reason}")
        self.keys, self.reason, self.code = keys, reason, code

    @property
    def outcome(self) -> dict[str, Any]:
        """An OperationOutcome naming keys and the reason (never a URL, id or token)."""
        issues = [
            {"severity": "error", "code": self.code, "diagnostics": f"{k}: {self.reason}"}
            for k in self.keys
        ]
        return {"resourceType": "OperationOutcome", "issue": issues}


def missing_prefetch(request: CdsRequest) -> list[str]:
    """Template keys whose data is absent: omitted (client could not satisfy) or null."""
    given = request.prefetch or {}
    return [k for k in prefetch_templates() if given.get(k) is None]


def has_data(value: Any) -> bool:
    """A resource, or a Bundle with at least one non-OperationOutcome resource."""
    if not isinstance(value, dict) or value.get("resourceType") == "OperationOutcome":
        return False
    if value.get("resourceType") != "Bundle":
        return True
    return any(
        (e.get("resource") or {}).get("resourceType") not in (None, "OperationOutcome")
        for e in value.get("entry") or []
    )


def render(template: str, request: CdsRequest) -> str:
    """Substitute `{{context.x}}` tokens (root-level primitives only), URL-quoted."""

    def sub(m: re.Match[str]) -> str:
        value = getattr(request.context, m.group(1), None)
        if not isinstance(value, str | int) or value == "":
            raise PrefetchUnavailable([m.group(1)], "context token has no primitive value")
        return quote(str(value), safe="")

    return _TOKEN.sub(sub, template)


def _usable_server(url: str | None) -> bool:
    parts = urlsplit(url or "")
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)


async def _get(
    client: httpx.AsyncClient,
    base: str,
    key: str,
    query: str,
    headers: dict[str, str],
    timeout: float,
) -> Any:
    try:
        resp = await client.get(
            f"{base}/{query}", headers=headers, timeout=timeout, follow_redirects=False
        )
    except httpx.TimeoutException:
        raise PrefetchUnavailable([key], "FHIR server timed out", "timeout") from None
    except httpx.HTTPError as e:
        raise PrefetchUnavailable([key], f"FHIR request failed ({type(e).__name__})") from None
    if resp.status_code != httpx.codes.OK:
        raise PrefetchUnavailable([key], f"FHIR server answered HTTP {resp.status_code}")
    try:
        body = resp.json()
    except ValueError:
        raise PrefetchUnavailable([key], "FHIR server answered non-JSON") from None
    expected = "Bundle" if "?" in query else query.split("/", maxsplit=1)[0]
    if not isinstance(body, dict) or body.get("resourceType") != expected:
        raise PrefetchUnavailable([key], f"FHIR server did not answer a {expected}")
    if expected == "Bundle" and any(
        link.get("relation") == "next" for link in body.get("link") or []
    ):
        log.info("prefetch key %s: first page only (paginated search)", key)
    return body


async def fetch_missing(
    request: CdsRequest,
    keys: list[str],
    *,
    timeout: float = 1.5,
    client: httpx.AsyncClient | None = None,
) -> dict[str, Any]:
    """GET each key's query from `fhirServer` with the bearer token, concurrently.

    Raises PrefetchUnavailable if there is no usable server/authorization or any GET fails or
    the whole batch exceeds `timeout` seconds.
    """
    if not keys:
        return {}
    auth = request.fhirAuthorization
    if auth is None or not _usable_server(request.fhirServer):
        raise PrefetchUnavailable(list(keys), "no usable fhirServer and fhirAuthorization")
    templates = prefetch_templates()
    queries = {k: render(templates[k], request) for k in keys}
    headers = {
        "Authorization": f"Bearer {auth.access_token.get_secret_value()}",
        "Accept": "application/fhir+json",
    }
    base = str(request.fhirServer).rstrip("/")
    own = client is None
    client = client or httpx.AsyncClient()
    try:
        async with asyncio.timeout(timeout):
            bodies = await asyncio.gather(
                *(_get(client, base, k, q, headers, timeout) for k, q in queries.items())
            )
    except TimeoutError:
        raise PrefetchUnavailable(list(keys), "FHIR server timed out", "timeout") from None
    finally:
        if own:
            await client.aclose()
    return dict(zip(queries, bodies, strict=True))


async def resolve_prefetch(
    request: CdsRequest, *, timeout: float = 1.5, client: httpx.AsyncClient | None = None
) -> dict[str, Any]:
    """Prefetch completed by fallback fetch; raise PrefetchUnavailable (→ 412) per the rules
    in the module docstring. The result has only keys with data (null/empty dropped)."""
    given = {k: v for k, v in (request.prefetch or {}).items() if has_data(v)}
    omitted = [k for k in prefetch_templates() if k not in (request.prefetch or {})]
    required = [k for k in omitted if k in REQUIRED_KEYS]
    optional = [k for k in omitted if k not in REQUIRED_KEYS]
    if not (request.fhirAuthorization is not None and _usable_server(request.fhirServer)):
        optional = []  # nothing to call back; their fields become warnings

    async def optional_or_nothing() -> dict[str, Any]:
        try:
            return await fetch_missing(request, optional, timeout=timeout, client=client)
        except PrefetchUnavailable as e:
            log.info("optional prefetch dropped (%d keys): %s", len(optional), e.reason)
            return {}

    # One deadline for both: required failures propagate, optional ones are dropped.
    fetched = await asyncio.gather(
        fetch_missing(request, required, timeout=timeout, client=client), optional_or_nothing()
    )
    for part in fetched:
        given.update(part)
    absent = [k for k in REQUIRED_KEYS if not has_data(given.get(k))]
    if absent:
        raise PrefetchUnavailable(absent, "no data for required input", "not-found")
    return {k: v for k, v in given.items() if has_data(v)}
