"""SidecarAuth (sidecar.client._httpx) against a live token API and protected API."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sidecar.client import SidecarAuth, SidecarError, TokenClient
from tests.support.clientstack import served


async def test_httpx_async_auth_retries_once(stack, clock):
    """The async httpx Auth retries once after a 401 and not for a streamed body."""
    api = stack["api"]
    async with TokenClient(stack["url"], profile="api", clock=clock) as client:
        first = await client.get_token()
        api.rejected.add(first.access_token)
        async with httpx.AsyncClient(auth=SidecarAuth(client)) as http:
            resp = await http.post(stack["api_url"], content=b"x")
            assert resp.status_code == 200
            assert len(api.seen) == 2
            api.always_401 = True

            async def stream():
                yield b"once"

            resp = await http.post(stack["api_url"], content=stream())
            assert resp.status_code == 401
            assert len(api.seen) == 3


async def test_httpx_sync_auth_retries_once(stack, clock):
    """The sync httpx Auth fetches, reuses and, after a 401, invalidates once."""
    api = stack["api"]
    client = TokenClient(stack["url"], profile="api", clock=clock)
    auth = SidecarAuth(client)

    def call() -> list[int]:
        with httpx.Client(auth=auth) as http:
            statuses = [http.get(stack["api_url"]).status_code]
            api.rejected.add(api.seen[-1])
            statuses.append(http.get(stack["api_url"]).status_code)
            return statuses

    assert await asyncio.to_thread(call) == [200, 200]
    assert len(api.seen) == 3
    assert api.seen[1] == api.seen[0]
    assert api.seen[2] != api.seen[1]
    await client.aclose()


async def test_httpx_sync_auth_shares_the_clients_cache(stack, clock):
    """Several sync requests, and the async path after them, cost one sidecar request."""
    api = stack["api"]
    client = TokenClient(stack["url"], profile="api", clock=clock)
    auth = SidecarAuth(client)

    def call() -> list[int]:
        with httpx.Client(auth=auth) as http:
            return [http.get(stack["api_url"]).status_code for _ in range(5)]

    assert await asyncio.to_thread(call) == [200] * 5
    assert len(set(api.seen)) == 1
    assert (await client.get_token()).access_token == api.seen[0]
    assert served(stack["service"]) == 1
    assert len(stack["peers"]) == 1
    await client.aclose()


def test_sidecar_auth_repr():
    """SidecarAuth names its client and profile, nothing more."""
    client = TokenClient("http://127.0.0.1:8700", profile="api")
    assert repr(SidecarAuth(client, "other")) == (
        "SidecarAuth(TokenClient('http://127.0.0.1:8700', profile='api', min_ttl=30), "
        "profile='other')"
    )


async def test_httpx_auth_raises_throttled_rather_than_replaying_the_same_token(stack, clock):
    """A 401 whose report is throttled raises SidecarError throttled; nothing is replayed."""
    api = stack["api"]
    async with TokenClient(stack["url"], profile="api", clock=clock) as client:
        first = await client.get_token()
        await client.invalidate(first)  # a forced refresh: the throttle window starts
        api.always_401 = True
        async with httpx.AsyncClient(auth=SidecarAuth(client)) as http:
            with pytest.raises(SidecarError) as info:
                await http.get(stack["api_url"])
        assert (info.value.code, info.value.retry_after) == ("throttled", 10.0)
        assert len(api.seen) == 1  # sent once, with the current token; no replay

        def sync_call() -> int:
            with httpx.Client(auth=SidecarAuth(client)) as http:
                return http.get(stack["api_url"]).status_code

        with pytest.raises(SidecarError, match="throttled"):
            await asyncio.to_thread(sync_call)
        assert len(api.seen) == 2
