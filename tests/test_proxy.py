"""Proxy mode end to end in one process: caller -> token app -> protected test API, on loopback.

The token service runs on the virtual clock with the dev IdP; the test API is
a real aiohttp app that validates the IdP's JWTs and records what it received.
"""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import generate_latest
from yarl import URL

from sidecar.config import ServerConfig, UpstreamConfig
from sidecar.service import TokenService
from sidecar.token_api import make_token_app
from tests.support.builders import AUDIENCE, make_profile
from tests.support.metrics import sample
from tests.support.redis import free_port
from tests.support.upstream import StaticResolver, TestAPI, runners, serve, serve_token_app
from tests.support.virtual_time import run_for

HEADERS = {"Token-Sidecar": "1"}


@dataclass
class World:
    """A started service with one upstream ``api`` in front of a :class:`TestAPI`."""

    service: TokenService
    api: TestAPI
    url: str
    http: aiohttp.ClientSession
    api_port: int
    extra: dict[str, Any] = field(default_factory=dict)

    def proxied(self, path: str) -> URL:
        """The proxy URL of ``path``, exactly as written (no requoting by the test's client)."""
        return URL(f"{self.url}/v1/proxy/api/{path}", encoded=True)

    async def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        async with self.http.request(
            method, self.proxied(path), headers={**HEADERS, **(headers or {})}, **kwargs
        ) as resp:
            return resp, await resp.read()

    @property
    def current(self) -> str:
        token = self.service.refresher_for("api").token
        assert token is not None
        return token.value


Build = Callable[..., Awaitable[World]]


def upstream_to(port: int, **overrides: Any) -> UpstreamConfig:
    fields: dict[str, Any] = {
        "name": "api",
        "base_url": f"http://127.0.0.1:{port}",
        "profile": "api",
        "allow_http": True,
        "allow_private": True,
    }
    fields.update(overrides)
    return UpstreamConfig(**fields)


@pytest.fixture
async def world(idp, make_service, http) -> AsyncIterator[Build]:
    """Build the world: ``build(**upstream overrides, profile=..., resolver=...)``."""
    async with runners() as made:

        async def build(
            *, profile: dict[str, Any] | None = None, resolver: Any = None, **overrides: Any
        ) -> World:
            api = TestAPI(idp, AUDIENCE)
            port = await serve(api.app(), made, auto_decompress=False)
            if "base_url" in overrides:
                overrides["base_url"] = overrides["base_url"].format(port=port)
            service = make_service(
                make_profile(idp, **(profile or {})),
                upstreams=[upstream_to(port, **overrides)],
                upstream_resolver=resolver,
            )
            await service.get("api")
            token_port = await serve_token_app(make_token_app(service, ServerConfig()), made)
            return World(service, api, f"http://127.0.0.1:{token_port}", http, port)

        yield build


async def error_of(resp: aiohttp.ClientResponse, body: bytes, status: int, code: str) -> Any:
    """The sidecar's own answer: the status, the JSON error and the Token-Sidecar-Error header."""
    assert resp.status == status, body
    assert resp.headers["Token-Sidecar-Error"] == code
    data = orjson.loads(body)
    assert data["error"] == code
    return data


# -- passing requests through ------------------------------------------------------


async def test_get_goes_to_base_url_with_the_token(world):
    """A GET reaches base_url + path with the query byte for byte and the current token."""
    w = await world()
    resp, body = await w.call("GET", "items/a%20b/%7Ex;p=1?q=%2F&x=1&x=2")
    assert resp.status == 200, body
    assert "Token-Sidecar-Stale" not in resp.headers
    (seen,) = w.api.received
    assert seen.target == "/items/a%20b/%7Ex;p=1?q=%2F&x=1&x=2"
    assert seen.headers["Authorization"] == f"Bearer {w.current}"
    assert seen.headers["Host"] == f"127.0.0.1:{w.api_port}"
    assert "Token-Sidecar" not in seen.headers


