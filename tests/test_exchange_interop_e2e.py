"""Interop through the daemon: a real ``serve`` exchanging users' tokens at npm's oidc-provider.

The provider (``interop/oidc/server.js`` with its registered RFC 8693 grant)
is started by :func:`tests.support.oidc.start_exchange_idp` with one client
per authentication method; each test runs once per method. The issued
tokens are verified with PyJWT against the provider's JWKS, and the
provider's own grant counters (``/__admin/grants``) say how many exchanges
reached it, so "no IdP request" is the IdP's word, not the sidecar's.

Without Node or the installed provider these tests skip locally with the
reason; under ``CI=true`` they fail instead (:func:`require_node`).
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from sidecar.testing import SidecarProcess
from tests.support.e2e import HEADERS
from tests.support.oidc import (
    ACCESS_TOKEN_TYPE,
    AUTH_METHODS,
    TOKEN_EXCHANGE_GRANT,
    UPSTREAM,
    ExchangeIdP,
)

pytestmark = pytest.mark.slow

#: The local check verifies users' tokens with the provider's JWKS.
CHECKED = "user-api"
#: The local check only reads ``exp``; the provider judges the rest.
OPAQUE = "opaque-api"


async def exchange(
    http: aiohttp.ClientSession, sidecar: SidecarProcess, profile: str, subject: str
) -> tuple[int, dict[str, Any]]:
    """``POST /v1/exchange/{profile}`` with ``subject`` as the user's token."""
    async with http.post(
        f"{sidecar.url}/v1/exchange/{profile}",
        data=orjson.dumps({"subject_token": subject}),
        headers=HEADERS,
    ) as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def upstream_claims(idp: ExchangeIdP, token: str) -> dict[str, Any]:
    """``token``'s claims, verified by the provider's JWKS, issuer and the upstream audience."""
    jwks = await idp.provider.jwks(idp.http)
    kid = jwt.get_unverified_header(token)["kid"]
    claims: dict[str, Any] = jwt.decode(
        token, key=jwks[kid].key, algorithms=["RS256"], audience=UPSTREAM, issuer=idp.issuer
    )
    return claims


async def exchanges_at_idp(idp: ExchangeIdP) -> dict[str, Any]:
    """The provider's count of token-exchange requests: ``{"success": n, "errors": {...}}``."""
    counts = await idp.provider.grant_counts(idp.http)
    result: dict[str, Any] = counts.get(TOKEN_EXCHANGE_GRANT, {"success": 0, "errors": {}})
    return result


async def start_sidecar(idp: ExchangeIdP, sidecar_factory, method: str) -> SidecarProcess:
    """``serve`` with a JWKS-checked and a ``verify = "none"`` exchange profile for ``method``."""
    profiles = idp.sidecar_profile(CHECKED, method) + idp.sidecar_profile(
        OPAQUE, method, subject_verify="none"
    )
    sidecar: SidecarProcess = await sidecar_factory(profiles)
    return sidecar


@pytest.mark.parametrize("method", AUTH_METHODS)
async def test_serve_exchanges_users_tokens_at_oidc_provider(
    method, exchange_idp, sidecar_factory, http
):
    """alice's token gives a token for alice acting through the client, once at the IdP;
    the same user twice is one grant, another user is another grant with her own sub."""
    idp = exchange_idp
    client_id = idp.clients[method].client_id
    sidecar = await start_sidecar(idp, sidecar_factory, method)
    alice = await idp.user_token("alice")
    alice_exp = jwt.decode(alice, options={"verify_signature": False})["exp"]

    status, body = await exchange(http, sidecar, CHECKED, alice)
    assert status == 200, body
    assert body["cached"] is False
    assert body["profile"] == CHECKED
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["scope"] == "read:things"
    claims = await upstream_claims(idp, body["access_token"])
    assert claims["sub"] == "alice"
    assert claims["act"] == {"sub": client_id}
    assert claims["client_id"] == client_id
    # The IdP issued a day; the entry dies with the 5-minute subject.
    assert claims["exp"] > alice_exp
    assert body["expires_at"] <= alice_exp
    assert body["expires_in"] <= alice_exp - time.time() + 1
    assert await exchanges_at_idp(idp) == {"success": 1, "errors": {}}

    status, again = await exchange(http, sidecar, CHECKED, alice)
    assert status == 200, again
    assert again["cached"] is True
    assert again["access_token"] == body["access_token"]
    assert await exchanges_at_idp(idp) == {"success": 1, "errors": {}}

    bob = await idp.user_token("bob")
    status, other = await exchange(http, sidecar, CHECKED, bob)
    assert status == 200, other
    assert other["cached"] is False
    assert (await upstream_claims(idp, other["access_token"]))["sub"] == "bob"
    assert await exchanges_at_idp(idp) == {"success": 2, "errors": {}}
    assert await sidecar.stop() == 0


@pytest.mark.parametrize("method", AUTH_METHODS)
async def test_serve_refuses_bad_subjects_locally_or_as_the_idp_says(
    method, exchange_idp, sidecar_factory, http
):
    """An expired user token is invalid_subject with no request to the IdP (on either
    profile); a token for another audience passes a ``verify = "none"`` check and the IdP's
    invalid_grant is subject_rejected, remembered (no second request). A good token on the
    same profile is exchanged (the positive control)."""
    idp = exchange_idp
    sidecar = await start_sidecar(idp, sidecar_factory, method)
    expired = await idp.user_token("alice", ttl=-5)
    elsewhere = await idp.user_token("alice", audience="https://elsewhere.example.com/")
    for profile in (CHECKED, OPAQUE):
        status, body = await exchange(http, sidecar, profile, expired)
        assert (status, body["error"]) == (401, "invalid_subject"), body
        assert expired not in orjson.dumps(body).decode()
    # The JWKS check refuses the foreign audience locally, too.
    status, body = await exchange(http, sidecar, CHECKED, elsewhere)
    assert (status, body["error"]) == (401, "invalid_subject"), body
    assert await exchanges_at_idp(idp) == {"success": 0, "errors": {}}

    for _ in range(2):  # the second within negative_ttl: remembered, not asked again
        status, body = await exchange(http, sidecar, OPAQUE, elsewhere)
        assert (status, body["error"]) == (401, "subject_rejected"), body
        assert elsewhere not in orjson.dumps(body).decode()
    assert await exchanges_at_idp(idp) == {"success": 0, "errors": {"invalid_grant": 1}}

    alice = await idp.user_token("alice")
    status, body = await exchange(http, sidecar, OPAQUE, alice)
    assert status == 200, body
    assert (await upstream_claims(idp, body["access_token"]))["sub"] == "alice"
    assert await exchanges_at_idp(idp) == {"success": 1, "errors": {"invalid_grant": 1}}

    async with http.get(f"{sidecar.ops}/metrics") as resp:
        text = await resp.text()
    for profile, result, count in (
        (CHECKED, "invalid_subject", 2),
        (OPAQUE, "invalid_subject", 1),
        (OPAQUE, "subject_rejected", 1),
        (OPAQUE, "success", 1),
    ):
        line = f'token_sidecar_exchange_total{{profile="{profile}",result="{result}"}} {count}.0'
        assert line in text
    assert await sidecar.stop() == 0
