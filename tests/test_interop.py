"""Interop: ``token-sidecar serve`` against npm's oidc-provider, and the full MCP chain.

oidc-provider (a certified OpenID Connect implementation nobody on this project
wrote) runs as a Node subprocess from ``interop/oidc/server.js``, installed by
``scripts/install-tools`` from the committed lock file and started by
:class:`tests.support.oidc.OIDCProvider`. The sidecar is a real
subprocess too (:class:`sidecar.testing.SidecarProcess`). Everything listens on
127.0.0.1.

Without Node or the installed provider these tests skip locally with the reason;
under ``CI=true`` they fail instead, so CI can never pass by skipping them.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from sidecar.testing import SidecarProcess, free_port
from tests.support.e2e import HEADERS
from tests.support.mcp import ProtectedAPIServer, load_example, serve_mcp_over_http
from tests.support.oidc import OIDCProvider, require_node, rsa_client_key
from token_sidecar_client import TokenClient

pytestmark = pytest.mark.slow

RESOURCE = "https://api.example.com/"
SCOPE = "read:tools"
SECRETS = {
    "basic": "basic-secret-LEAKCANARY-1f0c9e6a4b2d8e7f",
    "post": "post-secret-LEAKCANARY-9a7b5c3d1e2f4a6b",
}
KEY_KID = "interop-client-key-1"


@pytest.fixture(scope="module")
def node_ready() -> None:
    require_node()


@pytest.fixture
def client_key(tmp_path) -> tuple[Path, dict[str, Any]]:
    """A fresh RSA key for private_key_jwt: the PEM file and its public JWK."""
    return rsa_client_key(tmp_path, KEY_KID)


@pytest.fixture
async def oidc(node_ready, tmp_path, client_key, http) -> AsyncIterator[OIDCProvider]:
    """oidc-provider with one client per authentication method and one resource server."""
    _, public_jwk = client_key
    port = free_port()
    config = {
        "port": port,
        "resources": {RESOURCE: {"scope": "read:tools write:tools", "ttl": 600}},
        "clients": [
            {
                "client_id": "basic",
                "client_secret": SECRETS["basic"],
                "token_endpoint_auth_method": "client_secret_basic",
            },
            {
                "client_id": "post",
                "client_secret": SECRETS["post"],
                "token_endpoint_auth_method": "client_secret_post",
            },
            {
                "client_id": "pkjwt",
                "token_endpoint_auth_method": "private_key_jwt",
                "token_endpoint_auth_signing_alg": "RS256",
                "jwks": {"keys": [public_jwk]},
            },
        ],
    }
    path = tmp_path / "oidc.json"
    path.write_bytes(orjson.dumps(config))
    provider = OIDCProvider(path, port)
    try:
        await provider.start(http)
        yield provider
    finally:
        await provider.stop()


def profile(oidc: OIDCProvider, name: str, client_id: str, **fields: str) -> str:
    lines = [
        f"[profiles.{name}]",
        f'token_url = "{oidc.token_url}"',
        f'issuer = "{oidc.issuer}"',
        f'jwks_url = "{oidc.jwks_url}"',
        f'client_id = "{client_id}"',
        f'scope = "{SCOPE}"',
        'timeout = "3s"',
        *(f"{key} = {value}" for key, value in fields.items()),
    ]
    return "\n".join(lines) + "\n"


def jwt_profiles(oidc: OIDCProvider, pem: Path) -> str:
    resource = f'"{RESOURCE}"'
    return (
        profile(
            oidc,
            "basic",
            "basic",
            client_auth='"client_secret_basic"',
            client_secret=f'"{SECRETS["basic"]}"',
            resource=resource,
            verify='"jwks"',
        )
        + profile(
            oidc,
            "post",
            "post",
            client_auth='"client_secret_post"',
            client_secret=f'"{SECRETS["post"]}"',
            resource=resource,
            verify='"jwks"',
        )
        + profile(
            oidc,
            "pkjwt",
            "pkjwt",
            client_auth='"private_key_jwt"',
            private_key_file=f'"{pem}"',
            private_key_kid=f'"{KEY_KID}"',
            assertion_alg='"RS256"',
            resource=resource,
            verify='"jwks"',
        )
    )


async def fetch_token(
    http: aiohttp.ClientSession, sidecar: SidecarProcess, name: str
) -> dict[str, Any]:
    async with http.get(f"{sidecar.url}/v1/token/{name}", headers=HEADERS) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body


def assert_no_secrets(sidecar: SidecarProcess, *values: str) -> None:
    output = sidecar.stderr.decode(errors="replace")
    leaked = [v for v in (*SECRETS.values(), *values) if v and v in output]
    assert not leaked, f"{len(leaked)} secret value(s) in the sidecar's logs"


async def test_jwt_access_tokens_for_each_client_auth_method(
    oidc, sidecar_factory, http, client_key
):
    """basic, post and private_key_jwt each get an RS256 JWT for the resource, verified."""
    pem, _ = client_key
    sidecar = await sidecar_factory(jwt_profiles(oidc, pem))
    await sidecar.wait_event("token.refreshed", count=3)
    async with http.get(f"{sidecar.ops}/readyz") as resp:
        assert resp.status == 200, await resp.text()
    jwks = await oidc.jwks(http)
    for name in ("basic", "post", "pkjwt"):
        body = await fetch_token(http, sidecar, name)
        assert body["profile"] == name
        assert body["stale"] is False
        assert body["scope"] == SCOPE
        assert 500 < body["expires_in"] <= 600
        token = body["access_token"]
        header = jwt.get_unverified_header(token)
        assert header["alg"] == "RS256"
        assert header["typ"] == "at+jwt"  # RFC 9068
        assert header["kid"] == oidc.ready["active_kid"]
        claims = jwt.decode(
            token,
            key=jwks[header["kid"]].key,
            algorithms=["RS256"],
            audience=RESOURCE,
            issuer=oidc.issuer,
        )
        assert claims["client_id"] == name
        assert claims["scope"] == SCOPE
        assert abs(claims["exp"] - body["expires_at"]) <= 1
        assert_no_secrets(sidecar, token)
    assert await sidecar.stop() == 0


async def test_opaque_token_without_resource(oidc, sidecar_factory, http):
    """Without `resource` oidc-provider issues an opaque token; verify = "none" serves it."""
    profiles = profile(
        oidc,
        "opaque",
        "post",
        client_auth='"client_secret_post"',
        client_secret=f'"{SECRETS["post"]}"',
        verify='"none"',
    )
    sidecar = await sidecar_factory(profiles)
    await sidecar.wait_event("token.refreshed")
    body = await fetch_token(http, sidecar, "opaque")
    token = body["access_token"]
    assert token.count(".") == 0, "expected an opaque token"
    assert body["scope"] == SCOPE
    assert 500 < body["expires_in"] <= 600
    # The IdP knows it: introspection says active, for this client and scope.
    basic = base64.b64encode(f"post:{SECRETS['post']}".encode()).decode()
    async with http.post(
        oidc.discovery["introspection_endpoint"],
        data={"token": token},
        headers={"Authorization": f"Basic {basic}"},
    ) as resp:
        info = await resp.json()
    assert info["active"] is True
    assert info["client_id"] == "post"
    assert_no_secrets(sidecar, token)
    assert await sidecar.stop() == 0


async def test_rejected_client_is_misconfigured_with_the_idps_error(oidc, sidecar_factory, http):
    """A wrong secret: the profile is misconfigured and shows oidc-provider's invalid_client."""
    wrong = "wrong-secret-LEAKCANARY-0000000000000000"
    profiles = profile(
        oidc,
        "wrong",
        "basic",
        client_auth='"client_secret_basic"',
        client_secret=f'"{wrong}"',
        resource=f'"{RESOURCE}"',
        required="false",
    )
    sidecar = await sidecar_factory(profiles)
    await sidecar.wait_event("refresh.failed")
    async with http.get(f"{sidecar.ops}/status") as resp:
        status = (await resp.json())["profiles"]["wrong"]
    assert status["state"] == "misconfigured"
    assert status["last_error"]["error"] == "invalid_client"
    async with http.get(f"{sidecar.url}/v1/token/wrong", headers=HEADERS) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"] == "misconfigured"
        assert resp.headers["Retry-After"]
    assert_no_secrets(sidecar, wrong)
    assert await sidecar.stop() == 0