async def test_query_without_a_path_is_kept_whole(world):
    """/v1/proxy/NAME?QUERY: the query goes on unchanged, a '/' inside it included."""
    w = await world()
    url = URL(f"{w.url}/v1/proxy/api?next=/a/../b&x=1", encoded=True)
    async with w.http.get(url, headers=HEADERS) as resp:
        assert resp.status == 200, await resp.read()
    assert [r.target for r in w.api.received] == ["/?next=/a/../b&x=1"]


async def test_base_url_path_is_kept(idp, make_service, http):
    """A base_url with a path prefix: the request goes to prefix + '/' + path."""
    async with runners() as made:
        api = TestAPI(idp, AUDIENCE)
        port = await serve(api.app(), made)
        service = make_service(
            make_profile(idp),
            upstreams=[upstream_to(port, base_url=f"http://127.0.0.1:{port}/api/v2")],
        )
        await service.get("api")
        token_port = await serve(make_token_app(service, ServerConfig()), made)
        async with http.get(
            f"http://127.0.0.1:{token_port}/v1/proxy/api/things", headers=HEADERS
        ) as resp:
            assert resp.status == 200
    assert [r.target for r in api.received] == ["/api/v2/things"]


async def test_post_json_is_passed_through(world):
    """A JSON POST arrives with its body and content type; the answer comes back as sent."""
    w = await world()
    resp, body = await w.call("POST", "tool", json={"name": "x", "n": 3})
    assert resp.status == 200
    echoed = orjson.loads(body)
    assert echoed["body"] == '{"name": "x", "n": 3}'
    assert echoed["content_type"] == "application/json"
    assert echoed["method"] == "POST"


async def test_gzip_body_is_not_decoded(world):
    """A compressed request body passes byte for byte, with its Content-Encoding."""
    w = await world()
    raw = b"\x1f\x8b\x08\x00not-really-gzip"
    resp, _ = await w.call("POST", "upload", data=raw, headers={"Content-Encoding": "gzip"})
    assert resp.status == 200
    (seen,) = w.api.received
    assert seen.headers["Content-Encoding"] == "gzip"
    assert seen.body_sha256 == hashlib.sha256(raw).hexdigest()


async def test_headers_are_stripped_and_replaced(world):
    """The caller's credential, hop-by-hop, Proxy-*, X-Forwarded-*, Token-Sidecar* never arrive."""
    w = await world(set_headers={"X-Tenant": "acme"})
    resp, _ = await w.call(
        "GET",
        "tool",
        headers={
            "Authorization": "Bearer caller-own-token",
            "Connection": "keep-alive, X-Private",
            "X-Private": "hop",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic eDp5",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https",
            "Token-Sidecar-Subject": "user-token",
            "X-Tenant": "caller-says-other",
            "X-Request-Id": "r-1",
        },
    )
    assert resp.status == 200
    (seen,) = w.api.received
    assert seen.headers.getall("Authorization") == [f"Bearer {w.current}"]
    for name in (
        "X-Private",
        "Keep-Alive",
        "Proxy-Authorization",
        "X-Forwarded-Host",
        "X-Forwarded-Proto",
        "Token-Sidecar-Subject",
        "Token-Sidecar",
    ):
        assert name not in seen.headers, name
    assert seen.headers["X-Tenant"] == "acme"
    assert seen.headers["X-Request-Id"] == "r-1"  # positive control: other headers pass


async def test_custom_credential_header(world):
    """With header = X-Api-Token the token goes there, and the caller's Authorization is removed."""
    w = await world(header="X-Api-Token")
    await w.call("GET", "tool", headers={"Authorization": "Bearer mine", "X-Api-Token": "mine"})
    (seen,) = w.api.received
    assert seen.headers.getall("X-Api-Token") == [f"Bearer {w.current}"]
    assert "Authorization" not in seen.headers


