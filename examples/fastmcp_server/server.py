"""A FastMCP 4 server whose tool calls a protected API with a token from token-sidecar.

The server never sees the IdP secret: :class:`~token_sidecar_client.SidecarAuth`
asks the sidecar on loopback (``TOKEN_SIDECAR_URL`` or ``TOKEN_SIDECAR_SOCKET``,
profile ``TOKEN_SIDECAR_PROFILE``) and reuses the token in-process until 30 s
before expiry. It attaches the token to the protected API's origin only. When
the API answers 401 (a revoked token, a rotated signing key), it reports the
token to the sidecar and retries the call once with the fresh one, so the tool
call still succeeds.

The server's lifespan owns the token client and the httpx2 client (FastMCP 4's
own HTTP library) and closes both when the server stops. Needs only
``pip install 'token-sidecar-client[httpx2]' fastmcp``.

Run: ``PROTECTED_API_URL=http://127.0.0.1:8800 python server.py`` (streamable
HTTP on 127.0.0.1:8000/mcp; ``--stdio`` for stdio).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator
from contextlib import nullcontext
from typing import Any

import httpx2
from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.lifespan import lifespan

from token_sidecar_client import SidecarAuth, SidecarError, TokenClient


def make_server(
    api_url: str | None = None,
    *,
    tokens: TokenClient | None = None,
    profile: str | None = None,
) -> FastMCP[Any]:
    """The MCP server; ``api_url`` defaults to ``PROTECTED_API_URL``.

    ``tokens`` lends the server a token client its caller owns (and closes);
    without it the lifespan opens one from the environment.
    """
    base_url = api_url or os.environ.get("PROTECTED_API_URL", "http://127.0.0.1:8800")

    @lifespan
    async def api_client(_server: FastMCP[Any]) -> AsyncIterator[dict[str, Any]]:
        async with (
            TokenClient() if tokens is None else nullcontext(tokens) as client,
            httpx2.AsyncClient(
                base_url=base_url,
                auth=SidecarAuth(client, profile, origin=base_url),
                timeout=10.0,
            ) as http,
        ):
            yield {"http": http}

    mcp: FastMCP[Any] = FastMCP("things", lifespan=api_client)

    @mcp.tool
    async def list_things(ctx: Context) -> dict[str, Any]:
        """List the things the protected API holds."""
        http: httpx2.AsyncClient = ctx.lifespan_context["http"]
        try:
            resp = await http.get("/things")
        except SidecarError as exc:
            raise ToolError(f"no token from the sidecar: {exc.code}") from exc
        except httpx2.HTTPError as exc:
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
