"""Listeners under hostile neighbours: idle, half-sent and malformed connections cost little.

Each test runs a real ``serve`` subprocess against the development IdP on
loopback and opens raw TCP connections to it. Waits are bounded and end on a
condition (an answer, or the server closing the connection), never on a sleep.
"""

from __future__ import annotations

import asyncio
import resource
import time

import orjson
import pytest

from sidecar.listeners import ListenerLimits, ThrottledLog
from tests.support.e2e import profile_toml

pytestmark = pytest.mark.slow

#: A token-shaped value a careless client puts in a query; it must never come back.
CANARY = "eyJhbGciOiJub25lIn0.CANARY-QUERY-TOKEN-4f2a.sig"
GOOD_HEAD = b"GET /v1/token/api HTTP/1.1\r\nHost: 127.0.0.1\r\nToken-Sidecar: 1\r\n\r\n"
MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _canary_is_a_secret(leaks) -> None:
    """The canary counts as a secret for every leak scan of this module."""
    leaks.add(CANARY)


async def exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send ``data`` on a new connection and read until the server closes it (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 3.0) -> bool:
    """Whether the server closes the connection within ``timeout`` seconds."""
    try:
        await asyncio.wait_for(reader.read(), timeout)
    except TimeoutError:
        return False
    except ConnectionError:  # closed with unread data: a reset
        return True
    return True


