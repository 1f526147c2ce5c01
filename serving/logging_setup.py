"""Service logs as one JSON object per line, each tagged with the request id; no PHI, no secrets.

Why: log shippers parse JSON without regexes, and a request id shared by the access line, any
error line, the `X-Request-Id` response header and the audit record lets an operator follow one
call end to end without ever logging what it carried (interop.md §6). So:
- The access line names the route template, never the raw path or query string: unknown paths
  are caller-controlled text and may hold identifiers; they are logged as `(unmatched)`.
- Exception *messages* are dropped, only their type and stack frames are kept: pydantic and
  httpx put the offending input values or URLs (patient ids, lab values) into their messages.
- `Bearer` credentials and JWT-shaped strings are masked in every message, as a last guard.
- BentoML's own access log is switched off (ours replaces it), uvicorn's access log, httpx and
  httpcore stay at WARNING (their INFO lines carry full URLs with query strings).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
import time
import traceback
from typing import IO, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.auditing import request_id as safe_request_id

__all__ = [
    "REQUEST_ID",
    "JsonFormatter",
    "RequestLogMiddleware",
    "configure_json_logging",
    "route_template",
]

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "ketapredict_request_id", default=None
)
access_log = logging.getLogger("ketapredict.access")

_SECRET = re.compile(r"(?i)\bbearer\s+\S+|\beyJ[\w-]{4,}\.[\w-]+\.[\w-]*")
_METHOD = re.compile(r"[A-Z]{3,7}")
_ROUTES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), template)
    for pattern, template in (
        (r"/(healthz|livez|readyz|metrics|docs\.json)?", ""),
        (r"/v1/(predict|model|model/card|fhir/RiskAssessment/\$predict)", ""),
        (r"/cds-services", ""),
        (r"/cds-services/[^/]+", "/cds-services/{service_id}"),
        (r"/cds-services/[^/]+/feedback", "/cds-services/{service_id}/feedback"),
        (r"/static_content/.*", "/static_content/{file}"),
    )
)
_EXTRA = "log_fields"  # `logger.info(msg, extra={"log_fields": {...}})` adds top-level keys


def route_template(path: str) -> str:
    """The route template for `path`, or `(unmatched)` for paths the service does not serve."""
    for pattern, template in _ROUTES:
        if pattern.fullmatch(path):
            return template or path
    return "(unmatched)"


def _mask(text: str) -> str:
    return _SECRET.sub("[redacted]", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id (+ `log_fields`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": _mask(record.getMessage()),
            "request_id": REQUEST_ID.get(),
        }
        entry.update(getattr(record, _EXTRA, None) or {})
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = _describe(record.exc_info[1])
        return json.dumps(entry, default=str, ensure_ascii=False)


def _describe(exc: BaseException) -> dict[str, Any]:
    """Type names of the exception chain and the innermost frames, without any message text."""
    chain: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 5:
        chain.append(f"{type(seen).__module__}.{type(seen).__qualname__}")
        seen = seen.__cause__ or seen.__context__
    frames = traceback.extract_tb(exc.__traceback__)[-8:]
    return {
        "types": chain,
        "frames": [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in frames],
    }


def configure_json_logging(stream: IO[str] | None = None) -> None:
    """Route every logger of the worker through one JSON handler (idempotent; replaces BentoML's).

    Called when the server builds its app, after BentoML configured its own text logging.
    """
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    for name in ("bentoml", "uvicorn", "uvicorn.error", "circus", "py.warnings"):
        named = logging.getLogger(name)
        named.handlers = []
        named.propagate = True
    for name, level in (
        ("ketapredict", logging.INFO),
        ("serving", logging.INFO),
        ("uvicorn.access", logging.WARNING),
        ("httpx", logging.WARNING),
        ("httpcore", logging.WARNING),
    ):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("bentoml.access").disabled = True
    logging.captureWarnings(True)


class RequestLogMiddleware:
    """ASGI middleware: request id in, `X-Request-Id` out, one JSON access line per request.

    The id is the caller's `X-Request-Id` when it is a safe label (`[A-Za-z0-9._:-]{1,128}`),
    else a fresh UUID; it is written back into the request headers so the audit record carries
    the same id, and set in `REQUEST_ID` so every log line of the request carries it.
    Register it outermost so that 401 and 413 answers are logged and tagged too.
    """

    def __init__(self, app: ASGIApp, *, configure_logging: bool = True) -> None:
        self.app = app
        if configure_logging:
            configure_json_logging()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"x-request-id"]
        given = dict(scope.get("headers", [])).get(b"x-request-id", b"").decode("latin-1")
        rid = safe_request_id({"x-request-id": given})
        headers.append((b"x-request-id", rid.encode()))
        token = REQUEST_ID.set(rid)
        status, logged, start = 500, False, time.perf_counter()

        def log_access() -> None:
            nonlocal logged
            if not logged:  # once, before the last body chunk: the client then sees it written
                logged = True
                access_log.info("request", extra={_EXTRA: _access_fields(scope, status, start)})

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                out = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                message = {**message, "headers": [*out, (b"x-request-id", rid.encode())]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                log_access()
            await send(message)

        try:
            await self.app({**scope, "headers": headers}, receive, send_tagged)
        finally:
            log_access()
            REQUEST_ID.reset(token)


def _access_fields(scope: Scope, status: int, start: float) -> dict[str, Any]:
    """Method, route template, status and duration: never the path's text or query string."""
    method = scope.get("method", "")
    return {
        "method": method if _METHOD.fullmatch(method) else "OTHER",
        "route": route_template(scope.get("path", "")),
        "status": status,
        "duration_ms": round((time.perf_counter() - start) * 1000, 2),
    }
