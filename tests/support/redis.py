"""Real Redis for the fleet tests: the machine's at 127.0.0.1:6379, or a private server.

Fleet tests never skip under ``CI=true``: a missing Redis fails them there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

SHARED_URL = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique_namespace() -> str:
    return f"ts-test-{uuid.uuid4().hex[:12]}"


async def require_redis(url: str = SHARED_URL) -> None:
    """Fail (under CI) or skip (elsewhere) when no Redis answers at ``url``."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        message = f"fleet tests need Redis at {url} (scripts/install-tools): {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    finally:
        await client.aclose()


async def delete_namespace(url: str, namespace: str) -> None:
    client = aioredis.Redis.from_url(url, socket_timeout=2.0)
    try:
        keys = [k async for k in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def namespace_keys(url: str, namespace: str) -> dict[bytes, bytes]:
    client = aioredis.Redis.from_url(url, socket_timeout=2.0)
    try:
        keys = [k async for k in client.scan_iter(match=f"{namespace}:*")]
        values = await client.mget(keys) if keys else []
        return {k: v for k, v in zip(keys, values, strict=True) if isinstance(v, bytes)}
    finally:
        await client.aclose()


class RedisServer:
    """A private ``redis-server`` on a free port, with no persistence: stop means empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (run scripts/install-tools)")
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            for _ in range(100):  # bounded: at most about 5 s for the server to listen
                try:
                    await client.ping()
                except (OSError, aioredis.RedisError):
                    await asyncio.sleep(0.05)
                else:
                    return
        finally:
            await client.aclose()
        pytest.fail("redis-server did not start")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None


async def private_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
