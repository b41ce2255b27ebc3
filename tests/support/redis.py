"""Real Redis for the fleet tests: the machine's at 127.0.0.1:6379, or a private server.

A private server may speak TLS only (a test CA, :func:`make_tls_files`) and
require a password, with the sidecar's ACL user restricted exactly as
docs/deploy.md tells operators to restrict it (:data:`SIDECAR_ACL`): what a
managed Redis looks like. Tests that flush a database do it there, never on
the shared server. Fleet tests never skip under ``CI=true``: a missing Redis
fails them there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from sidecar.config import CacheConfig
from tests.support.upstream import TLSFiles, make_tls_files

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


#: The ACL rules docs/deploy.md gives the sidecar's Redis user; NS is the namespace.
#: Keys and channels under the namespace only, and only the commands fleet mode sends.
SIDECAR_ACL = (
    "~NS:* &NS:written:* +get +set +del +eval +evalsha +script|load "
    "+publish +psubscribe +punsubscribe +ping +pttl +pexpire"
)


@dataclass(frozen=True)
class RedisUser:
    """An ACL user of a private server, allowed what :data:`SIDECAR_ACL` allows in ``namespace``."""

    name: str
    password: str
    namespace: str

    def acl_line(self) -> str:
        return f"user {self.name} on >{self.password} {SIDECAR_ACL.replace('NS', self.namespace)}"


class RedisServer:
    """A private ``redis-server`` on a free port, with no persistence: stop means empty.

    With ``tls`` it listens for TLS only (``rediss://``); with ``admin_password``
    the ``default`` user needs it; ``user`` adds the sidecar's ACL user;
    ``client_certs`` makes the server require a client certificate.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        tls: TLSFiles | None = None,
        admin_password: str | None = None,
        user: RedisUser | None = None,
        client_certs: bool = False,
    ) -> None:
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.directory = directory
        self.tls = tls
        self.admin_password = admin_password
        self.user = user
        self.client_certs = client_certs

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def admin(self, **options: Any) -> aioredis.Redis:
        """A client as the ``default`` user (the test's own, for FLUSHALL and inspection)."""
        if self.tls is not None:
            options |= {"ssl_ca_certs": str(self.tls.ca)}
            if self.client_certs:
                options |= {
                    "ssl_certfile": str(self.tls.client_cert),
                    "ssl_keyfile": str(self.tls.client_key),
                }
        return aioredis.Redis.from_url(self.url, password=self.admin_password, **options)

    def _config(self) -> list[str]:
        """Arguments for redis-server: a config file when there is more than a port."""
        if self.tls is None and self.admin_password is None and self.user is None:
            return [
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
        if self.directory is None:
            raise ValueError("a TLS or password server needs a directory for its config")
        lines = ["bind 127.0.0.1", 'save ""', "appendonly no"]
        if self.tls is not None:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {self.tls.server_cert}",
                f"tls-key-file {self.tls.server_key}",
                f"tls-ca-cert-file {self.tls.ca}",
                f"tls-auth-clients {'yes' if self.client_certs else 'no'}",
            ]
        else:
            lines.append(f"port {self.port}")
        if self.admin_password is not None:
            lines.append(f"requirepass {self.admin_password}")
        if self.user is not None:
            lines.append(self.user.acl_line())
        path = self.directory / f"redis-{self.port}.conf"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return [str(path)]

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (run scripts/install-tools)")
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            *self._config(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = self.admin(socket_connect_timeout=0.2)
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


# -- a managed-style Redis: TLS only, a password, the sidecar's ACL user -----------------

#: The sidecar's ACL user on a managed-style server.
SIDECAR_USER = "token-sidecar"


@dataclass
class ManagedRedis:
    """A private TLS-only Redis with passwords, and the files a sidecar is given to reach it."""

    server: RedisServer
    tls: TLSFiles
    namespace: str
    password: str
    password_file: Path
    directory: Path

    def cache_config(self, **changes: Any) -> CacheConfig:
        """The ``[cache]`` a sidecar of this fleet runs with; ``changes`` override keys."""
        config = CacheConfig(
            backend="redis",
            url=self.server.url,
            namespace=self.namespace,
            username=SIDECAR_USER,
            password_file=self.password_file,
            ssl_ca_file=self.tls.ca,
        )
        return dataclasses.replace(config, **changes)

    def cache_toml(self, **changes: Any) -> str:
        """:meth:`cache_config` as a ``[cache]`` TOML table."""
        config = self.cache_config(**changes)
        lines = ["[cache]"]
        for field in dataclasses.fields(config):
            value = getattr(config, field.name)
            if value is not None:
                lines.append(f'{field.name} = "{value}"')
        return "\n".join(lines) + "\n"

    async def keys(self) -> list[bytes]:
        """The keys under the fleet's namespace, read as the admin."""
        admin = self.server.admin()
        try:
            return [k async for k in admin.scan_iter(match=f"{self.namespace}:*")]
        finally:
            await admin.aclose()


@contextlib.asynccontextmanager
async def managed_redis(directory: Path) -> AsyncIterator[ManagedRedis]:
    """Start a :class:`ManagedRedis` with fresh random passwords in ``directory``; stop it after.

    The passwords contain ``LEAKCANARY``; register them with the leak check.
    """
    pki = directory / "pki"
    pki.mkdir()
    tls = make_tls_files(pki)
    namespace = unique_namespace()
    password = f"redis-pw-LEAKCANARY-{os.urandom(6).hex()}"
    password_file = directory / "redis-password"
    password_file.write_text(password + "\n")
    server = RedisServer(
        directory,
        tls=tls,
        admin_password=f"admin-pw-LEAKCANARY-{os.urandom(6).hex()}",
        user=RedisUser(SIDECAR_USER, password, namespace),
    )
    await server.start()
    try:
        yield ManagedRedis(server, tls, namespace, password, password_file, directory)
    finally:
        await server.stop()
