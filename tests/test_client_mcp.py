"""The client in the MCP stack of today: FastMCP 4, the MCP SDK 2, httpx2.

Two cases, with the examples as they ship:

- an MCP server's tool calls a protected API through ``SidecarAuth`` on an
  ``httpx2.AsyncClient`` (``examples/fastmcp_server``), driven by a real MCP
  client in memory and over streamable HTTP, through a signing-key rotation
  of the dev IdP;
- an agent calls a JWT-protected FastMCP server (``examples/mcp_agent``) with
  ``fastmcp.Client(auth=SidecarAuth(...))`` and with the MCP SDK's
  ``ClientSession`` over streamable HTTP.

The token API is the in-process service on the FakeClock. The API and the
MCP server check tokens against the wall clock (PyJWT, FastMCP), so the fake
clock's wall time starts at the real one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import jwt
import pytest
from fastmcp import Client

from sidecar.testing import FakeClock
from tests.support.builders import AUDIENCE, CLIENT_ID
from tests.support.clientstack import invalidations
from tests.support.mcp import ProtectedAPIServer, load_example, serve_mcp_over_http
from tests.support.virtual_time import run_for
from token_sidecar_client import TokenClient

pytestmark = pytest.mark.slow

THINGS = {"things": ["alpha", "beta", "gamma"], "caller": CLIENT_ID}


@pytest.fixture
def clock() -> FakeClock:
    """The FakeClock, its wall time at the real one: tokens must pass real-clock checks."""
    return FakeClock(wall_start=time.time())


@pytest.fixture
async def things_api(idp) -> AsyncIterator[ProtectedAPIServer]:
    """The example's protected API, trusting the dev IdP's JWKS."""
    api = ProtectedAPIServer(f"{idp.base_url}/.well-known/jwks.json", idp.issuer, AUDIENCE)
    await api.start()
    yield api
    await api.stop()


@contextlib.asynccontextmanager
async def mcp_client(mcp: Any, transport: str) -> AsyncIterator[Client[Any]]:
    """A fastmcp.Client connected to ``mcp`` in memory or over streamable HTTP."""
    if transport == "memory":
        async with Client(mcp) as client:
            yield client
        return
    async with serve_mcp_over_http(mcp) as url, Client(url) as client:
        yield client


@pytest.mark.parametrize("transport", ["memory", "http"])
async def test_tool_calls_the_api_through_a_signing_key_rotation(
    stack, clock, idp, things_api, transport
):
    """MCP client -> FastMCP tool -> httpx2 + SidecarAuth -> API: 200; after the IdP rotates
    its key and the API drops the old one, 401 -> invalidate -> retry -> 200."""
    async with TokenClient(stack["url"], profile="api", clock=clock) as tokens:
        mcp = load_example("fastmcp_server", "server").make_server(things_api.url, tokens=tokens)
        async with mcp_client(mcp, transport) as client:
            assert [tool.name for tool in await client.list_tools()] == ["list_things"]
            first = await client.call_tool("list_things", {})
            assert first.data == THINGS
            old = (await tokens.get_token()).access_token

            # Past the sidecar's JWKS refetch cooldown, then rotate: the old key is gone.
            await run_for(clock, stack["service"], 15)
            new_kid = idp.rotate_signing_key(keep_old=False)
            await things_api.keys.refresh()
            assert things_api.keys.kids == [new_kid]

            second = await client.call_tool("list_things", {})
            assert second.data == THINGS
            third = await client.call_tool("list_things", {})
            assert third.data == THINGS
        new = (await tokens.get_token()).access_token
    assert things_api.statuses == [200, 401, 200, 200]
    assert invalidations(stack["service"], "refreshed") == 1
    assert new != old
    assert jwt.get_unverified_header(new)["kid"] == new_kid


@pytest.fixture
async def protected_mcp(idp) -> AsyncIterator[str]:
    """The JWT-protected MCP server of examples/mcp_agent over streamable HTTP; its URL."""
    mcp = load_example("mcp_agent", "protected_mcp").make_server(
        jwks_url=f"{idp.base_url}/.well-known/jwks.json", issuer=idp.issuer, audience=AUDIENCE
    )
    async with serve_mcp_over_http(mcp) as url:
        yield url


WHOAMI = {"client_id": CLIENT_ID, "scopes": ["read:tools"]}


async def test_the_protected_mcp_server_turns_away_a_caller_without_a_token(protected_mcp):
    """Without a bearer token the MCP server answers 401, before any MCP message."""
    async with httpx2.AsyncClient() as http:
        resp = await http.post(protected_mcp, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_mcp_sdk_session_authenticates_with_the_sidecar_token(stack, clock, protected_mcp):
    """An MCP SDK 2 ClientSession over streamable HTTP gets in with the sidecar's token."""
    agent = load_example("mcp_agent", "agent")
    async with TokenClient(stack["url"], profile="api", clock=clock) as tokens:
        assert await agent.call_with_mcp_sdk(protected_mcp, tokens) == WHOAMI


async def test_fastmcp_client_authenticates_with_the_sidecar_token(stack, clock, protected_mcp):
    """fastmcp.Client(auth=SidecarAuth(...)) gets in with the sidecar's token."""
    agent = load_example("mcp_agent", "agent")
    async with TokenClient(stack["url"], profile="api", clock=clock) as tokens:
        assert await agent.call_with_fastmcp(protected_mcp, tokens) == WHOAMI
