"""A FastMCP 4 server that only answers callers with a valid bearer JWT from the IdP.

It stands in for an MCP server an agent calls machine to machine: FastMCP's
``JWTVerifier`` checks each request's ``Authorization: Bearer`` token against
the IdP's JWKS (signature, ``iss``, ``aud``, ``exp``) and the scope
``read:tools``; anything else gets 401 before MCP sees it. The tool ``whoami``
answers with what the server learned from the token.

Run: ``python protected_mcp.py --issuer ISS --jwks-url URL --audience AUD``
(streamable HTTP on 127.0.0.1:8900/mcp).
"""

from __future__ import annotations

import argparse
from typing import Any

from fastmcp import FastMCP
from fastmcp.server.auth.providers.jwt import JWTVerifier
from fastmcp.server.dependencies import get_access_token

SCOPE = "read:tools"


def make_server(*, jwks_url: str, issuer: str, audience: str) -> FastMCP[Any]:
    """The JWT-protected MCP server."""
    verifier = JWTVerifier(
        jwks_uri=jwks_url, issuer=issuer, audience=audience, required_scopes=[SCOPE]
    )
    mcp: FastMCP[Any] = FastMCP("protected", auth=verifier)

    @mcp.tool
    def whoami() -> dict[str, Any]:
        """Who the caller is, according to its access token."""
        token = get_access_token()
        if token is None:  # the verifier admits no request without one
            return {"client_id": None, "scopes": []}
        return {"client_id": token.client_id, "scopes": sorted(token.scopes)}

    return mcp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--issuer", required=True, help="expected iss, exactly")
    parser.add_argument("--jwks-url", required=True)
    parser.add_argument("--audience", required=True, help="expected aud")
    args = parser.parse_args(argv)
    mcp = make_server(jwks_url=args.jwks_url, issuer=args.issuer, audience=args.audience)
    mcp.run(transport="http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
