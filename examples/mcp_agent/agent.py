"""An agent calling a JWT-protected MCP server with a token from token-sidecar.

The agent holds no IdP secret: :class:`~token_sidecar_client.SidecarAuth`
takes the token from the sidecar (``TOKEN_SIDECAR_URL`` or
``TOKEN_SIDECAR_SOCKET``, profile ``TOKEN_SIDECAR_PROFILE``), attaches it to
the MCP server's origin only, and after a 401 reports it and retries once
with a fresh one. Two ways to call, the same auth object:

- :func:`call_with_fastmcp`: ``fastmcp.Client(url, auth=SidecarAuth(...))``;
- :func:`call_with_mcp_sdk`: the MCP Python SDK 2's ``ClientSession`` over
  ``streamable_http_client``, given an ``httpx2.AsyncClient(auth=...)``.

Run: ``python agent.py http://127.0.0.1:8900/mcp`` (prints what ``whoami``
answered, once per way, as JSON lines).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import httpx2
from fastmcp import Client
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from token_sidecar_client import SidecarAuth, TokenClient


async def call_with_fastmcp(url: str, tokens: TokenClient) -> dict[str, Any]:
    """Call ``whoami`` through FastMCP's client."""
    async with Client(url, auth=SidecarAuth(tokens, origin=url)) as client:
        result = await client.call_tool("whoami", {})
    answer: dict[str, Any] = result.data
    return answer


async def call_with_mcp_sdk(url: str, tokens: TokenClient) -> dict[str, Any]:
    """Call ``whoami`` through the MCP SDK's ClientSession over streamable HTTP."""
    async with (
        httpx2.AsyncClient(auth=SidecarAuth(tokens, origin=url)) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("whoami", {})
    if result.is_error or result.structured_content is None:
        raise RuntimeError(f"whoami failed: {result.content}")
    return dict(result.structured_content)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the MCP server's streamable HTTP endpoint")
    args = parser.parse_args(argv)
    async with TokenClient() as tokens:
        for call in (call_with_fastmcp, call_with_mcp_sdk):
            sys.stdout.write(json.dumps(await call(args.url, tokens)) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
