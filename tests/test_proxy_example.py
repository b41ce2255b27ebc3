"""examples/fastmcp_proxy: a FastMCP tool that calls its API only through the proxy."""

from __future__ import annotations

from fastmcp import Client

from sidecar.config import ServerConfig, UpstreamConfig
from sidecar.token_api import make_token_app
from tests.support.builders import AUDIENCE, make_profile
from tests.support.mcp import load_example
from tests.support.upstream import TestAPI, runners, serve


async def test_tool_calls_the_api_through_the_proxy_and_survives_a_401(idp, make_service):
    """The tool's call reaches the API with the sidecar's token, also after the API rejects one."""
    async with runners() as made:
        api = TestAPI(idp, AUDIENCE)
        port = await serve(api.app(), made)
        upstream = UpstreamConfig(
            name="things",
            base_url=f"http://127.0.0.1:{port}",
            profile="api",
            allow_http=True,
            allow_private=True,
        )
        service = make_service(make_profile(idp), upstreams=[upstream])
        first = (await service.get("api")).token.value
        token_port = await serve(make_token_app(service, ServerConfig()), made)
        mcp = load_example("fastmcp_proxy", "proxy_server").make_server(
            f"http://127.0.0.1:{token_port}"
        )
        api.rejected.add(first)  # the API revoked the current token
        async with Client(mcp) as client:
            result = await client.call_tool("list_things", {})
    assert result.data["target"] == "/things"
    assert [r.token for r in api.received] == [first, service.refresher_for("api").token.value]
    assert api.received[-1].token != first
