"""The token client (token_sidecar_client._core) against a live token API on loopback."""

from __future__ import annotations

import ast
import asyncio
import sys
from pathlib import Path

import pytest

import sidecar
import sidecar.client
import token_sidecar_client
from sidecar.token import fingerprint as daemon_fingerprint
from tests.support.clientstack import served
from tests.support.virtual_time import run_for
from token_sidecar_client import SidecarError, Token, TokenClient
from token_sidecar_client._core import Endpoint, fingerprint, parse_answer


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


def test_fingerprint_is_the_daemons():
    """The client names a token exactly as the daemon does, so invalidate finds it."""
    assert fingerprint("secret-value") == daemon_fingerprint("secret-value")
    assert fingerprint("secret-value") == "31160254d129"
    assert fingerprint("other-value") != fingerprint("secret-value")


def test_parse_answer_reads_a_token():
    """A 200 answer becomes a Token; fields the client does not keep are ignored."""
    body = b'{"access_token":"v","token_type":"Bearer","expires_in":5,"expires_at":1800000000,'
    body += b'"scope":null,"profile":"api","stale":false}'
    assert parse_answer(200, body, None) == Token("v", 1800000000.0, stale=False, profile="api")


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "expected"),
    [
        (502, b"<html>", None, ("bad_answer", 502, None)),
        (200, b"[1]", None, ("bad_answer", 200, None)),
        (200, b'{"access_token":"v"}', None, ("bad_answer", 200, None)),
        (503, b'{"error":"token_unavailable","message":"m"}', "7", ("token_unavailable", 503, 7)),
        (503, b'{"error":"token_unavailable"}', "soon", ("token_unavailable", 503, None)),
        (400, b"{}", None, ("error", 400, None)),
    ],
)
def test_parse_answer_raises_sidecar_error(status, body, retry_after, expected):
    """Anything but a complete 200 token answer is a SidecarError with code and status."""
    with pytest.raises(SidecarError) as info:
        parse_answer(status, body, retry_after)
    assert (info.value.code, info.value.status, info.value.retry_after) == expected


@pytest.mark.parametrize(
    ("min_ttl", "url"),
    [
        (0, "http://127.0.0.1:8700/v1/token/api"),
        (30, "http://127.0.0.1:8700/v1/token/api?min_ttl=30"),
        (59.9, "http://127.0.0.1:8700/v1/token/api?min_ttl=59"),
    ],
)
def test_endpoint_token_url(min_ttl, url):
    """min_ttl is asked for in whole seconds, and only when it is positive."""
    assert Endpoint.resolve(None, None, {}).token_url("api", min_ttl) == url


def test_endpoint_resolution():
    """An explicit URL or socket beats the environment; the URL beats the socket there."""
    env = {"TOKEN_SIDECAR_URL": "http://127.0.0.1:1/", "TOKEN_SIDECAR_SOCKET": "/s"}
    assert Endpoint.resolve(None, None, env) == Endpoint("http://127.0.0.1:1", None)
    assert Endpoint.resolve(None, "/t", env) == Endpoint("http://localhost", "/t")
    assert Endpoint.resolve(None, None, {"TOKEN_SIDECAR_SOCKET": "/s"}).where == "/s"
    assert Endpoint.resolve(None, None, {}).invalidate_url("a b") == (
        "http://127.0.0.1:8700/v1/token/a%20b/invalidate"
    )


def test_public_names_are_pinned():
    """The client distribution, sidecar.client and sidecar export exactly DESIGN.md's names."""
    names = ["SidecarAuth", "SidecarError", "Token", "TokenClient", "sidecar_middleware"]
    assert token_sidecar_client.__all__ == sorted([*names, "__version__"])
    assert sidecar.client.__all__ == names
    assert sidecar.__all__ == sorted([*names, "__version__"])
    for name in names:
        assert getattr(sidecar.client, name) is getattr(token_sidecar_client, name)
        assert getattr(sidecar, name) is getattr(token_sidecar_client, name)


def test_client_version_is_the_daemons():
    """The client distribution is released in step with the daemon: one version number."""
    assert token_sidecar_client.__version__ == sidecar.__version__


def test_client_package_imports_nothing_of_the_daemon():
    """token_sidecar_client imports only the standard library, aiohttp, httpx2, httpx and itself."""
    allowed = {*sys.stdlib_module_names, "aiohttp", "httpx", "httpx2"}
    imported: set[str] = set()
    for path in Path(token_sidecar_client.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    assert imported <= allowed, imported - allowed
    assert {"aiohttp", "json", "urllib"} <= imported  # the scan sees real imports
