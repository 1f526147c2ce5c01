"""Authentication: API tokens, CDS Hooks JWT checks with reason codes, the ASGI middleware."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.auth import (
    ApiTokens,
    CdsAuth,
    EnvAuthMiddleware,
    IssuerConfig,
    ReplayCache,
    Unauthorized,
    auth_middleware,
    cors_origins_from_env,
    new_token,
    verify_cds_jwt,
)
from serving.jwks import load_jwks, load_trusted_issuers

BASE = "https://cds.example.org"
AUD = f"{BASE}/cds-services/ketamine-aud-response-v1"
ISS = "https://ehr.example.org"
NOW = 1_750_000_000.0
TOKEN = "demo-token-0123456789abcdef"


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """One RSA and one EC signing key of the EHR, and an attacker's RSA key."""
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP384R1()),
        "other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    }


def _jwks(keys: dict[str, Any]) -> dict[str, Any]:
    rsa_jwk = RSAAlgorithm.to_jwk(keys["rsa"].public_key(), as_dict=True)
    ec_jwk = ECAlgorithm.to_jwk(keys["ec"].public_key(), as_dict=True)
    return {"keys": [{**rsa_jwk, "kid": "rsa-1"}, {**ec_jwk, "kid": "ec-1"}]}


@pytest.fixture(scope="module")
def trusted(keys: dict[str, Any]) -> dict[str, IssuerConfig]:
    return {ISS: IssuerConfig.from_jwks(_jwks(keys), jku=[f"{ISS}/jwks.json"])}


def _claims(**overrides: Any) -> dict[str, Any]:
    claims = {"iss": ISS, "aud": AUD, "iat": NOW, "exp": NOW + 300, "jti": str(uuid.uuid4())}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(
    keys: dict[str, Any],
    alg: str = "RS384",
    kid: str = "rsa-1",
    key: str = "rsa",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    return jwt.encode(
        _claims(**claims),
        keys[key],
        algorithm=alg,
        headers={"kid": kid, "typ": "JWT", **(headers or {})},
    )


def _verify(
    token: str | None,
    trusted: dict[str, IssuerConfig],
    replay: ReplayCache | None = None,
    now: float = NOW,
):
    return verify_cds_jwt(
        token,
        audience=AUD,
        trusted=trusted,
        replay=ReplayCache() if replay is None else replay,
        now=now,
    )


def _reason(token: str | None, trusted: dict[str, IssuerConfig], **kwargs: Any) -> str:
    with pytest.raises(Unauthorized) as info:
        _verify(token, trusted, **kwargs)
    assert str(info.value) == "unauthorized"  # never the reason or any token content
    return info.value.reason


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# --- CDS Hooks JWT -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "kid", "key"), [("RS384", "rsa-1", "rsa"), ("ES384", "ec-1", "ec")]
)
def test_valid_jwt_passes(keys, trusted, alg, kid, key):
    caller = _verify(_sign(keys, alg, kid, key, tenant="clinic-a"), trusted)
    assert caller.kind == "cds"
    assert (caller.issuer, caller.tenant, caller.label) == (ISS, "clinic-a", f"cds:{ISS}")


def test_allowed_jku_passes_and_other_jku_is_rejected(keys, trusted):
    assert _verify(_sign(keys, headers={"jku": f"{ISS}/jwks.json"}), trusted).issuer == ISS
    evil = _sign(keys, headers={"jku": "https://evil.example/jwks.json"})
    assert _reason(evil, trusted) == "untrusted_jku"


def test_rejections_carry_reason_codes(keys, trusted):
    cases = {
        "missing": None,
        "malformed": "not.a.jwt",
        "bad_signature": _sign(keys, key="other"),
        "unknown_kid": _sign(keys, kid="rsa-9"),
        "untrusted_issuer": _sign(keys, iss="https://evil.example"),
        "bad_audience": _sign(keys, aud=f"{BASE}/cds-services/other-service"),
        "expired": _sign(keys, iat=NOW - 600, exp=NOW - 1),
        "iat_in_future": _sign(keys, iat=NOW + 120, exp=NOW + 400),
        "missing_exp": _sign(keys, exp=None),
        "missing_iat": _sign(keys, iat=None),
        "missing_jti": _sign(keys, jti=None),
        "lifetime_too_long": _sign(keys, exp=NOW + 86_400),
        "alg_key_mismatch": _sign(keys, "RS384", "ec-1", "rsa"),
        "missing_kid": jwt.encode(_claims(), keys["rsa"], algorithm="RS384"),
    }
    assert {reason: _reason(token, trusted) for reason, token in cases.items()} == {
        reason: reason for reason in cases
    }