async def test_answer_headers_cannot_pose_as_the_sidecar(world):
    """Hop-by-hop and Token-Sidecar* headers from the upstream are dropped; others pass."""
    w = await world()
    resp, _ = await w.call("GET", "answer-headers")
    assert resp.status == 200
    assert "Token-Sidecar-Error" not in resp.headers
    assert "Token-Sidecar-Retried" not in resp.headers
    assert "X-Dropped" not in resp.headers
    assert resp.headers["X-Kept"] == "yes"
    assert resp.headers["Set-Cookie"] == "a=1"


@pytest.mark.parametrize(
    ("name", "value"),
    [("Forwarded", "for=1.2.3.4"), ("X-Forwarded-For", "1.2.3.4"), ("Via", "1.1 p")],
)
async def test_proxy_headers_are_refused_by_the_guards(world, name, value):
    """Forwarded, X-Forwarded-For and Via: 403 forbidden, marked, and nothing is sent."""
    w = await world()
    resp, body = await w.call("GET", "tool", headers={name: value})
    await error_of(resp, body, 403, "forbidden")
    assert w.api.received == []


async def test_missing_guard_header_is_marked(world):
    """Without Token-Sidecar: 1 the answer is 400 missing_header, marked as the sidecar's."""
    w = await world()
    async with w.http.get(w.proxied("tool")) as resp:
        await error_of(resp, await resp.read(), 400, "missing_header")
    assert w.api.received == []


async def test_unknown_upstream_is_404_and_not_counted(world, metrics):
    """An unknown upstream: 404 unknown_upstream naming the configured ones; no metric series."""
    w = await world()
    async with w.http.get(f"{w.url}/v1/proxy/nope/x", headers=HEADERS) as resp:
        data = await error_of(resp, await resp.read(), 404, "unknown_upstream")
    assert data["message"] == "unknown upstream 'nope'; configured: api"
    exposed = generate_latest(metrics.registry).decode()
    assert 'upstream="nope"' not in exposed
    assert 'upstream="api"' in exposed  # positive control: the configured one has series


async def test_trace_is_refused(world):
    """TRACE would echo the injected token back: 405, nothing sent."""
    w = await world()
    resp, body = await w.call("TRACE", "tool")
    await error_of(resp, body, 405, "method_not_allowed")
    assert w.api.received == []


@pytest.mark.parametrize(
    "path",
    [
        "a/../b",
        "..",
        "a/%2e%2e/b",
        "a/%2E%2E",
        "a%2Fb",
        "a%2fb",
        "a%5Cb",
        "a%5c..%5cb",
        "a/%2e/b",
        "a\\..\\..\\b",  # WHATWG URL parsers read '\\' as '/'
        "..\\b",
        "a/..;/b",  # servlet containers read '..;' as '..'
        "a/..;jsessionid=1/b",
        "a/%252e%252e/b",  # an upstream that decodes twice would see '..'
        "a%252Fb",
        "a%25252E",
    ],
)
async def test_traversal_is_refused(world, path):
    """'..' segments (also ended by '\\' or ';') and encoded '/', '\\', '.': 400, nothing sent."""
    w = await world()
    resp, body = await w.call("GET", path)
    await error_of(resp, body, 400, "bad_request")
    assert w.api.received == []


async def test_dots_inside_names_pass(world):
    """Dots that are not a '..' segment pass unchanged (the positive control)."""
    w = await world()
    resp, _ = await w.call("GET", "a/.b..c/d...;p=..\\e..%25/%2541?q=..%2F")
    assert resp.status == 200
    assert [r.target for r in w.api.received] == ["/a/.b..c/d...;p=..\\e..%25/%2541?q=..%2F"]


# -- streaming ---------------------------------------------------------------------


async def test_large_upload_streams_with_flat_memory(world):
    """A 10 MB upload reaches the API whole while the process holds a small part of it."""
    w = await world()
    chunk = bytes(range(256)) * 256  # 64 KiB
    count = 160  # 10 MiB
    digest = hashlib.sha256(chunk * count).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk

    tracemalloc.start()
    try:
        resp, answer = await w.call("POST", "upload", data=body())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status == 200, answer
    assert orjson.loads(answer) == {"size": 64 * 1024 * count, "sha256": digest}
    assert peak < 4 * 1024 * 1024, peak


