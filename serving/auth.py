"""Who may call the service: API tokens for REST, signed JWTs for CDS Hooks, CORS origins.

Three rules shape this module. Secrets never leave it: no token, JWT or digest prefix beyond
the 8-hex label reaches a log line, an exception message or a response body. Failures are
uniform: callers see 401 `{"error": "unauthorized"}`; the reason code (`exc.reason`) is for
our logs and metrics only. Defaults fail closed: no tokens configured means no REST access,
no trusted issuers means no CDS access, and any path that is neither open nor CDS needs a token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.jwks import (
    MAX_TOKEN_CHARS,
    Caller,
    IssuerConfig,
    ReplayCache,
    Unauthorized,
    load_trusted_issuers,
    verify_cds_jwt,
)

__all__ = [
    "ApiTokens",
    "AuthMiddleware",
    "Caller",
    "CdsAuth",
    "EnvAuthMiddleware",
    "IssuerConfig",
    "ReplayCache",
    "Unauthorized",
    "auth_middleware",
    "cors_options",
    "cors_origins_from_env",
    "new_token",
    "verify_cds_jwt",
]

logger = logging.getLogger("ketapredict.auth")

DEFAULT_OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics", "/"})
#: The page's scripts and styles: public files, no patient data, served without a token.
DEFAULT_OPEN_PREFIXES: tuple[str, ...] = ("/static/",)
MIN_PLAIN_TOKEN_CHARS = 16


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _bearer(authorization: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <x>` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or len(credential) > MAX_TOKEN_CHARS:
        return None
    return credential


def new_token() -> tuple[str, str]:
    """A fresh random API token and its `sha256:<hex>` digest (store only the digest)."""
    token = secrets.token_urlsafe(32)
    return token, "sha256:" + _digest(token).hex()


@dataclass(frozen=True, repr=False)
class ApiTokens:
    """SHA-256 digests of the accepted API tokens; plain tokens are hashed at load and dropped.

    Keeping only digests means a heap dump or a debug print of the config reveals nothing
    usable; comparing digests with `hmac.compare_digest` over every entry keeps timing flat.
    """

    digests: tuple[bytes, ...] = ()

    def __repr__(self) -> str:
        return f"ApiTokens(<{len(self.digests)} digests>)"

    @classmethod
    def from_env(cls, value: str | None, file: Path | None = None) -> ApiTokens:
        """Parse `KETAPREDICT_API_TOKENS` (comma list) and `KETAPREDICT_API_TOKENS_FILE`."""
        entries = [part.strip() for part in (value or "").split(",") if part.strip()]
        digests = [
            cls._parse(entry, f"KETAPREDICT_API_TOKENS item {i + 1}", plain_ok=True)
            for i, entry in enumerate(entries)
        ]
        if file is not None:
            for number, raw in enumerate(file.read_text().splitlines(), start=1):
                line = raw.split("#", 1)[0].strip()
                if line:
                    digests.append(cls._parse(line, f"{file}:{number}", plain_ok=False))
        return cls(tuple(dict.fromkeys(digests)))

    @staticmethod
    def _parse(entry: str, where: str, *, plain_ok: bool) -> bytes:
        """A digest from `sha256:<hex>` or (if allowed) a plain token; errors name `where` only."""
        if entry.lower().startswith("sha256:"):
            hexpart = entry[len("sha256:") :]
            if len(hexpart) == 64 and all(c in "0123456789abcdefABCDEF" for c in hexpart):
                return bytes.fromhex(hexpart)
            raise ValueError(f"{where}: a sha256 digest must be 64 hex characters")
        if not plain_ok:
            raise ValueError(f"{where}: expected 'sha256:<64 hex>' (files hold digests only)")
        if len(entry) < MIN_PLAIN_TOKEN_CHARS:
            raise ValueError(f"{where}: tokens need at least {MIN_PLAIN_TOKEN_CHARS} characters")
        return _digest(entry)

    def verify(self, authorization: str | None) -> Caller | None:
        """The caller for a valid `Authorization: Bearer <token>` header, else None."""
        token = _bearer(authorization)
        if token is None:
            return None
        presented = _digest(token)
        match: bytes | None = None
        for digest in self.digests:  # no early exit: time does not depend on the position
            if hmac.compare_digest(presented, digest):
                match = digest
        return None if match is None else Caller("token:" + match.hex()[:8], "api_token")


@dataclass
class CdsAuth:
    """What the middleware needs to check CDS JWTs; `public_url` is this service's base URL."""

    public_url: str
    trusted: Mapping[str, IssuerConfig]
    replay: ReplayCache = field(default_factory=ReplayCache)

    def audiences(self, path: str) -> tuple[str, ...]:
        """The endpoint URL for `path`; feedback calls may also name the service URL."""
        url = self.public_url.rstrip("/") + path
        if path.endswith("/feedback"):
            return url, url[: -len("/feedback")]
        return (url,)