def test_small_clock_skew_on_iat_is_tolerated(keys, trusted):
    assert _verify(_sign(keys, iat=NOW + 30, exp=NOW + 300), trusted).issuer == ISS


def test_replayed_jti_is_rejected(keys, trusted):
    replay = ReplayCache()
    token = _sign(keys)
    _verify(token, trusted, replay=replay)
    assert _reason(token, trusted, replay=replay) == "replay"


def test_replay_cache_is_bounded_and_forgets_expired(keys, trusted):
    replay = ReplayCache(max_entries=2)
    replay.check_and_add(ISS, "a", NOW + 10, NOW)
    replay.check_and_add(ISS, "b", NOW + 10, NOW)
    with pytest.raises(Unauthorized) as info:
        replay.check_and_add(ISS, "c", NOW + 10, NOW)
    assert info.value.reason == "replay_cache_full"
    replay.check_and_add(ISS, "c", NOW + 30, NOW + 20)  # a and b expired: room again
    assert len(replay) == 1


def test_alg_none_is_rejected(trusted):
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'rsa-1'})}.{_b64(_claims())}."
    assert _reason(unsigned, trusted) == "alg_not_allowed"


def test_hs256_with_public_key_as_secret_is_rejected(keys, trusted):
    """The key-confusion attack: HMAC keyed with the (public) RSA key the server trusts."""
    pem = (
        keys["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"})
    signing_input = f"{header}.{_b64(_claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert _reason(forged, trusted) == "alg_not_allowed"


def test_tenant_allow_list(keys):
    trusted = {ISS: IssuerConfig.from_jwks(_jwks(keys), tenants=["clinic-a"])}
    assert _verify(_sign(keys, tenant="clinic-a"), trusted).tenant == "clinic-a"
    assert _reason(_sign(keys, tenant="clinic-b"), trusted) == "bad_tenant"
    assert _reason(_sign(keys), trusted) == "bad_tenant"


def test_jwks_refuses_private_and_symmetric_keys(keys):
    private = json.loads(RSAAlgorithm.to_jwk(keys["rsa"]))
    with pytest.raises(ValueError, match="private"):
        load_jwks({"keys": [{**private, "kid": "k"}]})
    with pytest.raises(ValueError, match="RSA and EC"):
        load_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k"}]})


def test_trusted_issuers_file(keys, tmp_path):
    (tmp_path / "ehr-jwks.json").write_text(json.dumps(_jwks(keys)))
    config = {"issuers": [{"iss": ISS, "jwks_file": "ehr-jwks.json", "tenants": ["t1"]}]}
    (tmp_path / "issuers.json").write_text(json.dumps(config))
    trusted = load_trusted_issuers(tmp_path / "issuers.json")
    assert set(trusted[ISS].keys) == {"rsa-1", "ec-1"}
    assert trusted[ISS].tenants == frozenset({"t1"})


# --- API tokens ----------------------------------------------------------------------------


def test_plain_and_digest_tokens_verify():
    other, digest = new_token()
    tokens = ApiTokens.from_env(f"{TOKEN}, {digest}", None)
    assert (
        tokens.verify(f"Bearer {TOKEN}").label
        == "token:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:8]
    )
    assert tokens.verify(f"bearer {other}").label == "token:" + digest[7:15]
    assert tokens.verify(f"BEARER {other}") is not None


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", f"Basic {TOKEN}", "Bearer wrong-token-value", TOKEN]
)
def test_wrong_or_missing_token_is_rejected(header):
    assert ApiTokens.from_env(TOKEN, None).verify(header) is None


def test_token_file_holds_digests(tmp_path):
    token, digest = new_token()
    path = tmp_path / "tokens"
    path.write_text(f"# demo tokens\n{digest}  # made by make demo\n\n")
    assert ApiTokens.from_env(None, path).verify(f"Bearer {token}") is not None
    path.write_text(f"{token}\n")
    with pytest.raises(ValueError) as info:
        ApiTokens.from_env(None, path)
    assert token not in str(info.value)


def test_short_plain_token_is_refused_without_echoing_it():
    with pytest.raises(ValueError) as info:
        ApiTokens.from_env("short", None)
    assert "short" not in str(info.value).replace("at least", "")


