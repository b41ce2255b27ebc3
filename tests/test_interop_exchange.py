"""Interop: RFC 8693 token exchange against npm's oidc-provider, with each client auth method.

``interop/oidc/server.js`` registers the token-exchange grant on oidc-provider
(``provider.registerGrantType``); the fixture ``exchange_idp`` (tests/conftest.py)
starts it with one client per authentication method (see
:func:`tests.support.oidc.start_exchange_idp`). These tests drive it with plain
aiohttp and check the issued tokens with PyJWT against the provider's JWKS, so
the grant is known to behave as RFC 8693 and Auth0 do;
tests/test_exchange_interop_e2e.py runs the daemon's exchange profiles against it.

Without Node or the installed provider these tests skip locally with the reason;
under ``CI=true`` they fail instead, so CI can never pass by skipping them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import jwt
import pytest

from sidecar.testing import SidecarProcess
from tests.support.e2e import HEADERS
from tests.support.oidc import (
    ACCESS_TOKEN_TYPE,
    AUTH_METHODS,
    MCP_AUDIENCE,
    TOKEN_EXCHANGE_GRANT,
    UPSTREAM,
    UPSTREAM_TTL,
    ExchangeClient,
    ExchangeIdP,
    exchange_profile_toml,
    rsa_client_key,
)

pytestmark = pytest.mark.slow


# -- helpers ----------------------------------------------------------------------------


async def verified(idp: ExchangeIdP, token: str, audience: str) -> dict[str, Any]:
    """The claims of ``token``, verified against the provider's JWKS, issuer and ``audience``."""
    jwks = await idp.provider.jwks(idp.http)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["typ"] == "at+jwt"  # RFC 9068
    claims: dict[str, Any] = jwt.decode(
        token,
        key=jwks[header["kid"]].key,
        algorithms=["RS256"],
        audience=audience,
        issuer=idp.issuer,
    )
    return claims


def forged(token: str, directory: Path) -> str:
    """``token``'s header and claims signed again with a key the provider never saw."""
    pem, _ = rsa_client_key(directory, "forger")
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, pem.read_bytes(), algorithm="RS256", headers=header)


async def exchange_error(idp: ExchangeIdP, auth_method: str, form: dict[str, str]) -> str:
    """The RFC 6749 error of a refused exchange; asserts it was a 400 with a description."""
    status, body = await idp.post_token(auth_method, form)
    assert status == 400, body
    assert "access_token" not in body
    assert body["error_description"]
    return f"{body['error']}: {body['error_description']}"


# -- the exchange -----------------------------------------------------------------------


async def test_discovery_advertises_token_exchange(exchange_idp):
    """The provider's metadata lists the registered grant next to its own."""
    grants = exchange_idp.provider.discovery["grant_types_supported"]
    assert TOKEN_EXCHANGE_GRANT in grants
    assert "client_credentials" in grants


async def test_each_auth_method_exchanges_a_user_token_for_the_user(exchange_idp):
    """basic, post and private_key_jwt each trade alice's MCP token for an upstream token
    whose sub is alice, act.sub the client, aud the requested audience (JWKS-verified)."""
    idp = exchange_idp
    alice = await idp.user_token("alice", scope="openid mcp:use")
    subject = await verified(idp, alice, MCP_AUDIENCE)  # what the sidecar's local check sees
    assert subject["sub"] == "alice"
    assert subject["client_id"] == "mcp-client"
    for method in AUTH_METHODS:
        client_id = idp.clients[method].client_id
        status, body = await idp.post_token(method, idp.exchange_form(alice, scope="read:things"))
        assert status == 200, body
        assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
        assert body["token_type"] == "Bearer"
        assert body["scope"] == "read:things"
        # The IdP's lifetime, a day: longer than the 5-minute subject (the sidecar caps it).
        assert body["expires_in"] == UPSTREAM_TTL
        claims = await verified(idp, body["access_token"], UPSTREAM)
        assert claims["sub"] == "alice"
        assert claims["act"] == {"sub": client_id}
        assert claims["client_id"] == client_id
        assert claims["aud"] == UPSTREAM
        assert claims["scope"] == "read:things"
        assert claims["exp"] - claims["iat"] == UPSTREAM_TTL
        assert claims["exp"] > subject["exp"]
    counts = await idp.provider.grant_counts(idp.http)
    assert counts[TOKEN_EXCHANGE_GRANT] == {"success": 3, "errors": {}}


async def test_two_users_get_tokens_for_themselves(exchange_idp):
    """alice's and bob's tokens exchanged by one client: two tokens, each with its own sub."""
    idp = exchange_idp
    subs = []
    for user in ("alice", "bob"):
        token = await idp.user_token(user)
        status, body = await idp.post_token("client_secret_post", idp.exchange_form(token))
        assert status == 200, body
        subs.append((await verified(idp, body["access_token"], UPSTREAM))["sub"])
    assert subs == ["alice", "bob"]


