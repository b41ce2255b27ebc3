"""The client tests' world: a token API on TCP and a Unix socket, and a protected API."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar.config import ServerConfig
from sidecar.devidp import DevIdP
from sidecar.service import TokenService
from sidecar.token_api import make_token_app


class ProtectedAPI:
    """A resource server: 200 for a current token, 401 with WWW-Authenticate otherwise.

    ``seen`` lists the bearer token of every request ("" for none) and
    ``rejections`` the tokens it answered 401; ``/redirect`` answers 307 to
    ``redirect_to``.
    """

    def __init__(self, idp: DevIdP) -> None:
        self.idp = idp
        self.rejected: set[str] = set()
        self.always_401 = False
        self.seen: list[str] = []
        self.rejections: list[str] = []
        self.bodies: list[bytes] = []
        self.redirect_to = ""

    async def handle(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.seen.append(token)
        self.bodies.append(await request.read())
        if self.always_401 or token in self.rejected or token not in self.idp.issued_tokens:
            self.rejections.append(token)
            return web.Response(
                status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        return web.json_response({"ok": True})

    async def redirect(self, request: web.Request) -> web.Response:
        self.seen.append(request.headers.get("Authorization", "").removeprefix("Bearer "))
        raise web.HTTPTemporaryRedirect(self.redirect_to)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/tool", self.handle)
        app.router.add_route("*", "/redirect", self.redirect)
        return app


def peer_recorder(
    peers: list[object],
) -> Any:
    """A middleware that notes each request's peer address: one per client connection."""

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return await handler(request)

    return record


async def _serve(
    app: web.Application, runners: list[web.AppRunner], *, path: str | None = None
) -> str:
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


@contextlib.asynccontextmanager
async def client_stack(service: TokenService, idp: DevIdP) -> AsyncIterator[dict[str, Any]]:
    """``service``'s token API on TCP (``url``) and a Unix socket, and a protected API.

    ``peers`` lists the peer address of every request to the TCP token API;
    ``other`` is a second protected API on another origin (``other_url``).
    """
    runners: list[web.AppRunner] = []
    peers: list[object] = []
    app = make_token_app(service, ServerConfig())
    app.middlewares.append(peer_recorder(peers))
    directory = Path(tempfile.mkdtemp(dir="/tmp"))
    api = ProtectedAPI(idp)
    other = ProtectedAPI(idp)
    try:
        yield {
            "service": service,
            "url": await _serve(app, runners),
            "peers": peers,
            "socket": await _serve(
                make_token_app(service, ServerConfig()), runners, path=str(directory / "s")
            ),
            "api": api,
            "api_url": await _serve(api.app(), runners) + "/tool",
            "other": other,
            "other_url": await _serve(other.app(), runners) + "/tool",
        }
    finally:
        for runner in runners:
            await runner.cleanup()
        (directory / "s").unlink(missing_ok=True)
        directory.rmdir()  # noqa: ASYNC240 - teardown of a tiny temp dir


def served(service: TokenService) -> float | None:
    """How many tokens the service handed out as served (not stale)."""
    return service.metrics.registry.get_sample_value(
        "token_sidecar_token_requests_total", {"profile": "api", "outcome": "served"}
    )


def invalidations(service: TokenService, result: str) -> float:
    """How many reports of profile ``api``'s token ended with ``result``."""
    value = service.metrics.registry.get_sample_value(
        "token_sidecar_invalidations_total", {"profile": "api", "result": result}
    )
    return value or 0.0
