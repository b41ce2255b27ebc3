"""A FastMCP server whose tool calls its API only through token-sidecar's proxy.

No client library and no token in this process: the tool sends its request to
``TOKEN_SIDECAR_URL/v1/proxy/things/...`` with the header ``Token-Sidecar: 1``;
the sidecar attaches the token of the upstream's profile, forwards the request
to the configured ``base_url``, retries once after a 401 with a new token, and
streams the answer back. Any language can do the same with its plain HTTP
client (see docs/operations.md, "Proxy mode").

Run: ``TOKEN_SIDECAR_URL=http://127.0.0.1:8700 python proxy_server.py`` (streamable
HTTP on 127.0.0.1:8000/mcp; ``--stdio`` for stdio), with a sidecar whose config
has an ``[upstreams.things]`` table.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError

#: The upstream's name in the sidecar's config: the API lives behind /v1/proxy/things/.
UPSTREAM = "things"


def make_server(sidecar_url: str | None = None, *, upstream: str = UPSTREAM) -> FastMCP[Any]:
    """The MCP server; ``sidecar_url`` defaults to ``TOKEN_SIDECAR_URL``."""
    base = sidecar_url or os.environ.get("TOKEN_SIDECAR_URL", "http://127.0.0.1:8700")

    @asynccontextmanager
    async def lifespan(_server: FastMCP[Any]) -> AsyncIterator[dict[str, Any]]:
        async with httpx.AsyncClient(
            base_url=f"{base}/v1/proxy/{upstream}",
            headers={"Token-Sidecar": "1"},
            timeout=30.0,
            trust_env=False,  # the sidecar is on loopback: never through an HTTP proxy
        ) as http:
            yield {"http": http}

    mcp: FastMCP[Any] = FastMCP("things", lifespan=lifespan)

    @mcp.tool
    async def list_things(ctx: Context) -> dict[str, Any]:
        """List the things the protected API holds."""
        http: httpx.AsyncClient = ctx.lifespan_context["http"]
        try:
            resp = await http.get("/things")
        except httpx.HTTPError as exc:
            raise ToolError(f"sidecar unreachable: {type(exc).__name__}") from exc
        refused = resp.headers.get("Token-Sidecar-Error")
        if refused is not None:  # the sidecar answered itself: no token, upstream down, ...
            raise ToolError(f"the sidecar could not forward the call: {refused}")
        if resp.status_code != 200:
            raise ToolError(f"protected API answered {resp.status_code}")
        result: dict[str, Any] = resp.json()
        return result

    return mcp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FastMCP server calling its API via the proxy")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stdio", action="store_true", help="serve MCP over stdio")
    args = parser.parse_args(argv)
    mcp = make_server()
    if args.stdio:
        mcp.run()
    else:
        mcp.run(transport="http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