async def test_streamed_download_arrives_whole(world):
    """A 5 MB answer with Content-Length streams back whole, length kept."""
    w = await world()
    size = 5 * 1024 * 1024 + 7
    async with w.http.get(w.proxied(f"download?size={size}"), headers=HEADERS) as resp:
        assert resp.headers["Content-Length"] == str(size)
        received = 0
        async for part in resp.content.iter_any():
            received += len(part)
    assert received == size


async def test_sse_events_arrive_one_by_one(world):
    """Each SSE event reaches the caller before the upstream writes the next one."""
    w = await world()
    loop = asyncio.get_running_loop()
    gaps = []
    async with w.http.get(w.proxied("events"), headers=HEADERS) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        for n in range(5):
            await w.api.sse.go.put(f"e{n}")
            line = await asyncio.wait_for(resp.content.readline(), 5)
            gaps.append(loop.time() - w.api.sse.written[n])
            assert line == f"data: e{n}\n".encode()
            assert await resp.content.readline() == b"\n"
            # The upstream has written exactly the events received: nothing was held back.
            assert len(w.api.sse.written) == n + 1
        await w.api.sse.go.put("end")
        assert await resp.content.read() == b""
    assert all(gap >= 0 for gap in gaps)  # measured, not asserted on speed


# -- redirects, failures ---------------------------------------------------------------


async def test_redirect_is_passed_back_not_followed(world, idp):
    """A 302 to another host comes back as it is; that host receives nothing (no token)."""
    w = await world()
    async with runners() as made:
        elsewhere = TestAPI(idp, AUDIENCE)
        port = await serve(elsewhere.app(), made)
        w.api.redirect_to = f"http://127.0.0.1:{port}/steal"
        async with w.http.get(
            w.proxied("redirect"), headers=HEADERS, allow_redirects=False
        ) as resp:
            assert resp.status == 302
            assert resp.headers["Location"] == w.api.redirect_to
            assert "Token-Sidecar-Error" not in resp.headers
    assert elsewhere.received == []
    assert len(w.api.received) == 1


async def test_upstream_down_is_502(idp, make_service, http):
    """No one listening at base_url: 502 upstream_unreachable, counted and in /status."""
    async with runners() as made:
        port = free_port()
        service = make_service(make_profile(idp), upstreams=[upstream_to(port)])
        await service.get("api")
        token_port = await serve(make_token_app(service, ServerConfig()), made)
        async with http.get(f"http://127.0.0.1:{token_port}/v1/proxy/api/x", headers=HEADERS) as r:
            await error_of(r, await r.read(), 502, "upstream_unreachable")
    status = service.status()["upstreams"]["api"]
    assert status["last_error"]["code"] == "upstream_unreachable"
    assert (
        sample(
            service.metrics,
            "token_sidecar_proxy_requests_total",
            upstream="api",
            code="upstream_unreachable",
        )
        == 1
    )


async def test_slow_headers_are_504(world):
    """No status line within response_timeout: 504 upstream_timeout."""
    w = await world(response_timeout=0.2)
    try:
        resp, body = await w.call("GET", "slow")
        data = await error_of(resp, body, 504, "upstream_timeout")
        assert data["profile"] == "api"  # whose token the request carried
    finally:
        w.api.hold_headers.set()


async def test_stalled_answer_body_is_cut_after_idle_timeout(world):
    """An answer whose body stops for idle_timeout: the caller's connection is cut, not ended."""
    w = await world(idle_timeout=0.2)
    try:
        async with w.http.get(w.proxied("events"), headers=HEADERS) as resp:
            assert resp.status == 200
            await w.api.sse.go.put("e0")
            assert await asyncio.wait_for(resp.content.readline(), 5) == b"data: e0\n"
            with pytest.raises(aiohttp.ClientPayloadError):
                await asyncio.wait_for(resp.content.read(), 5)
    finally:
        await w.api.sse.go.put("end")  # the upstream's handler ends too
    status = w.service.status()["upstreams"]["api"]
    assert status["last_error"]["code"] == "stream_broken"
    assert "idle_timeout" in status["last_error"]["message"]
    assert status["active"] == 0