async def test_resource_names_the_target_and_no_scope_grants_the_clients_share(exchange_idp):
    """RFC 8707 ``resource`` works as ``audience`` does (alone or agreeing with it); without
    ``scope`` the token carries every scope the client and the API share."""
    idp = exchange_idp
    alice = await idp.user_token("alice")
    for targets in ({"audience": None, "resource": UPSTREAM}, {"resource": UPSTREAM}):
        status, body = await idp.post_token(
            "client_secret_basic", idp.exchange_form(alice, **targets)
        )
        assert status == 200, body
        assert body["scope"] == "read:things write:things"
        claims = await verified(idp, body["access_token"], UPSTREAM)
        assert claims["sub"] == "alice"


async def test_a_delegated_subject_keeps_its_actor_chain(exchange_idp):
    """A subject that already carries ``act`` (a gateway acted for alice): the new token nests
    it under the calling client, as RFC 8693 section 4.1 draws the chain."""
    idp = exchange_idp
    token = await idp.user_token("alice", act={"sub": "gateway"})
    status, body = await idp.post_token("private_key_jwt", idp.exchange_form(token))
    assert status == 200, body
    claims = await verified(idp, body["access_token"], UPSTREAM)
    assert claims["act"] == {"sub": "exchange-pkjwt", "act": {"sub": "gateway"}}


# -- refused subjects: invalid_grant ----------------------------------------------------


async def test_expired_or_forged_subjects_are_invalid_grant_for_each_auth_method(
    exchange_idp, tmp_path
):
    """An expired user token, one re-signed by another key and one whose claims were edited:
    invalid_grant naming the reason, for every client; the genuine one is exchanged."""
    idp = exchange_idp
    alice = await idp.user_token("alice")
    expired = await idp.user_token("alice", ttl=-5)
    header, claims, signature = alice.split(".")
    edited = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(claims).replace(b'"alice"', b'"mallory"')
    ).decode()
    tampered = f"{header}.{edited}.{signature}"
    assert jwt.decode(tampered, options={"verify_signature": False})["sub"] == "mallory"
    refused = {
        expired: "invalid_grant: subject_token has expired",
        forged(alice, tmp_path): "invalid_grant: subject_token signature is invalid",
        tampered: "invalid_grant: subject_token signature is invalid",
    }
    for method in AUTH_METHODS:
        status, body = await idp.post_token(method, idp.exchange_form(alice))
        assert status == 200, body  # the positive control, same client and form
        for subject, error in refused.items():
            assert await exchange_error(idp, method, idp.exchange_form(subject)) == error
    counts = await idp.provider.grant_counts(idp.http)
    assert counts[TOKEN_EXCHANGE_GRANT] == {"success": 3, "errors": {"invalid_grant": 9}}


async def test_subjects_the_provider_cannot_vouch_for_are_invalid_grant(exchange_idp):
    """A token for another audience, a machine token (client credentials), a token whose key
    was rotated out, and a string that is no JWT: each invalid_grant, each for its reason."""
    idp = exchange_idp
    alice = await idp.user_token("alice")
    elsewhere = await idp.user_token("alice", audience="https://elsewhere.example.com/")
    status, machine = await idp.post_token(
        "client_secret_post", {"grant_type": "client_credentials", "resource": UPSTREAM}
    )
    assert status == 200, machine
    cases = {
        elsewhere: "invalid_grant: subject_token audience is not accepted here",
        machine["access_token"]: "invalid_grant: subject_token represents a client, not a user",
        "not-a-jwt": "invalid_grant: subject_token is not a JWT",
    }
    for subject, error in cases.items():
        assert await exchange_error(idp, "client_secret_post", idp.exchange_form(subject)) == error

    # Rotation retires the key that signed alice's token (gone from the JWKS); a token
    # minted after it, under the new active key, is exchanged.
    rotated = await idp.provider.rotate(idp.http)
    assert jwt.get_unverified_header(alice)["kid"] not in rotated["published_kids"]
    fresh = await idp.user_token("alice")
    status, body = await idp.post_token("client_secret_post", idp.exchange_form(fresh))
    assert status == 200, body
    assert await exchange_error(idp, "client_secret_post", idp.exchange_form(alice)) == (
        "invalid_grant: subject_token is signed with a key this provider does not publish"
    )


# -- refused requests: target, scope, parameters, client --------------------------------


