"""A FastMCP server whose tool calls a protected API with a token from token-sidecar.

The server never sees the IdP secret: :class:`~sidecar.client.SidecarAuth`
asks the sidecar on loopback (``TOKEN_SIDECAR_URL`` or ``TOKEN_SIDECAR_SOCKET``,
profile ``TOKEN_SIDECAR_PROFILE``) and reuses the token in-process until 30 s
before expiry. When the API answers 401 (a revoked token, a rotated signing
key), it reports the token to the sidecar and retries the call once with the
fresh one, so the tool call still succeeds.

Run: ``PROTECTED_API_URL=http://127.0.0.1:8800 python server.py`` (streamable
HTTP on 127.0.0.1:8000/mcp; ``--stdio`` for stdio).
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

from sidecar.client import SidecarAuth, SidecarError, TokenClient


def make_server(
    api_url: str | None = None,
    *,
    tokens: TokenClient | None = None,
    profile: str | None = None,
) -> FastMCP[Any]:
    """The MCP server; ``api_url`` defaults to ``PROTECTED_API_URL``."""
    base_url = api_url or os.environ.get("PROTECTED_API_URL", "http://127.0.0.1:8800")

    @asynccontextmanager
    async def lifespan(_server: FastMCP[Any]) -> AsyncIterator[dict[str, Any]]:
        client = tokens if tokens is not None else TokenClient()
        auth = SidecarAuth(client, profile)
        async with httpx.AsyncClient(base_url=base_url, auth=auth, timeout=10.0) as http:
            try:
                yield {"http": http}
            finally:
                if tokens is None:
                    await client.aclose()

    mcp: FastMCP[Any] = FastMCP("things", lifespan=lifespan)

    @mcp.tool
    async def list_things(ctx: Context) -> dict[str, Any]:
        """List the things the protected API holds."""
        http: httpx.AsyncClient = ctx.lifespan_context["http"]
        try:
            resp = await http.get("/things")
        except SidecarError as exc:
            raise ToolError(f"no token from the sidecar: {exc.code}") from exc
        except httpx.HTTPError as exc:
            raise ToolError(f"protected API unreachable: {type(exc).__name__}") from exc
        if resp.status_code != 200:
            raise ToolError(f"protected API answered {resp.status_code}")
        result: dict[str, Any] = resp.json()
        return result

    return mcp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FastMCP server using token-sidecar")
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
