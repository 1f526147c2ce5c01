"""CDS Hooks client trust: allow-listed issuers, their public keys (JWKS), JWT checks, replay.

Why configuration and not discovery: CDS Hooks best practice is to allow-list each EHR
(`iss`), its keys and any `jku` it may send. Trusting whatever `jku` a token names would let
anyone sign tokens with their own key, so keys come from a configured JWKS (a dict or a file)
and a token's `jku` is only compared against the issuer's allowed URLs. `fetch_jwks` exists for
an operator job that refreshes the file; the request path never touches the network.

Issuers file (`KETAPREDICT_CDS_ISSUERS_FILE`), JSON::

    {"issuers": [{"iss": "https://ehr.example.org", "jwks_file": "ehr-jwks.json",
                  "jku": ["https://ehr.example.org/jwks.json"], "tenants": ["clinic-a"]}]}

`jwks` (inline object) may replace `jwks_file`; relative files are resolved next to the
issuers file; `jku` and `tenants` are optional (no `tenants` means any or no tenant).
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt import PyJWK
from jwt.exceptions import PyJWKError

ALLOWED_ALGS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
_EC_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}
MAX_JWKS_BYTES = 64 * 1024
MAX_TOKEN_CHARS = 8192


@dataclass(frozen=True)
class IssuerConfig:
    """One allow-listed CDS client: its verification keys by `kid`, allowed `jku`s, tenants."""

    keys: Mapping[str, PyJWK]
    jku: frozenset[str] = frozenset()
    tenants: frozenset[str] | None = None

    @classmethod
    def from_jwks(
        cls,
        jwks: Mapping[str, Any] | Path,
        *,
        jku: Iterable[str] = (),
        tenants: Iterable[str] | None = None,
    ) -> IssuerConfig:
        """Build from a JWKS dict or file; see `load_jwks` for which keys are accepted."""
        return cls(
            keys=load_jwks(jwks),
            jku=frozenset(jku),
            tenants=None if tenants is None else frozenset(tenants),
        )


def load_jwks(source: Mapping[str, Any] | Path) -> dict[str, PyJWK]:
    """Map `kid` to public key; refuse private, symmetric, kid-less or non-signing keys.

    Refusing rather than skipping makes a misconfigured file fail at start-up instead of
    silently rejecting every call from that EHR later.
    """
    data = json.loads(Path(source).read_text()) if isinstance(source, Path) else source
    entries = data.get("keys") if isinstance(data, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError("JWKS must be an object with a non-empty 'keys' list")
    keys: dict[str, PyJWK] = {}
    for index, entry in enumerate(entries):
        keys.update([_public_key(index, entry)])
    return keys


def _public_key(index: int, entry: Any) -> tuple[str, PyJWK]:
    """Validate one JWK entry; messages name the position, never key material."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"JWKS key #{index} is not an object")
    if entry.get("kty") not in {"RSA", "EC"}:
        raise ValueError(f"JWKS key #{index}: only RSA and EC keys are accepted")
    if "d" in entry:
        raise ValueError(f"JWKS key #{index} is a private key; publish public keys only")
    if entry.get("use", "sig") != "sig":
        raise ValueError(f"JWKS key #{index} is not a signing key")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError(f"JWKS key #{index} has no 'kid'")
    try:
        return kid, PyJWK.from_dict(dict(entry))
    except PyJWKError:
        raise ValueError(f"JWKS key #{index} ({kid}) cannot be parsed") from None


def load_trusted_issuers(path: Path) -> dict[str, IssuerConfig]:
    """Read the issuers file described in the module docstring."""
    data = json.loads(path.read_text())
    issuers = data.get("issuers") if isinstance(data, Mapping) else None
    if not isinstance(issuers, list):
        raise ValueError(f"{path}: expected {{'issuers': [...]}}")
    trusted: dict[str, IssuerConfig] = {}
    for item in issuers:
        iss = item.get("iss")
        if not isinstance(iss, str) or not iss:
            raise ValueError(f"{path}: every issuer needs an 'iss'")
        jwks = item.get("jwks")
        if jwks is None:
            jwks = (path.parent / item["jwks_file"]).resolve()
        trusted[iss] = IssuerConfig.from_jwks(
            jwks, jku=item.get("jku", ()), tenants=item.get("tenants")
        )
    return trusted


def fetch_jwks(url: str, *, timeout: float = 3.0) -> dict[str, Any]:
    """Download a JWKS over HTTPS for an operator refresh job (never on the request path).

    Short timeout and size cap so a slow or hostile endpoint cannot stall the caller.
    """
    if not url.startswith("https://"):
        raise ValueError("JWKS URLs must use https")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # https only, checked above
        body = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("JWKS response too large")
    data = json.loads(body)
    load_jwks(data)  # validate before anyone writes it to disk
    return data


class Unauthorized(Exception):
    """Authentication failed. The message is always generic; `reason` is a code for logs."""

    def __init__(self, reason: str) -> None:
        super().__init__("unauthorized")
        self.reason = reason


