"""sidecar_middleware (token_sidecar_client._aiohttp) against a live token and protected API."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.virtual_time import run_for
from token_sidecar_client import SidecarError, TokenClient, sidecar_middleware


async def test_aiohttp_middleware_retries_once_after_401(stack, clock):
    """After a 401 the middleware reports the token and retries once with a new one."""
    api = stack["api"]
    async with TokenClient(stack["url"], profile="api", clock=clock) as client:
        first = await client.get_token()
        api.rejected.add(first.access_token)
        async with (
            aiohttp.ClientSession(middlewares=(sidecar_middleware(client),)) as http,
            http.post(stack["api_url"], data=b"payload") as resp,
        ):
            assert resp.status == 200
        assert api.seen[0] == first.access_token
        assert api.seen[1] != first.access_token
        assert api.bodies == [b"payload", b"payload"]
        api.always_401 = True
        # Within the invalidate throttle the sidecar answers the same token: no replay.
        async with aiohttp.ClientSession(middlewares=(sidecar_middleware(client),)) as http:
            with pytest.raises(SidecarError) as info:
                await http.get(stack["api_url"])
        assert (info.value.code, info.value.retry_after) == ("throttled", 10.0)
        assert len(api.seen) == 3
        await run_for(clock, stack["service"], 10)  # the throttle passed: one retry, never more
        async with (
            aiohttp.ClientSession(middlewares=(sidecar_middleware(client),)) as http,
            http.get(stack["api_url"]) as resp,
        ):
            assert resp.status == 401
        assert len(api.seen) == 5
        assert api.seen[3] != api.seen[4]


async def test_aiohttp_middleware_does_not_replay_a_stream(stack, clock):
    """A streamed body that cannot be sent again is not retried."""
    api = stack["api"]
    api.always_401 = True

    async def body():
        yield b"chunk"

    async with (
        TokenClient(stack["url"], profile="api", clock=clock) as client,
        aiohttp.ClientSession(middlewares=(sidecar_middleware(client),)) as http,
        http.post(stack["api_url"], data=body()) as resp,
    ):
        assert resp.status == 401
    assert len(api.seen) == 1
