"""The client library against a live token API and a protected API on loopback."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from aiohttp import web
from conftest import make_profile, run_for

from sidecar.client import SidecarAuth, SidecarError, Token, TokenClient, sidecar_middleware
from sidecar.config import ServerConfig
from sidecar.token_api import make_token_app


class ProtectedAPI:
    """A resource server: 200 for a current token, 401 with WWW-Authenticate otherwise."""

    def __init__(self, idp) -> None:
        self.idp = idp
        self.rejected: set[str] = set()
        self.always_401 = False
        self.seen: list[str] = []
        self.bodies: list[bytes] = []

    async def handle(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.seen.append(token)
        self.bodies.append(await request.read())
        if self.always_401 or token in self.rejected or token not in self.idp.issued_tokens:
            return web.Response(
                status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/tool", self.handle)
        return app


async def _serve(app: web.Application, runners: list[web.AppRunner], *, path: str | None = None):
    runner = web.AppRunner(app)
    await runner.setup()
    runners.append(runner)
    if path is not None:
        await web.UnixSite(runner, path).start()
        return path
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


@pytest.fixture
async def stack(idp, make_service, clock) -> AsyncIterator[dict]:
    """A started token service, its token API on TCP and a Unix socket, and a protected API."""
    runners: list[web.AppRunner] = []
    service = make_service(make_profile(idp))
    await service.get("api")
    app = make_token_app(service, ServerConfig())
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    api = ProtectedAPI(idp)
    yield {
        "service": service,
        "url": await _serve(app, runners),
        "socket": await _serve(
            make_token_app(service, ServerConfig()), runners, path=str(directory / "s")
        ),
        "api": api,
        "api_url": await _serve(api.app(), runners) + "/tool",
    }
    for runner in runners:
        await runner.cleanup()
    (directory / "s").unlink(missing_ok=True)
    directory.rmdir()  # noqa: ASYNC240 - teardown of a tiny temp dir


def served(service) -> float:
    return service.metrics.registry.get_sample_value(
        "token_sidecar_token_requests_total", {"profile": "api", "outcome": "served"}
    )


async def test_reuses_token_until_min_ttl(stack, clock, idp):
    """A token is reused in-process and fetched again only when min_ttl would be crossed."""
    async with TokenClient(stack["url"], profile="api", clock=clock) as client:
        first = await client.get_token()
        again = await client.get_token()
        assert again is first
        assert served(stack["service"]) == 1
        await run_for(clock, stack["service"], first.expires_at - clock.time() - 30)
        refreshed = await client.get_token()
        assert refreshed.access_token != first.access_token
        assert served(stack["service"]) == 2


async def test_single_flight_inside_the_process(stack, clock):
    """Fifty concurrent get_token calls make one request to the sidecar."""
    async with TokenClient(stack["url"], profile="api", clock=clock) as client:
        tokens = await asyncio.gather(*(client.get_token() for _ in range(50)))
    assert len({t.access_token for t in tokens}) == 1
    assert served(stack["service"]) == 1


async def test_unix_socket_and_environment_defaults(stack, clock):
    """TOKEN_SIDECAR_SOCKET and TOKEN_SIDECAR_PROFILE configure the client with no arguments."""
    env = {"TOKEN_SIDECAR_SOCKET": stack["socket"], "TOKEN_SIDECAR_PROFILE": "api"}
    async with TokenClient(environ=env, clock=clock) as client:
        token = await client.get_token()
    assert token.profile == "api"
    assert client.endpoint.socket == stack["socket"]


async def test_errors_carry_code_and_status(stack, clock):
    """Sidecar errors surface as SidecarError with the API's code and HTTP status."""
    async with TokenClient(stack["url"], clock=clock) as client:
        with pytest.raises(SidecarError) as info:
            await client.get_token("nope")
        assert (info.value.code, info.value.status) == ("unknown_profile", 404)
        with pytest.raises(SidecarError, match="no profile"):
            await client.get_token()
    async with TokenClient("http://127.0.0.1:9", profile="api", clock=clock) as down:
        with pytest.raises(SidecarError) as info:
            await down.get_token()
    assert (info.value.code, info.value.status, info.value.retryable) == ("unreachable", 0, True)


def test_token_repr_is_masked():
    """A client Token never shows its value."""
    token = Token(access_token="secret-value", expires_at=1800000000.0, stale=False, profile="api")
    assert "secret-value" not in repr(token)
    assert repr(token) == (
        f"Token(profile='api', fingerprint='{token.fingerprint}', expires_at=1800000000, "
        "stale=False, access_token=[secure])"
    )


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
        async with (
            aiohttp.ClientSession(middlewares=(sidecar_middleware(client),)) as http,
            http.get(stack["api_url"]) as resp,
        ):
            assert resp.status == 401
        assert len(api.seen) == 4  # one retry, never more


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