@dataclass(frozen=True)
class Caller:
    """The authenticated caller; every field is safe to log and to write to the audit log."""

    label: str
    kind: str  # "api_token" or "cds"
    issuer: str | None = None
    tenant: str | None = None
    jti: str | None = None


class ReplayCache:
    """Seen `(iss, jti)` pairs until their token expires; thread-safe, bounded, in memory.

    One process only: with several replicas a token replayed against another replica passes.
    Deployments with replicas need a shared store (e.g. a unique `(iss, jti)` row in the
    audit DB) behind the same `check_and_add` method. When full of live entries it refuses
    new tokens (reason `replay_cache_full`) rather than forget entries and allow replays.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._seen: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, issuer: str, jti: str, expires_at: float, now: float) -> None:
        """Record the pair or raise `Unauthorized` if it is live in the cache already."""
        key = (issuer, jti)
        with self._lock:
            if key in self._seen and self._seen[key] > now:
                raise Unauthorized("replay")
            if len(self._seen) >= self.max_entries:
                self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
                if len(self._seen) >= self.max_entries:
                    raise Unauthorized("replay_cache_full")
            self._seen[key] = expires_at


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _key_fits(alg: str, key: Any) -> bool:
    """Whether the JWK's key type matches the header's algorithm (RSA for RS*, curve for ES*)."""
    if alg.startswith("RS"):
        return isinstance(key, rsa.RSAPublicKey)
    return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES[alg])


def verify_cds_jwt(
    token: str | None,
    *,
    audience: str | Collection[str],
    trusted: Mapping[str, IssuerConfig],
    replay: ReplayCache,
    now: float | None = None,
    leeway: float = 60.0,
    max_lifetime: float = 3600.0,
) -> Caller:
    """Check a CDS Hooks client JWT per CDS Hooks 2.0 and its security best practices.

    `audience` is the exact endpoint URL (or the few URLs this endpoint answers to); it must
    come from configuration, never from the request's Host header. `leeway` applies to `iat`
    and `nbf` (clock skew); `exp` has none. Lifetimes above `max_lifetime` are refused so the
    replay cache only needs to remember a `jti` for that long. Raises `Unauthorized`.
    """
    now = time.time() if now is None else now
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise Unauthorized("missing")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise Unauthorized("malformed") from None
    alg = header.get("alg")  # header and claims are attacker-controlled: check types first
    if not isinstance(alg, str) or alg not in ALLOWED_ALGS:
        raise Unauthorized("alg_not_allowed")
    if str(header.get("typ", "JWT")).upper() != "JWT":  # spec: "JWT"; tolerate its absence
        raise Unauthorized("bad_typ")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthorized("missing_kid")
    issuer = claims.get("iss")
    config = trusted.get(issuer) if isinstance(issuer, str) else None
    if config is None:
        raise Unauthorized("untrusted_issuer")
    jku = header.get("jku")
    if "jku" in header and not (isinstance(jku, str) and jku in config.jku):
        raise Unauthorized("untrusted_jku")
    jwk = config.keys.get(kid)
    if jwk is None:
        raise Unauthorized("unknown_kid")
    if not _key_fits(alg, jwk.key):
        raise Unauthorized("alg_key_mismatch")
    try:  # signature only; every claim is checked below against our own clock
        claims = jwt.decode(
            token,
            jwk.key,
            algorithms=[alg],
            options={
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise Unauthorized("bad_signature") from None
    except jwt.PyJWTError:
        raise Unauthorized("malformed") from None
    _check_claims(claims, audience, config, now, leeway, max_lifetime)
    replay.check_and_add(issuer, claims["jti"], claims["exp"] + leeway, now)
    tenant = claims.get("tenant") if isinstance(claims.get("tenant"), str) else None
    return Caller(f"cds:{issuer}", "cds", issuer=issuer, tenant=tenant, jti=claims["jti"])


def _check_claims(
    claims: Mapping[str, Any],
    audience: str | Collection[str],
    config: IssuerConfig,
    now: float,
    leeway: float,
    max_lifetime: float,
) -> None:
    """Registered-claim checks with reason codes; raises `Unauthorized` on the first failure."""
    accepted = {audience} if isinstance(audience, str) else set(audience)
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in accepted for a in auds):
        raise Unauthorized("bad_audience")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not _is_time(exp):
        raise Unauthorized("missing_exp")
    if not _is_time(iat):
        raise Unauthorized("missing_iat")
    if exp <= now:
        raise Unauthorized("expired")
    if iat > now + leeway:
        raise Unauthorized("iat_in_future")
    if "nbf" in claims and not (_is_time(claims["nbf"]) and claims["nbf"] <= now + leeway):
        raise Unauthorized("not_yet_valid")
    if exp - min(iat, now) > max_lifetime:
        raise Unauthorized("lifetime_too_long")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise Unauthorized("missing_jti")
    tenant = claims.get("tenant")
    if config.tenants is not None and not (isinstance(tenant, str) and tenant in config.tenants):
        raise Unauthorized("bad_tenant")
