"""The token client's blocking path (get_token_sync, token_sidecar_client._blocking)."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.clientstack import served
from token_sidecar_client import SidecarError, TokenClient
from token_sidecar_client._blocking import BlockingConnection


async def test_sync_calls_share_the_cache_and_one_connection(stack, clock):
    """Many sync calls cost one sidecar request; every request uses one kept-alive connection."""
    async with TokenClient(stack["url"], profile="api", clock=clock) as client:
        tokens = await asyncio.to_thread(lambda: [client.get_token_sync() for _ in range(5)])
        assert all(token is tokens[0] for token in tokens)
        assert served(stack["service"]) == 1
        replaced = await asyncio.to_thread(client.invalidate_sync, tokens[0])
        assert replaced.access_token != tokens[0].access_token
        assert client.cached() is replaced
        assert await client.get_token() is replaced  # the async path reads the same cache
        assert len(stack["peers"]) == 2
        assert stack["peers"][0] == stack["peers"][1]
    assert not client._connection.is_open


async def test_sync_path_over_the_unix_socket(stack, clock):
    """The blocking path reaches the sidecar over its Unix socket too."""
    async with TokenClient(socket=stack["socket"], profile="api", clock=clock) as client:
        token = await asyncio.to_thread(client.get_token_sync)
        assert token.profile == "api"
        with pytest.raises(SidecarError) as info:
            await asyncio.to_thread(client.get_token_sync, "nope")
    assert (info.value.code, info.value.status) == ("unknown_profile", 404)


@pytest.mark.parametrize("kind", ["url", "socket"])
def test_sync_path_maps_an_unreachable_sidecar(kind, tmp_path):
    """A sidecar that cannot be reached is SidecarError 'unreachable', as on the async path."""
    where = "http://127.0.0.1:9" if kind == "url" else str(tmp_path / "absent.sock")
    client = (
        TokenClient(where, profile="api")
        if kind == "url"
        else TokenClient(socket=where, profile="api")
    )
    with pytest.raises(SidecarError) as info:
        client.get_token_sync()
    assert (info.value.code, info.value.status, info.value.retryable) == ("unreachable", 0, True)
    assert str(info.value) == f"unreachable: cannot reach the sidecar at {where}"
    assert isinstance(info.value.__cause__, OSError)
    assert not client._connection.is_open


class OneShotServer:
    """An HTTP server that answers at most one request per connection, then hangs up."""

    def __init__(self) -> None:
        self.answer = True
        self.headers = b"Content-Length: 2\r\n"
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        if self.answer:
            writer.write(b"HTTP/1.1 200 OK\r\n" + self.headers + b"\r\n{}")
            await writer.drain()
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def one_shot() -> AsyncIterator[tuple[OneShotServer, str]]:
    server = OneShotServer()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    host, port = listener.sockets[0].getsockname()[:2]
    async with listener:
        yield server, f"http://{host}:{port}"


@pytest.fixture
def connections() -> Iterator[list[BlockingConnection]]:
    made: list[BlockingConnection] = []
    yield made
    for connection in made:
        connection.close()


async def test_a_connection_the_peer_closed_is_replaced_once(one_shot, connections):
    """A kept-alive connection the peer has closed is replaced, and the request sent again."""
    server, url = one_shot
    connection = BlockingConnection(url, None, timeout=5, headers={})
    connections.append(connection)

    def two_requests() -> list[int]:
        return [connection.request("GET", f"{url}/x").status for _ in range(2)]

    assert await asyncio.to_thread(two_requests) == [200, 200]
    assert server.connections == 2


async def test_a_failure_on_a_fresh_connection_is_not_repeated(one_shot, connections):
    """A fresh connection that breaks is an error at once, not a second attempt."""
    server, url = one_shot
    server.answer = False
    connection = BlockingConnection(url, None, timeout=5, headers={})
    connections.append(connection)
    with pytest.raises(http.client.RemoteDisconnected):
        await asyncio.to_thread(connection.request, "GET", f"{url}/x")
    assert server.connections == 1
    assert not connection.is_open


async def test_a_connection_the_peer_announces_closing_is_dropped(one_shot, connections):
    """After an answer with Connection: close, no connection is held; the next opens anew."""
    server, url = one_shot
    server.headers += b"Connection: close\r\n"
    connection = BlockingConnection(url, None, timeout=5, headers={})
    connections.append(connection)
    answer = await asyncio.to_thread(connection.request, "GET", f"{url}/x")
    assert (answer.status, answer.body, connection.is_open) == (200, b"{}", False)
    assert (await asyncio.to_thread(connection.request, "GET", f"{url}/x")).status == 200
    assert server.connections == 2


async def test_sync_context_manager_closes_the_blocking_connection(stack, clock):
    """``with TokenClient()`` closes its connection; a client the async path used needs aclose."""

    def sync_use() -> TokenClient:
        with TokenClient(stack["url"], profile="api", clock=clock) as client:
            client.get_token_sync()
            assert client._connection.is_open
        return client

    closed = await asyncio.to_thread(sync_use)
    assert not closed._connection.is_open
    assert closed.cached() is None
    async with TokenClient(stack["url"], profile="api", clock=clock) as client:
        await client.get_token()
        with pytest.raises(RuntimeError, match="close it with aclose"):
            client.close()
