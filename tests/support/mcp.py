"""The MCP side of client tests: the repository's examples, loaded and served on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import uvicorn
from aiohttp import web

from sidecar.testing import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
READY_TIMEOUT = 15.0


def load_example(folder: str, name: str) -> ModuleType:
    """Import ``examples/<folder>/<name>.py`` under a unique module name."""
    spec = importlib.util.spec_from_file_location(
        f"example_{folder}_{name}", EXAMPLES / folder / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class ProtectedAPIServer:
    """``examples/fastmcp_server/protected_api.py`` on 127.0.0.1, noting answers by status."""

    def __init__(self, jwks_url: str, issuer: str, audience: str) -> None:
        module = load_example("fastmcp_server", "protected_api")
        self.keys = module.KeySet(jwks_url)
        self.app = module.make_app(
            jwks_url=jwks_url, issuer=issuer, audience=audience, admin=True, keys=self.keys
        )
        self.statuses: list[int] = []
        self.app.middlewares.append(self._count)
        self.runner = web.AppRunner(self.app)
        self.url = ""

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if request.path == "/things":
            self.statuses.append(response.status)
        return response

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


class StartupAwaitedServer(uvicorn.Server):
    """uvicorn's server with an event for the end of its startup (``started`` is only a flag)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.startup_ended = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.startup_ended.set()


@contextlib.asynccontextmanager
async def serve_mcp_over_http(mcp: Any) -> AsyncIterator[str]:
    """Serve a FastMCP server over streamable HTTP on 127.0.0.1 (uvicorn, in this loop)."""
    port = free_port()
    config = uvicorn.Config(
        mcp.http_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = StartupAwaitedServer(config)
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.wait_for(server.startup_ended.wait(), READY_TIMEOUT)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