async def served_within(port: int, head: bytes, seconds: float) -> bytes:
    """The answer head of one well-behaved request, which must come within ``seconds``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), seconds)
    finally:
        writer.close()


async def open_many(port: int, count: int, first_bytes: bytes) -> list[asyncio.StreamWriter]:
    """``count`` connections (in batches) that send ``first_bytes`` and then nothing."""
    writers: list[asyncio.StreamWriter] = []
    for start in range(0, count, 200):
        batch = [
            asyncio.open_connection("127.0.0.1", port)
            for _ in range(start, min(count, start + 200))
        ]
        for _reader, writer in await asyncio.gather(*batch):
            if first_bytes:
                writer.write(first_bytes)
            writers.append(writer)
    return writers


def test_limits_fit_the_descriptor_limit():
    """max_connections is lowered to what the descriptor limit can hold, never raised."""
    assert ListenerLimits(1024).within_descriptors(1024, 3).max_connections == 192
    assert ListenerLimits(1024).within_descriptors(1_048_576, 3).max_connections == 1024
    assert ListenerLimits(10).within_descriptors(20, 3).max_connections == 1


def test_throttled_log_reports_what_it_left_out(caplog):
    """An event is written at most once a second, with the count of the ones left out."""
    now = [0.0]
    throttled = ThrottledLog(
        __import__("logging").getLogger("sidecar.test"), "x.event", now=lambda: now[0]
    )
    with caplog.at_level("WARNING", logger="sidecar.test"):
        for t in (0.0, 0.1, 0.5, 0.99, 1.0, 1.5, 2.2):
            now[0] = t
            throttled.emit({"n": t})
    assert [(r.n, r.suppressed) for r in caplog.records] == [(0.0, 0), (1.0, 3), (2.2, 1)]


async def test_caller_served_while_2000_connections_idle_or_half_sent(real_idp, sidecar_factory):
    """A caller is served within 1 s while 2,000 idle or half-sent connections hold each port."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 6000:
        pytest.skip("the test process needs 4,000 descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sidecar = await sidecar_factory(profile_toml(real_idp), nofile=1024)
    await sidecar.wait_event("token.refreshed")
    assert (await sidecar.wait_event("server.descriptor_limit"))["soft_before"] == 1024
    held: list[asyncio.StreamWriter] = []
    deadline = time.monotonic() + 60
    try:
        for port in (sidecar.ops_port, sidecar.port):
            held += await open_many(port, 1000, b"")
            held += await open_many(
                port, 1000, b"GET /v1/token/api HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            )
        token = await served_within(sidecar.port, GOOD_HEAD, 1.0)
        assert token.startswith(b"HTTP/1.1 200 ")
        live = await served_within(sidecar.ops_port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n", 1.0)
        assert live.startswith(b"HTTP/1.1 200 ")
        assert sidecar.rss_bytes() < 128 * MiB
        assert time.monotonic() < deadline
    finally:
        for writer in held:
            writer.close()
    errors = [e for e in sidecar.events if e.get("level") == "error"]
    assert errors == []


async def test_oversized_heads_are_cut_off(real_idp, sidecar_factory):
    """Forty requests with megabyte heads are closed early and memory stays bounded."""
    sidecar = await sidecar_factory(profile_toml(real_idp))
    header = b"X-Pad: " + b"a" * 8000 + b"\r\n"
    closed = 0
    for _ in range(40):
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.ops_port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(120):
                writer.write(header)
                await writer.drain()
        except ConnectionError:
            pass
        closed += await closed_by_server(reader)
        writer.close()
    assert closed == 40
    assert sidecar.rss_bytes() < 128 * MiB
    live = await served_within(sidecar.ops_port, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n", 1.0)
    assert live.startswith(b"HTTP/1.1 200 ")


async def test_head_deadline_and_keepalive(real_idp, sidecar_factory):
    """A head late past header_timeout is closed; a served connection idles keepalive_timeout."""
    sidecar = await sidecar_factory(
        profile_toml(real_idp), server_extra='header_timeout = "300ms"\nkeepalive_timeout = "600ms"'
    )
    await sidecar.wait_event("token.refreshed")
    # A head dripped byte by byte: activity does not extend the deadline.
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    started = time.monotonic()
    for byte in b"GET /v1/token/api HTTP/1.1\r\nHost: 1":
        if reader.at_eof() or writer.is_closing():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.02)
        if time.monotonic() - started > 0.6:
            break
    assert await closed_by_server(reader, 2.0)
    assert time.monotonic() - started < 1.5
    writer.close()
    # Positive control: a complete head in time is served, then the idle connection lasts
    # about keepalive_timeout, past header_timeout.
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(GOOD_HEAD)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
    assert head.startswith(b"HTTP/1.1 200 ")
    answered = time.monotonic()
    assert await closed_by_server(reader, 3.0)
    assert 0.45 < time.monotonic() - answered < 2.0
    writer.close()


async def test_next_head_on_a_kept_alive_connection_has_a_deadline(real_idp, sidecar_factory):
    """After an answer, a next head that arrives in pieces is closed past header_timeout too."""
    sidecar = await sidecar_factory(
        profile_toml(real_idp), server_extra='header_timeout = "300ms"\nkeepalive_timeout = "30s"'
    )
    await sidecar.wait_event("token.refreshed")
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
    writer.write(GOOD_HEAD)  # a whole head in one piece: served (the positive control)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
    assert head.startswith(b"HTTP/1.1 200 ")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await asyncio.wait_for(reader.readexactly(length), 2.0)
    started = time.monotonic()
    writer.write(b"GET /v1/token/api HTTP/1.1\r\n")  # the first piece of the next head
    assert await closed_by_server(reader, 2.0)
    assert time.monotonic() - started < 1.5  # header_timeout, not keepalive_timeout
    writer.close()


async def test_oldest_idle_connection_makes_room(real_idp, sidecar_factory):
    """At max_connections the oldest idle connection makes room; the younger ones stay."""
    sidecar = await sidecar_factory(profile_toml(real_idp), server_extra="max_connections = 3")
    await sidecar.wait_event("token.refreshed")
    first = await asyncio.open_connection("127.0.0.1", sidecar.port)
    others = [await asyncio.open_connection("127.0.0.1", sidecar.port) for _ in range(2)]
    # The fourth connection pushes out the first, not the two younger ones.
    newest = await served_within(sidecar.port, GOOD_HEAD, 1.0)
    assert newest.startswith(b"HTTP/1.1 200 ")
    assert await closed_by_server(first[0], 2.0)
    for reader, _ in others:
        assert not await closed_by_server(reader, 0.2)
    for _, writer in [first, *others]:
        writer.close()


async def trickling(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose request is in progress with most of its body still to come."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/token/api/invalidate HTTP/1.1\r\nHost: 127.0.0.1\r\nToken-Sidecar: 1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    # The interim answer comes once the request is handed to the app: it is in progress.
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
    assert interim.startswith(b"HTTP/1.1 100 ")
    writer.write(b'{"token_fingerprint": "')
    return reader, writer


async def test_trickled_bodies_make_room_after_idle_connections(real_idp, sidecar_factory):
    """At max_connections an idle connection goes first, then the oldest trickled body."""
    sidecar = await sidecar_factory(profile_toml(real_idp), server_extra="max_connections = 3")
    await sidecar.wait_event("token.refreshed")
    oldest_trickle = await trickling(sidecar.port)
    idle = await asyncio.open_connection("127.0.0.1", sidecar.port)
    young_trickle = await trickling(sidecar.port)
    # The fourth connection pushes out the idle one, although a trickle is older.
    assert (await served_within(sidecar.port, GOOD_HEAD, 1.0)).startswith(b"HTTP/1.1 200 ")
    assert await closed_by_server(idle[0], 2.0)
    assert not await closed_by_server(oldest_trickle[0], 0.2)
    # With only trickles left, the oldest one makes room: a slow upload
    # cannot keep callers out; the younger ones stay.
    third_trickle = await trickling(sidecar.port)
    assert (await served_within(sidecar.port, GOOD_HEAD, 1.0)).startswith(b"HTTP/1.1 200 ")
    assert await closed_by_server(oldest_trickle[0], 2.0)
    for reader, _ in (young_trickle, third_trickle):
        assert not await closed_by_server(reader, 0.2)
    for _, writer in (oldest_trickle, idle, young_trickle, third_trickle):
        writer.close()


async def test_malformed_request_is_answered_without_echo(real_idp, sidecar_factory):
    """A malformed request gets the JSON 400 and one throttled warning, never its bytes."""
    sidecar = await sidecar_factory(profile_toml(real_idp))
    await sidecar.wait_event("token.refreshed")
    bad = (
        b"GET /v1/token/api?access_token=" + CANARY.encode() + b"\x01 HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\nToken-Sidecar: 1\r\n\r\n"
    )
    answers = await asyncio.gather(*(exchange(sidecar.port, bad) for _ in range(50)))
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 "))
        assert b"application/json" in head
        assert b"Token-Sidecar-Error: bad_request" in head  # not the answer of an upstream
        assert orjson.loads(body)["error"] == "bad_request"
        assert CANARY.encode() not in answer
    logged = await sidecar.wait_event("http.bad_request")
    assert logged["level"] == "warning"
    assert (logged["listener"], logged["status"]) == ("token", 400)
    # Positive control: the log path was written (and is scanned for the canary at teardown).
    assert 1 <= sidecar.count("http.bad_request") <= 2
    assert CANARY.encode() not in bytes(sidecar.stderr)


@pytest.mark.parametrize(
    ("request_line", "guard", "status", "code"),
    [
        (b"CONNECT 127.0.0.1:1 HTTP/1.1", False, 400, "missing_header"),
        (b"CONNECT 127.0.0.1:1 HTTP/1.1", True, 403, "forbidden"),
        (b"OPTIONS * HTTP/1.1", False, 400, "missing_header"),
        (b"OPTIONS * HTTP/1.1", True, 403, "forbidden"),
        (b"GET http://127.0.0.1:1 HTTP/1.1", True, 403, "forbidden"),
        (b"GET /nowhere HTTP/1.1", True, 404, "not_found"),
        (b"DELETE /v1/token/api HTTP/1.1", True, 405, "method_not_allowed"),
    ],
)
async def test_every_token_port_answer_is_json(
    real_idp, sidecar_factory, request_line, guard, status, code
):
    """Targets the router cannot place pass the guards first and get DESIGN's JSON errors."""
    sidecar = await sidecar_factory(profile_toml(real_idp))
    head = request_line + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += b"Token-Sidecar: 1\r\n\r\n" if guard else b"\r\n"
    answer = await exchange(sidecar.port, head)
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    assert head_bytes.split(b" ", 2)[1] == str(status).encode()
    assert b"Content-Type: application/json" in head_bytes
    assert b"Cache-Control: no-store" in head_bytes
    assert orjson.loads(body)["error"] == code