def test_api_tokens_keep_no_plain_token():
    tokens = ApiTokens.from_env(TOKEN, None)
    state = repr(tokens) + repr(vars(tokens)) + repr(tokens.digests)
    assert TOKEN not in state and TOKEN.encode() not in b"".join(tokens.digests)
    assert all(len(d) == 32 for d in tokens.digests)


def test_new_token_digest_matches():
    token, digest = new_token()
    assert digest == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert len(token) >= 32


# --- middleware ----------------------------------------------------------------------------


async def _whoami(request: Request) -> JSONResponse:
    caller = getattr(request.state, "caller", None)
    return JSONResponse({"caller": None if caller is None else caller.label})


async def _health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def _client(keys, protect_discovery: bool = True) -> TestClient:
    routes = [
        Route("/healthz", _health),
        Route("/v1/model", _whoami),
        Route("/cds-services", _whoami),
        Route("/cds-services/ketamine-aud-response-v1", _whoami, methods=["POST"]),
    ]
    cds = CdsAuth(BASE, {ISS: IssuerConfig.from_jwks(_jwks(keys))})
    app = auth_middleware(
        Starlette(routes=routes),
        tokens=ApiTokens.from_env(TOKEN, None),
        cds=cds,
        protect_discovery=protect_discovery,
    )
    return TestClient(app)


def _live_jwt(keys, aud: str = AUD) -> str:
    now = time.time()
    return _sign(keys, iat=now, exp=now + 120, aud=aud)


def test_middleware_401_has_no_detail(keys):
    client = _client(keys)
    for response in (
        client.get("/v1/model"),
        client.get("/v1/model", headers={"Authorization": "Bearer nope"}),
        client.post(
            "/cds-services/ketamine-aud-response-v1", headers={"Authorization": f"Bearer {TOKEN}"}
        ),
        client.get("/anything-else"),
    ):
        assert response.status_code == 401
        assert response.json() == {"error": "unauthorized"}
        assert response.headers["www-authenticate"] == "Bearer"


def test_middleware_health_open_and_caller_set(keys):
    client = _client(keys)
    assert client.get("/healthz").json() == {"ok": True}
    label = client.get("/v1/model", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert label == {"caller": "token:" + hashlib.sha256(TOKEN.encode()).hexdigest()[:8]}
    token = _live_jwt(keys)
    response = client.post(
        "/cds-services/ketamine-aud-response-v1", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.json() == {"caller": f"cds:{ISS}"}
    replayed = client.post(
        "/cds-services/ketamine-aud-response-v1", headers={"Authorization": f"Bearer {token}"}
    )
    assert replayed.status_code == 401


def test_middleware_discovery_needs_jwt_unless_configured_open(keys):
    client = _client(keys)
    assert client.get("/cds-services").status_code == 401
    ok = client.get(
        "/cds-services",
        headers={"Authorization": f"Bearer {_live_jwt(keys, f'{BASE}/cds-services')}"},
    )
    assert ok.status_code == 200
    assert _client(keys, protect_discovery=False).get("/cds-services").status_code == 200


def test_no_token_in_logs(keys, caplog):
    caplog.set_level(logging.DEBUG)
    client = _client(keys)
    token = _live_jwt(keys)
    client.get("/v1/model", headers={"Authorization": "Bearer wrong-but-secret-value"})
    client.get("/v1/model", headers={"Authorization": f"Bearer {TOKEN}"})
    client.post(
        "/cds-services/ketamine-aud-response-v1", headers={"Authorization": f"Bearer {token}"}
    )
    client.post(
        "/cds-services/ketamine-aud-response-v1", headers={"Authorization": f"Bearer {token}"}
    )
    assert "reason=replay" in caplog.text and "reason=bad_token" in caplog.text
    for secret in ("wrong-but-secret-value", TOKEN, token, token.split(".")[2]):
        assert secret not in caplog.text


def test_env_middleware_fails_closed_without_configuration():
    client = TestClient(
        EnvAuthMiddleware(Starlette(routes=[Route("/v1/model", _whoami)]), environ={})
    )
    assert client.get("/v1/model", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401


def test_cors_origins_from_env():
    assert cors_origins_from_env("") == []
    assert cors_origins_from_env("https://ehr.example.org/, http://localhost:3000") == [
        "https://ehr.example.org",
        "http://localhost:3000",
    ]
    for bad in ("*", "ehr.example.org", "https://ehr.example.org/app"):
        with pytest.raises(ValueError):
            cors_origins_from_env(bad)