class AuthMiddleware:
    """ASGI middleware: open paths pass, `/cds-services[/*]` need a CDS JWT, all else a token.

    Default-deny on purpose: a new route is protected until someone lists it in `open_paths`
    (exact paths) or it lies under `/static/`. `protect_discovery=False` leaves
    `GET /cds-services` open for EHRs that do not sign discovery calls (CDS Hooks 2.0 says
    they should). The caller lands in `scope["state"]["caller"]`, i.e. `request.state.caller`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: ApiTokens,
        cds: CdsAuth | None,
        open_paths: Iterable[str] = DEFAULT_OPEN_PATHS,
        protect_discovery: bool = True,
    ) -> None:
        self.app, self.tokens, self.cds = app, tokens, cds
        self.open_paths = frozenset(open_paths)
        self.protect_discovery = protect_discovery
        if not tokens.digests:
            logger.warning("auth: no API tokens configured; REST routes will answer 401")
        if cds is None or not cds.trusted:
            logger.warning("auth: no trusted CDS issuers configured; CDS routes will answer 401")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] not in {"http", "websocket"}
            or path in self.open_paths
            or path.startswith(DEFAULT_OPEN_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        if path == "/cds-services" and not self.protect_discovery:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                authorization = value.decode("latin-1")
        try:
            caller = self._authenticate(path, authorization)
        except Unauthorized as exc:  # paths may carry identifiers: log the route kind only
            kind = "cds" if path.startswith("/cds-services") else "rest"
            logger.info("auth: rejected route=%s reason=%s", kind, exc.reason)
            await _deny(scope, send)
            return
        scope = {**scope, "state": {**scope.get("state", {}), "caller": caller}}
        await self.app(scope, receive, send)

    def _authenticate(self, path: str, authorization: str | None) -> Caller:
        if path == "/cds-services" or path.startswith("/cds-services/"):
            if self.cds is None:
                raise Unauthorized("cds_not_configured")
            return verify_cds_jwt(
                _bearer(authorization),
                audience=self.cds.audiences(path),
                trusted=self.cds.trusted,
                replay=self.cds.replay,
            )
        caller = self.tokens.verify(authorization)
        if caller is None:
            raise Unauthorized("missing" if _bearer(authorization) is None else "bad_token")
        return caller


async def _deny(scope: Scope, send: Send) -> None:
    """401 with no detail: a body of `{"error": "unauthorized"}` and `WWW-Authenticate`."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": "unauthorized"}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"www-authenticate", b"Bearer"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def auth_middleware(
    app: ASGIApp,
    *,
    tokens: ApiTokens,
    cds: CdsAuth | None,
    open_paths: Iterable[str] = DEFAULT_OPEN_PATHS,
    protect_discovery: bool = True,
) -> AuthMiddleware:
    """Wrap `app`; the function form of `AuthMiddleware` for code that composes ASGI apps."""
    return AuthMiddleware(
        app, tokens=tokens, cds=cds, open_paths=open_paths, protect_discovery=protect_discovery
    )


class EnvAuthMiddleware(AuthMiddleware):
    """`AuthMiddleware` configured from the environment when the server builds its app.

    Built in the worker at start-up, not at import, so importing `serving.service` in tests
    reads no files. Variables: `KETAPREDICT_API_TOKENS`, `KETAPREDICT_API_TOKENS_FILE`,
    `KETAPREDICT_PUBLIC_URL`, `KETAPREDICT_CDS_ISSUERS_FILE`, `KETAPREDICT_CDS_DISCOVERY_AUTH`
    (`jwt`, the default, or `open`).
    """

    def __init__(self, app: ASGIApp, *, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        token_file = env.get("KETAPREDICT_API_TOKENS_FILE")
        tokens = ApiTokens.from_env(
            env.get("KETAPREDICT_API_TOKENS"), Path(token_file) if token_file else None
        )
        issuers_file = env.get("KETAPREDICT_CDS_ISSUERS_FILE")
        public_url = env.get("KETAPREDICT_PUBLIC_URL")
        cds = None
        if issuers_file and public_url:
            cds = CdsAuth(public_url, load_trusted_issuers(Path(issuers_file)))
        discovery = env.get("KETAPREDICT_CDS_DISCOVERY_AUTH", "jwt").strip().lower()
        if discovery not in {"jwt", "open"}:
            raise ValueError("KETAPREDICT_CDS_DISCOVERY_AUTH must be 'jwt' or 'open'")
        super().__init__(app, tokens=tokens, cds=cds, protect_discovery=discovery == "jwt")


def cors_origins_from_env(value: str | None = None) -> list[str]:
    """Origins from `KETAPREDICT_CORS_ORIGINS` (comma list; default none; `*` refused)."""
    raw = os.environ.get("KETAPREDICT_CORS_ORIGINS", "") if value is None else value
    origins = [o.strip().rstrip("/") for o in raw.split(",") if o.strip()]
    for origin in origins:
        scheme, sep, host = origin.partition("://")
        if origin == "*" or scheme not in {"http", "https"} or not sep or not host or "/" in host:
            raise ValueError("KETAPREDICT_CORS_ORIGINS: list origins like https://ehr.example.org")
    return origins


def cors_options(origins: list[str]) -> dict[str, Any]:
    """Keyword arguments for Starlette's `CORSMiddleware`: bearer headers, no cookies."""
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST", "OPTIONS"],
        "allow_headers": ["Authorization", "Content-Type", "X-Request-Id", "traceparent"],
        "allow_credentials": False,
        "max_age": 600,
    }
