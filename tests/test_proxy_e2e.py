"""Proxy mode in a ``serve`` process: SIGHUP under load, SIGTERM with streams open, access log."""

from __future__ import annotations

import asyncio
import signal

import aiohttp

from sidecar.daemon import SHUTDOWN_GRACE
from sidecar.devidp import DevIdP
from sidecar.testing import START_TIMEOUT
from tests.support.e2e import E2E_AUDIENCE, HEADERS, profile_toml, wait_ready
from tests.support.upstream import TestAPI, runners, serve


def upstream_toml(port: int) -> str:
    return (
        "[upstreams.api]\n"
        f'base_url = "http://127.0.0.1:{port}"\n'
        'profile = "api"\n'
        "allow_http = true\n"
        "allow_private = true\n"
    )


def config(idp: DevIdP, port: int) -> str:
    return profile_toml(idp) + upstream_toml(port)


async def test_sighup_moves_base_url_under_load(real_idp, sidecar_factory, http):
    """A SIGHUP changing base_url under load: every request gets 200; the new API takes over."""
    async with runners() as made:
        old_api, new_api = TestAPI(real_idp, E2E_AUDIENCE), TestAPI(real_idp, E2E_AUDIENCE)
        old_port = await serve(old_api.app(), made)
        new_port = await serve(new_api.app(), made)
        sidecar = await sidecar_factory(
            config(real_idp, old_port), server_extra="access_log = true"
        )
        await wait_ready(http, sidecar)
        url = f"{sidecar.url}/v1/proxy/api/tool"
        statuses: list[int] = []
        answered = asyncio.Condition()
        stop = asyncio.Event()

        async def caller() -> None:
            while not stop.is_set():
                async with http.get(url, headers=HEADERS) as resp:
                    await resp.read()
                    statuses.append(resp.status)
                async with answered:
                    answered.notify_all()

        async def until(predicate) -> None:
            async with asyncio.timeout(START_TIMEOUT), answered:
                await answered.wait_for(predicate)

        callers = [asyncio.create_task(caller()) for _ in range(8)]
        await until(lambda: len(old_api.received) >= 8)
        sidecar.write_config(config(real_idp, new_port))
        sidecar.send_signal(signal.SIGHUP)
        await sidecar.wait_event("proxy.reloaded")
        await until(lambda: len(new_api.received) >= 8)
        stop.set()
        await asyncio.gather(*callers)
        assert set(statuses) == {200}
        moved = len(old_api.received)
        async with http.get(url, headers=HEADERS) as resp:
            assert resp.status == 200
        assert len(old_api.received) == moved  # nothing goes to the old base_url any more
        access = [e for e in sidecar.events if e.get("event") == "http.access"]
        assert access
        assert {
            "method": "GET",
            "path": "/v1/proxy/api/tool",
            "status": 200,
            "upstream": "api",
        }.items() <= access[-1].items()
        assert await sidecar.stop() == 0


async def test_sigterm_with_streams_open_exits_0_within_the_grace(real_idp, sidecar_factory, http):
    """SIGTERM with SSE streams open: they are closed and the exit is 0 within the grace."""
    async with runners() as made:
        api = TestAPI(real_idp, E2E_AUDIENCE)
        port = await serve(api.app(), made)
        sidecar = await sidecar_factory(config(real_idp, port))
        await wait_ready(http, sidecar)
        url = f"{sidecar.url}/v1/proxy/api/events"
        streams = [await http.get(url, headers=HEADERS) for _ in range(3)]
        try:
            for stream in streams:
                assert stream.status == 200
            await api.sse.go.put("one")  # the first stream to be written takes it
            sidecar.send_signal(signal.SIGTERM)
            await sidecar.wait_event("sidecar.stopping")
            code = await sidecar.stop(None, timeout=SHUTDOWN_GRACE + 5)
            assert code == 0
            for stream in streams:
                try:
                    await asyncio.wait_for(stream.read(), 5)
                except aiohttp.ClientPayloadError:
                    continue  # cut short: the stream is closed either way
        finally:
            for stream in streams:
                stream.close()
            for _ in range(3):
                api.sse.go.put_nowait("end")
