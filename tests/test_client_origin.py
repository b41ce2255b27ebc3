"""Origin pinning (token_sidecar_client._origin): the token goes to one origin only.

For each adapter (httpx2, httpx, aiohttp): a session that calls its API and
then another origin sends the token to the API alone, leaves the other
origin's 401 alone, and gives no token to a redirect that leaves the origin.
"""

from __future__ import annotations

import asyncio
import importlib
from types import ModuleType

import aiohttp
import pytest

from tests.support.clientstack import invalidations
from token_sidecar_client import SidecarAuth, TokenClient, sidecar_middleware
from token_sidecar_client._origin import Origin, OriginKey


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://127.0.0.1:8700/v1/x", OriginKey("http", "127.0.0.1", 8700)),
        ("HTTPS://API.Example.com/a?b#c", OriginKey("https", "api.example.com", 443)),
        ("https://api.example.com:443", OriginKey("https", "api.example.com", 443)),
        ("http://user:pw@[::1]/", OriginKey("http", "::1", 80)),
        ("ftp://files.example.com/", OriginKey("ftp", "files.example.com", None)),
    ],
)
def test_origin_key_of_a_url(url, key):
    """An origin is scheme, host and port; case and default ports do not tell origins apart."""
    assert OriginKey.of(url) == key


@pytest.mark.parametrize("url", ["/relative", "api.example.com", "http:///path", ""])
def test_origin_key_needs_an_absolute_url(url):
    """A URL without scheme or host has no origin."""
    with pytest.raises(ValueError, match="not an absolute URL"):
        OriginKey.of(url)


def test_first_request_pins_the_origin():
    """Without a given origin, the first URL pins it for good; another origin never gets in."""
    origin = Origin()
    assert repr(origin) == "Origin(None)"
    assert origin.admits("https://api.example.com/a")
    assert origin.admits("https://API.example.com:443/b")
    assert not origin.admits("http://api.example.com/a")  # another scheme
    assert not origin.admits("https://api.example.com:8443/a")  # another port
    assert not origin.admits("https://evil.example.com/a")
    assert origin.pinned == "https://api.example.com:443"
    assert repr(origin) == "Origin('https://api.example.com:443')"


def test_a_given_origin_is_pinned_before_any_request():
    """A given origin admits only itself, even when the first request goes elsewhere."""
    origin = Origin("http://[::1]:9000")
    assert origin.pinned == "http://[::1]:9000"
    assert not origin.admits("http://127.0.0.1:9000/")
    assert origin.admits("http://[::1]:9000/x")


@pytest.fixture(params=["httpx2", "httpx"])
def lib(request) -> ModuleType:
    return importlib.import_module(request.param)


async def test_httpx_libraries_send_no_token_to_another_origin(stack, clock, lib):
    """The same httpx2/httpx client sends the token to its API only, and ignores others' 401s."""
    api, other = stack["api"], stack["other"]
    async with (
        TokenClient(stack["url"], profile="api", clock=clock) as client,
        lib.AsyncClient(auth=SidecarAuth(client)) as http,
    ):
        assert (await http.get(stack["api_url"])).status_code == 200
        assert (await http.get(stack["other_url"])).status_code == 401
        token = (await client.get_token()).access_token
    assert api.seen == [token]
    assert other.seen == [""]
    assert invalidations(stack["service"], "refreshed") == 0


async def test_httpx_libraries_honour_a_given_origin(stack, clock, lib):
    """With origin= the first request may go elsewhere: it gets no token, the API does."""
    api, other = stack["api"], stack["other"]
    async with (
        TokenClient(stack["url"], profile="api", clock=clock) as client,
        lib.AsyncClient(auth=SidecarAuth(client, origin=stack["api_url"])) as http,
    ):
        assert (await http.get(stack["other_url"])).status_code == 401
        assert (await http.get(stack["api_url"])).status_code == 200
    assert other.seen == [""]
    assert len(api.seen) == 1
    assert api.seen[0]


async def test_httpx_libraries_leave_a_redirect_to_another_origin_alone(stack, clock, lib):
    """A redirect off the origin carries no token, and its 401 reports nothing."""
    api, other = stack["api"], stack["other"]
    api.redirect_to = stack["other_url"]
    redirect_url = stack["api_url"].replace("/tool", "/redirect")
    async with (
        TokenClient(stack["url"], profile="api", clock=clock) as client,
        lib.AsyncClient(auth=SidecarAuth(client), follow_redirects=True) as http,
    ):
        assert (await http.get(redirect_url)).status_code == 401
    assert len(api.seen) == 1
    assert api.seen[0]  # the origin's own hop had the token
    assert other.seen == [""]
    assert invalidations(stack["service"], "refreshed") == 0


async def test_aiohttp_middleware_sends_no_token_to_another_origin(stack, clock):
    """The same aiohttp session sends the token to its API only, on direct calls and redirects."""
    api, other = stack["api"], stack["other"]
    api.redirect_to = stack["other_url"]
    async with (
        TokenClient(stack["url"], profile="api", clock=clock) as client,
        aiohttp.ClientSession(middlewares=(sidecar_middleware(client),)) as http,
    ):
        async with http.get(stack["api_url"]) as resp:
            assert resp.status == 200
        async with http.get(stack["other_url"]) as resp:
            assert resp.status == 401
        async with http.get(stack["api_url"].replace("/tool", "/redirect")) as resp:
            assert resp.status == 401
        token = (await client.get_token()).access_token
    assert api.seen == [token, token]
    assert other.seen == ["", ""]
    assert invalidations(stack["service"], "refreshed") == 0


async def test_aiohttp_middleware_honours_a_given_origin(stack, clock):
    """With origin= the middleware's first request may go elsewhere without the token."""
    api, other = stack["api"], stack["other"]
    middleware = sidecar_middleware(
        client := TokenClient(stack["url"], profile="api", clock=clock), origin=stack["api_url"]
    )
    async with client, aiohttp.ClientSession(middlewares=(middleware,)) as http:
        async with http.get(stack["other_url"]) as resp:
            assert resp.status == 401
        async with http.get(stack["api_url"]) as resp:
            assert resp.status == 200
    assert other.seen == [""]
    assert len(api.seen) == 1
    assert api.seen[0]


async def test_sync_flow_sends_no_token_to_another_origin(stack, clock, lib):
    """The sync flow pins the origin too: the other origin gets no token and its 401 stands."""
    api, other = stack["api"], stack["other"]

    def calls() -> list[int]:
        with (
            TokenClient(stack["url"], profile="api", clock=clock) as client,
            lib.Client(auth=SidecarAuth(client)) as http,
        ):
            return [http.get(url).status_code for url in (stack["api_url"], stack["other_url"])]

    assert await asyncio.to_thread(calls) == [200, 401]
    assert len(api.seen) == 1
    assert api.seen[0]
    assert other.seen == [""]
    assert invalidations(stack["service"], "refreshed") == 0