async def test_targets_scopes_and_parameters_are_checked(exchange_idp):
    """Unknown or several targets: invalid_target; a scope beyond the API's or the client's:
    invalid_scope; missing or unsupported parameters: invalid_request. The same form with
    the one field fixed is exchanged."""
    idp = exchange_idp
    alice = await idp.user_token("alice")
    status, body = await idp.post_token(
        "client_secret_basic",
        idp.exchange_form(alice, scope="write:things", requested_token_type=ACCESS_TOKEN_TYPE),
    )
    assert status == 200, body
    assert body["scope"] == "write:things"
    cases: dict[str, dict[str, str | None]] = {
        "invalid_target: unknown audience or resource": {
            "audience": "https://unknown.example.com/"
        },
        "invalid_target: only one audience or resource may be requested": {
            "resource": "https://unknown.example.com/"
        },
        "invalid_request: audience or resource is required": {"audience": None},
        "invalid_scope: requested scope is not allowed for this client and audience": {
            "scope": "read:things read:tools"
        },
        "invalid_request: unsupported subject_token_type": {
            "subject_token_type": "urn:ietf:params:oauth:token-type:saml2"
        },
        "invalid_request: unsupported requested_token_type": {
            "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"
        },
        "invalid_request: missing required parameter 'subject_token'": {"subject_token": None},
    }
    for error, fields in cases.items():
        form = idp.exchange_form(alice, **fields)
        assert await exchange_error(idp, "client_secret_basic", form) == error, fields


async def test_the_exchange_authenticates_the_client(exchange_idp):
    """A wrong secret is invalid_client (401) before the subject is looked at; the same
    request with the registered secret is exchanged."""
    idp = exchange_idp
    alice = await idp.user_token("alice")
    right = idp.clients["client_secret_basic"]
    wrong = ExchangeClient(
        auth_method=right.auth_method,
        client_id=right.client_id,
        client_secret="wrong-secret-LEAKCANARY-00000000",
    )
    data, headers = wrong.authenticate(idp.exchange_form(alice), idp.token_url)
    async with idp.http.post(idp.token_url, data=data, headers=headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"] == "invalid_client"
    status, body = await idp.post_token("client_secret_basic", idp.exchange_form(alice))
    assert status == 200, body


# -- the helper's sidecar settings ------------------------------------------------------


async def test_the_helpers_client_settings_authenticate_a_sidecar(
    exchange_idp, sidecar_factory, http
):
    """Each client's ``sidecar_fields`` in a client_credentials profile: the real daemon
    authenticates with them and serves a token of that client (the exchange profile from
    ``sidecar_profile`` uses the same fields)."""
    idp = exchange_idp
    profiles = ""
    for method in AUTH_METHODS:
        keys = {
            "token_url": f'"{idp.token_url}"',
            "issuer": f'"{idp.issuer}"',
            "jwks_url": f'"{idp.jwks_url}"',
            **idp.clients[method].sidecar_fields(),
            "resource": f'"{UPSTREAM}"',
            "scope": '"read:things"',
            "verify": '"jwks"',
            "timeout": '"3s"',
        }
        profiles += f"[profiles.{method}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
    sidecar: SidecarProcess = await sidecar_factory(profiles)
    await sidecar.wait_event("token.refreshed", count=3)
    for method in AUTH_METHODS:
        async with http.get(f"{sidecar.url}/v1/token/{method}", headers=HEADERS) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        claims = await verified(idp, body["access_token"], UPSTREAM)
        assert claims["client_id"] == claims["sub"] == idp.clients[method].client_id
        assert "act" not in claims
    assert await sidecar.stop() == 0


def test_the_exchange_profile_is_designs_shape(tmp_path):
    """``exchange_profile_toml`` writes DESIGN.md's token_exchange profile and subject table."""
    client = ExchangeClient(
        auth_method="private_key_jwt",
        client_id="exchange-pkjwt",
        private_key_file=tmp_path / "key.pem",
        private_key_kid="kid-1",
    )
    text = exchange_profile_toml(
        "user-api",
        client=client,
        token_url="http://127.0.0.1:1/token",
        issuer="http://127.0.0.1:1",
        jwks_url="http://127.0.0.1:1/jwks",
    )
    assert tomllib.loads(text) == {
        "profiles": {
            "user-api": {
                "grant": "token_exchange",
                "token_url": "http://127.0.0.1:1/token",
                "issuer": "http://127.0.0.1:1",
                "jwks_url": "http://127.0.0.1:1/jwks",
                "client_id": "exchange-pkjwt",
                "client_auth": "private_key_jwt",
                "private_key_file": str(tmp_path / "key.pem"),
                "private_key_kid": "kid-1",
                "assertion_alg": "RS256",
                "audience": UPSTREAM,
                "scope": "read:things",
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "timeout": "3s",
                "subject": {
                    "verify": "jwks",
                    "issuer": "http://127.0.0.1:1",
                    "jwks_url": "http://127.0.0.1:1/jwks",
                    "audience": MCP_AUDIENCE,
                },
            }
        }
    }
    opaque = exchange_profile_toml(
        "user-api",
        client=client,
        token_url="http://127.0.0.1:1/token",
        issuer="http://127.0.0.1:1",
        jwks_url="http://127.0.0.1:1/jwks",
        subject_verify="none",
    )
    # verify = "none": nothing checks issuer, JWKS or audience, so they are not written.
    assert tomllib.loads(opaque)["profiles"]["user-api"]["subject"] == {"verify": "none"}