async def test_answer_body_chunks_restart_the_idle_timeout(world):
    """Chunks closer together than idle_timeout keep an answer going longer than idle_timeout."""
    w = await world(idle_timeout=0.25)
    loop = asyncio.get_running_loop()
    async with w.http.get(w.proxied("events"), headers=HEADERS) as resp:
        started = loop.time()
        for n in range(5):
            await w.api.sse.go.put(f"e{n}")
            assert await asyncio.wait_for(resp.content.readline(), 5) == f"data: e{n}\n".encode()
            assert await resp.content.readline() == b"\n"
            await asyncio.sleep(0.1)
        await w.api.sse.go.put("end")
        assert await resp.content.read() == b""
        assert loop.time() - started > 0.25  # the stream outlived one idle_timeout
    assert w.service.status()["upstreams"]["api"]["last_error"] is None


async def test_stalled_request_body_is_504(world):
    """A streamed request body that stops for idle_timeout: 504 upstream_timeout."""
    w = await world(idle_timeout=0.2, response_timeout=30.0, retry_on_401=False)
    stall = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 100
        await stall.wait()

    try:
        resp, answer = await w.call("POST", "upload", data=body())
        data = await error_of(resp, answer, 504, "upstream_timeout")
        assert "request body made no progress" in data["message"]
    finally:
        stall.set()


async def test_response_timeout_starts_when_the_request_body_ends(world):
    """A body streamed for longer than response_timeout, never idle: the answer passes."""
    w = await world(idle_timeout=0.25, response_timeout=0.15, retry_on_401=False)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 100
            await asyncio.sleep(0.1)

    resp, answer = await w.call("POST", "upload", data=body())
    assert resp.status == 200, answer
    assert orjson.loads(answer)["size"] == 400


async def test_unasked_protocol_switch_is_502(world):
    """An upstream that answers 101 to a plain request gets no tunnel: 502, at once."""
    w = await world()
    try:
        resp, body = await asyncio.wait_for(w.call("GET", "switch"), 2.0)
        data = await error_of(resp, body, 502, "upstream_unreachable")
        assert "switched protocols" in data["message"]
        assert w.service.status()["upstreams"]["api"]["active"] == 0
    finally:
        w.api.release.set()


