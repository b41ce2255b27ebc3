"""SidecarAuth (token_sidecar_client._httpx) with httpx2 and httpx, against live APIs.

Every test runs once per library: the same SidecarAuth object serves both.
"""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
from types import ModuleType

import httpx
import httpx2
import pytest

from tests.support.clientstack import invalidations, served
from token_sidecar_client import SidecarAuth, SidecarError, TokenClient


@pytest.fixture(params=["httpx2", "httpx"])
def lib(request) -> ModuleType:
    """The HTTP library under test: httpx2 (FastMCP 4, MCP SDK 2) or httpx."""
    return importlib.import_module(request.param)


async def test_one_rejection_costs_one_invalidate_and_one_retry(stack, clock, lib):
    """A 401 is answered by exactly one invalidate and one retry with a new token: 200."""
    api = stack["api"]
    async with TokenClient(stack["url"], profile="api", clock=clock) as client:
        first = await client.get_token()
        api.rejected.add(first.access_token)
        async with lib.AsyncClient(auth=SidecarAuth(client)) as http:
            resp = await http.post(stack["api_url"], content=b"payload")
        assert resp.status_code == 200
        assert invalidations(stack["service"], "refreshed") == 1
        second = (await client.get_token()).access_token
        assert second != first.access_token
        assert api.seen == [first.access_token, second]
        assert api.bodies == [b"payload", b"payload"]


async def test_a_second_rejection_within_the_throttle_raises_throttled(stack, clock, lib):
    """A second 401 within the throttle window raises throttled; no rejected token is resent."""
    api = stack["api"]
    async with TokenClient(stack["url"], profile="api", clock=clock) as client:
        first = await client.get_token()
        api.rejected.add(first.access_token)
        async with lib.AsyncClient(auth=SidecarAuth(client)) as http:
            assert (await http.get(stack["api_url"])).status_code == 200
            second = api.seen[-1]
            api.rejected.add(second)
            with pytest.raises(SidecarError) as info:
                await http.get(stack["api_url"])
        assert (info.value.code, info.value.retry_after) == ("throttled", 10.0)
        assert api.rejections == [first.access_token, second]
        assert api.seen == [first.access_token, second, second]
        assert invalidations(stack["service"], "throttled") == 1

        def sync_call() -> int:
            with lib.Client(auth=SidecarAuth(client)) as http:
                return int(http.get(stack["api_url"]).status_code)

        # A new request may send the sidecar's token again (it has no other), once.
        with pytest.raises(SidecarError, match="throttled"):
            await asyncio.to_thread(sync_call)
        assert api.rejections == [first.access_token, second, second]


async def test_a_streamed_body_is_not_replayed(stack, clock, lib):
    """A 401 to a request with a one-shot streamed body is the answer; nothing is reported."""
    api = stack["api"]
    api.always_401 = True

    async def stream():
        yield b"once"

    async with (
        TokenClient(stack["url"], profile="api", clock=clock) as client,
        lib.AsyncClient(auth=SidecarAuth(client)) as http,
    ):
        resp = await http.post(stack["api_url"], content=stream())
    assert resp.status_code == 401
    assert len(api.seen) == 1
    assert invalidations(stack["service"], "refreshed") == 0


async def test_sync_flow_reuses_then_replaces_a_rejected_token(stack, clock, lib):
    """The sync flow fetches, reuses and, after a 401, invalidates once and retries."""
    api = stack["api"]
    with TokenClient(stack["url"], profile="api", clock=clock) as client:
        auth = SidecarAuth(client)

        def call() -> list[int]:
            with lib.Client(auth=auth) as http:
                statuses = [http.get(stack["api_url"]).status_code]
                api.rejected.add(api.seen[-1])
                statuses.append(http.get(stack["api_url"]).status_code)
                return statuses

        assert await asyncio.to_thread(call) == [200, 200]
    assert len(api.seen) == 3
    assert api.seen[1] == api.seen[0]
    assert api.seen[2] != api.seen[1]


async def test_sync_flow_shares_the_clients_cache(stack, clock, lib):
    """Several sync requests, and the async path after them, cost one sidecar request."""
    api = stack["api"]
    async with TokenClient(stack["url"], profile="api", clock=clock) as client:
        auth = SidecarAuth(client)

        def call() -> list[int]:
            with lib.Client(auth=auth) as http:
                return [http.get(stack["api_url"]).status_code for _ in range(5)]

        assert await asyncio.to_thread(call) == [200] * 5
        assert len(set(api.seen)) == 1
        assert (await client.get_token()).access_token == api.seen[0]
    assert served(stack["service"]) == 1
    assert len(stack["peers"]) == 1


def test_sidecar_auth_is_an_auth_of_both_libraries():
    """One SidecarAuth passes httpx2's and httpx's auth checks."""
    auth = SidecarAuth(TokenClient("http://127.0.0.1:8700", profile="api"))
    assert isinstance(auth, httpx2.Auth)
    assert isinstance(auth, httpx.Auth)
    assert httpx2.AsyncClient(auth=auth).auth is auth
    assert httpx.Client(auth=auth).auth is auth
    with pytest.raises(TypeError, match='Invalid "auth" argument'):
        httpx2.AsyncClient(auth=object())  # type: ignore[arg-type]  # the check is real


def test_sidecar_auth_after_httpx2_aliases_httpx():
    """With httpx2.alias_httpx() the two libraries are one, and SidecarAuth takes its Auth once."""
    code = (
        "import httpx2; httpx2.alias_httpx(); import httpx\n"
        "from token_sidecar_client import SidecarAuth, TokenClient\n"
        "auth = SidecarAuth(TokenClient('http://127.0.0.1:8700', profile='a'))\n"
        "print(httpx.Auth is httpx2.Auth, isinstance(auth, httpx2.Auth), len(type(auth).__mro__))"
    )
    result = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.stdout.split() == ["True", "True", "4"], result.stderr
    # SidecarAuth, the flows, httpx2.Auth, object; without the alias both bases count:
    assert len(SidecarAuth.__mro__) == 5


def test_sidecar_auth_repr():
    """SidecarAuth names its client, profile and pinned origin, nothing more."""
    client = TokenClient("http://127.0.0.1:8700", profile="api")
    auth = SidecarAuth(client, "other", origin="https://API.example.com")
    assert repr(auth) == (
        "SidecarAuth(TokenClient('http://127.0.0.1:8700', profile='api', min_ttl=30), "
        "profile='other', origin='https://api.example.com:443')"
    )
    assert repr(SidecarAuth(client)).endswith("profile=None, origin=None)")