async def test_mcp_tool_call_survives_signing_key_rotation(oidc, sidecar_factory, http, client_key):
    """MCP client -> FastMCP tool -> protected API with a sidecar token: 200, and after the
    IdP rotates its signing key (API key cache refreshed), 401 -> invalidate -> retry -> 200."""
    from fastmcp import Client  # noqa: PLC0415 - heavy import, only this test needs it

    profiles = profile(
        oidc,
        "api",
        "basic",
        client_auth='"client_secret_basic"',
        client_secret=f'"{SECRETS["basic"]}"',
        resource=f'"{RESOURCE}"',
        verify='"jwks"',
    )
    sidecar = await sidecar_factory(profiles)
    await sidecar.wait_event("token.refreshed")

    api = ProtectedAPIServer(oidc.jwks_url, oidc.issuer, RESOURCE)
    await api.start()
    tokens = TokenClient(sidecar.url, profile="api")
    mcp = load_example("fastmcp_server", "server").make_server(f"{api.url}", tokens=tokens)
    try:
        async with serve_mcp_over_http(mcp) as mcp_url, Client(mcp_url) as client:
            tools = {tool.name for tool in await client.list_tools()}
            assert "list_things" in tools

            first = await client.call_tool("list_things", {})
            assert first.data == {"things": ["alpha", "beta", "gamma"], "caller": "basic"}
            assert api.statuses == [200]
            old = await fetch_token(http, sidecar, "api")
            old_kid = jwt.get_unverified_header(old["access_token"])["kid"]

            rotated = await oidc.rotate(http)
            assert rotated["active_kid"] != old_kid
            async with http.post(f"{api.url}/admin/refresh-keys") as resp:
                kids = (await resp.json())["kids"]
            assert old_kid not in kids
            assert rotated["active_kid"] in kids
            # The API now rejects the token the MCP server holds, as RFC 6750 says.
            bearer = {"Authorization": f"Bearer {old['access_token']}"}
            async with http.get(f"{api.url}/things", headers=bearer) as resp:
                assert resp.status == 401
                assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
            api.statuses.clear()

            second = await client.call_tool("list_things", {})
            assert second.data == first.data
            assert api.statuses == [401, 200]
            await sidecar.wait_event("token.invalidated")
            new = await fetch_token(http, sidecar, "api")
            assert new["access_token"] != old["access_token"]
            assert jwt.get_unverified_header(new["access_token"])["kid"] == rotated["active_kid"]

            third = await client.call_tool("list_things", {})
            assert third.data == first.data
            assert api.statuses == [401, 200, 200]
            assert sidecar.count("token.invalidated") == 1
            assert_no_secrets(sidecar, old["access_token"], new["access_token"])
    finally:
        await tokens.aclose()
        await api.stop()
    assert await sidecar.stop() == 0