async def test_caller_going_away_ends_the_upstream_request(world):
    """A caller that disconnects while the upstream thinks: the request stops at once.

    Left running it would hold a pooled upstream connection until
    response_timeout, and a few hundred such callers would fill the pool.
    """
    w = await world(response_timeout=300.0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", int(URL(w.url).port or 0))
        writer.write(
            b"GET /v1/proxy/api/park/x HTTP/1.1\r\nHost: 127.0.0.1\r\nToken-Sidecar: 1\r\n\r\n"
        )
        await asyncio.wait_for(w.api.parked.wait(), 2.0)
        assert w.service.status()["upstreams"]["api"]["active"] == 1  # the positive control
        writer.close()
        await until(lambda: w.service.status()["upstreams"]["api"]["active"] == 0)
        assert not await reader.read()
    finally:
        w.api.release.set()


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait (bounded) until ``condition()`` holds, checking every few milliseconds."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - a gauge, with no event to wait on
            await asyncio.sleep(0.005)


async def test_reset_mid_body_cuts_the_callers_connection(world):
    """An upstream that dies mid-body: the caller sees an incomplete body, not a short whole one."""
    w = await world()
    async with w.http.get(w.proxied("reset"), headers=HEADERS) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    status = w.service.status()["upstreams"]["api"]
    assert status["last_error"]["code"] == "stream_broken"
    assert status["active"] == 0


async def test_rebinding_to_loopback_is_refused(world):
    """A name resolving to 127.0.0.1 is refused at connect time unless allow_private."""
    table = {"api.rebind.test": "127.0.0.1"}
    denied = await world(
        resolver=lambda: StaticResolver(table),
        allow_private=False,
        base_url="http://api.rebind.test:{port}",
    )
    resp, body = await denied.call("GET", "tool")
    await error_of(resp, body, 502, "upstream_denied")
    assert denied.api.received == []
    allowed = await world(
        resolver=lambda: StaticResolver(table), base_url="http://api.rebind.test:{port}"
    )
    resp, _ = await allowed.call("GET", "tool")
    assert resp.status == 200  # positive control: the same name, allow_private = true
    assert len(allowed.api.received) == 1


# -- tokens: fail closed, stale, 401 -------------------------------------------------


async def test_stale_token_is_sent_and_flagged(world, idp, clock):
    """IdP down past the refresh point: the stale token is forwarded, the answer says so."""
    w = await world()
    before = w.current
    idp.faults.status = 503
    refresher = w.service.refresher_for("api")
    assert refresher.token is not None
    await run_for(clock, w.service, refresher.token.refresh_at - clock.monotonic() + 1)
    resp, _ = await w.call("GET", "tool")
    assert resp.status == 200
    assert resp.headers["Token-Sidecar-Stale"] == "1"
    assert w.api.received[-1].token == before


async def test_no_token_fails_closed(idp, make_service, http, clock):
    """IdP down and no token: 503 token_unavailable with Retry-After; nothing is forwarded."""
    async with runners() as made:
        api = TestAPI(idp, AUDIENCE)
        port = await serve(api.app(), made)
        idp.faults.status = 503
        service = make_service(make_profile(idp), upstreams=[upstream_to(port)])
        token_port = await serve(make_token_app(service, ServerConfig()), made)
        call = asyncio.ensure_future(
            http.get(f"http://127.0.0.1:{token_port}/v1/proxy/api/x", headers=HEADERS)
        )
        await run_for(clock, service, 11)
        async with await call as resp:
            data = await error_of(resp, await resp.read(), 503, "token_unavailable")
            assert int(resp.headers["Retry-After"]) >= 1
    assert data["profile"] == "api"
    assert api.received == []


async def test_401_once_is_retried_with_a_new_token(world, idp):
    """A 401 for the current token: one invalidate, one more IdP token, and the caller sees 200."""
    w = await world()
    first = w.current
    w.api.rejected.add(first)
    issued = idp.issued
    resp, _ = await w.call("POST", "tool", json={"x": 1})
    assert resp.status == 200
    assert resp.headers["Token-Sidecar-Retried"] == "1"
    assert idp.issued == issued + 1
    assert [r.token for r in w.api.received] == [first, w.current]
    assert w.current != first
    metrics = w.service.metrics
    assert (
        sample(metrics, "token_sidecar_proxy_retries_total", upstream="api", result="retried") == 1
    )
    assert (
        sample(metrics, "token_sidecar_invalidations_total", profile="api", result="refreshed") == 1
    )


async def test_every_answer_is_given_back(world):
    """Answers passed on, retried after a 401 or cut off leave nothing behind in the client."""
    w = await world()
    client = w.service.upstreams.client("api")
    assert client is not None
    w.api.rejected.add(w.current)  # the first answer is a 401, then the retry's 200
    resp, _ = await w.call("GET", "x")
    assert resp.headers["Token-Sidecar-Retried"] == "1"
    async with w.http.get(w.proxied("reset"), headers=HEADERS) as cut:
        with pytest.raises(aiohttp.ClientPayloadError):
            await cut.read()
    async with w.http.get(w.proxied("events"), headers=HEADERS) as stream:
        await w.api.sse.go.put("e0")
        assert await asyncio.wait_for(stream.content.readline(), 5) == b"data: e0\n"
        assert client.answers == 1  # the positive control: a stream in progress
        await w.api.sse.go.put("end")
        await stream.read()
    await until(lambda: client.active == 0)
    assert client.answers == 0


async def test_401_on_a_streamed_body_is_passed_back(world, idp):
    """A body over retry_body_limit is not replayable: the 401 comes back, the token is reported."""
    w = await world(retry_body_limit=1024)
    first = w.current
    w.api.rejected.add(first)
    issued = idp.issued
    resp, _ = await w.call("POST", "upload", data=b"x" * 4096)
    assert resp.status == 401
    assert "Token-Sidecar-Retried" not in resp.headers
    assert len(w.api.received) == 1
    metrics = w.service.metrics
    assert (
        sample(
            metrics, "token_sidecar_proxy_retries_total", upstream="api", result="not_replayable"
        )
        == 1
    )
    await w.service.get("api")  # waits for the replacement the report asked for
    assert idp.issued == issued + 1  # reported: the next caller gets a new token
    resp, _ = await w.call("POST", "upload", data=b"x" * 4096)
    assert resp.status == 200


async def test_401_without_retry_on_401_is_passed_back(world, idp):
    """retry_on_401 = false: the 401 comes back and nothing is invalidated."""
    w = await world(retry_on_401=False)
    w.api.rejected.add(w.current)
    issued = idp.issued
    resp, _ = await w.call("GET", "tool")
    assert resp.status == 401
    assert idp.issued == issued
    assert (
        sample(
            w.service.metrics,
            "token_sidecar_proxy_retries_total",
            upstream="api",
            result="throttled",
        )
        == 0
    )


async def test_401_for_a_rotated_token_retries_without_invalidating(world, idp):
    """A 401 for a token already replaced is retried with the current one, no new invalidate."""
    w = await world()
    first = w.current
    call = asyncio.ensure_future(w.call("GET", "park/x"))
    await asyncio.wait_for(w.api.parked.wait(), 5)
    refresher = w.service.refresher_for("api")
    await refresher.invalidate(refresher.token.fingerprint)  # another caller's report
    w.api.rejected.add(first)
    issued = idp.issued
    invalidations = sample(
        w.service.metrics, "token_sidecar_invalidations_total", profile="api", result="refreshed"
    )
    w.api.release.set()
    resp, _ = await asyncio.wait_for(call, 5)
    assert resp.status == 200
    assert resp.headers["Token-Sidecar-Retried"] == "1"
    assert idp.issued == issued
    assert (
        sample(
            w.service.metrics,
            "token_sidecar_invalidations_total",
            profile="api",
            result="refreshed",
        )
        == invalidations
    )
    assert [r.token for r in w.api.received] == [first, w.current]


async def test_401_storm_forces_at_most_one_refresh(world, idp):
    """50 callers all answered 401: one forced refresh; again within the throttle window: none."""
    w = await world()
    w.api.always_401 = True
    issued = idp.issued
    answers = await asyncio.gather(*(w.call("GET", "tool") for _ in range(50)))
    assert [resp.status for resp, _ in answers] == [401] * 50
    assert idp.issued == issued + 1
    answers = await asyncio.gather(*(w.call("GET", "tool") for _ in range(50)))
    assert [resp.status for resp, _ in answers] == [401] * 50
    assert idp.issued == issued + 1
    metrics = w.service.metrics
    assert (
        sample(metrics, "token_sidecar_proxy_retries_total", upstream="api", result="throttled")
        == 50
    )
    assert (
        sample(metrics, "token_sidecar_proxy_retries_total", upstream="api", result="retried") == 50
    )


async def test_403_is_never_retried(world, idp):
    """Only 401 means 'get a new token': a 403 passes back untouched, nothing invalidated."""
    w = await world()
    w.api.always_status = 403
    issued = idp.issued
    resp, _ = await w.call("GET", "tool")
    assert resp.status == 403
    assert "Token-Sidecar-Retried" not in resp.headers
    assert idp.issued == issued
    assert len(w.api.received) == 1
