"""Shared fixtures: a virtual clock, the development IdP on loopback, and a leak scan.

Every test runs with a log handler that records everything the ``sidecar``
loggers emit, formatted exactly as production formats it. At teardown the
records are scanned for every secret and token the test's IdP knows about:
no test may pass while a secret reached a log line.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from sidecar.config import Config, ProfileConfig, UpstreamConfig
from sidecar.devidp import JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT, DevClient, DevIdP
from sidecar.fleet import RedisCache, TokenCodec
from sidecar.logs import JSONFormatter
from sidecar.metrics import Metrics
from sidecar.service import TokenService
from sidecar.testing import FakeClock, SidecarProcess
from tests.support.builders import (
    AUDIENCE,
    CLIENT_ID,
    CLIENT_SECRET,
    MCP_AUDIENCE,
    make_profile,
)
from tests.support.clientstack import client_stack
from tests.support.e2e import e2e_idp
from tests.support.oidc import ExchangeIdP, require_node, start_exchange_idp
from tests.support.redis import (
    SHARED_URL,
    ManagedRedis,
    delete_namespace,
    managed_redis,
    require_redis,
    unique_namespace,
)


class LeakRegistry:
    """Every secret value a test handled; the autouse leak check looks for each."""

    def __init__(self) -> None:
        self.values: set[str] = {CLIENT_SECRET}
        self.idps: list[DevIdP] = []

    def add(self, value: str) -> None:
        self.values.add(value)

    def all_values(self) -> set[str]:
        values = set(self.values)
        for idp in self.idps:
            values.update(idp.issued_tokens)
            values.update(idp.user_tokens)  # the subject tokens of exchanges
            values.update(c.client_secret for c in idp.clients.values() if c.client_secret)
        return values


@pytest.fixture
def leaks() -> LeakRegistry:
    return LeakRegistry()


@pytest.fixture(autouse=True)
def _no_secret_in_logs(leaks: LeakRegistry) -> Iterator[io.StringIO]:
    """Capture every sidecar log line as JSON and fail if any holds a secret or token."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logger = logging.getLogger("sidecar")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    output = stream.getvalue()
    leaked = [v for v in leaks.all_values() if v and v in output]
    assert not leaked, f"{len(leaked)} secret value(s) reached the logs"


@pytest.fixture
def log_output(_no_secret_in_logs: io.StringIO) -> io.StringIO:
    """The JSON log lines the test produced so far."""
    return _no_secret_in_logs


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def idp(clock: FakeClock, leaks: LeakRegistry) -> AsyncIterator[DevIdP]:
    """The development IdP on an ephemeral loopback port, sharing the test's clock.

    Its client may also exchange users' tokens issued for :data:`MCP_AUDIENCE`.
    """
    dev = DevIdP(clock=clock, audience=AUDIENCE)
    dev.add_client(
        DevClient(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            audiences={AUDIENCE: ("read:tools", "write:tools")},
            grant_types=("client_credentials", TOKEN_EXCHANGE_GRANT, JWT_BEARER_GRANT),
            subject_audiences=(MCP_AUDIENCE,),
        )
    )
    await dev.start()
    leaks.idps.append(dev)
    try:
        yield dev
    finally:
        dev.faults.hang = False
        dev.release_hang()
        await dev.stop()


class ServiceFactory(Protocol):
    def __call__(
        self,
        *profiles: ProfileConfig,
        seed: int = ...,
        upstreams: Sequence[UpstreamConfig] = ...,
        **kwargs: Any,
    ) -> TokenService: ...


@pytest.fixture
async def make_service(
    session: aiohttp.ClientSession, clock: FakeClock, metrics: Metrics
) -> AsyncIterator[ServiceFactory]:
    """Build started TokenServices on the fake clock; all are closed at teardown."""
    made: list[TokenService] = []

    def factory(
        *profiles: ProfileConfig,
        seed: int = 1,
        upstreams: Sequence[UpstreamConfig] = (),
        **kwargs: Any,
    ) -> TokenService:
        config = Config(
            profiles=MappingProxyType({p.name: p for p in profiles}),
            upstreams=MappingProxyType({u.name: u for u in upstreams}),
        )
        kwargs.setdefault("metrics", metrics)
        service = TokenService(
            config, session, clock=clock, rng=random.Random(seed), environ={}, **kwargs
        )
        service.start()
        made.append(service)
        return service

    yield factory
    for service in made:
        await service.aclose()


class SidecarFactory(Protocol):
    async def __call__(
        self,
        profiles: str,
        *,
        socket_path: Path | None = ...,
        server_extra: str = ...,
        nofile: int | None = ...,
    ) -> SidecarProcess: ...


@pytest.fixture
async def sidecar_factory(tmp_path: Path, leaks: LeakRegistry) -> AsyncIterator[SidecarFactory]:
    """Start ``serve`` processes from a TOML snippet; all are killed at teardown.

    The processes share one condition, so ``wait_until`` on any of them
    re-checks at every event of all of them. At teardown each process's whole
    stderr (every log line it wrote, access and malformed-request lines
    included) is scanned for the test's secrets.
    """
    made: list[SidecarProcess] = []
    changed = asyncio.Condition()

    async def make(
        profiles: str,
        *,
        socket_path: Path | None = None,
        server_extra: str = "",
        nofile: int | None = None,
    ) -> SidecarProcess:
        sidecar = SidecarProcess(
            tmp_path,
            profiles,
            socket_path=socket_path,
            server_extra=server_extra,
            changed=changed,
            nofile=nofile,
        )
        made.append(sidecar)
        await sidecar.start()
        return sidecar

    yield make
    for sidecar in made:
        await sidecar.kill()
    written = b"".join(bytes(sidecar.stderr) for sidecar in made).decode(errors="replace")
    leaked = [v for v in leaks.all_values() if v and v in written]
    assert not leaked, f"{len(leaked)} secret value(s) reached a sidecar's stderr"


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for Unix sockets (paths are limited to about 100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
async def real_idp(leaks) -> AsyncIterator[DevIdP]:
    """The development IdP on the real clock, as a sidecar process would see any IdP."""
    dev = e2e_idp()
    await dev.start()
    leaks.idps.append(dev)
    yield dev
    dev.release_hang()
    await dev.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def exchange_idp(
    tmp_path: Path, http: aiohttp.ClientSession, leaks: LeakRegistry
) -> AsyncIterator[ExchangeIdP]:
    """npm's oidc-provider with the token-exchange grant and one client per auth method.

    Every client secret, minted user token and issued token goes to the leak
    registry, so ``sidecar_factory``'s stderr scan looks for each. Skips
    without Node and oidc-provider, fails instead under ``CI=true``.
    """
    require_node()
    async with start_exchange_idp(http, tmp_path, on_secret=leaks.add) as idp:
        yield idp


# -- fleet mode on the shared Redis --------------------------------------------


@pytest.fixture(name="namespace")
async def namespace_fixture() -> AsyncIterator[str]:
    """A unique key namespace on the shared Redis, deleted at teardown."""
    await require_redis()
    ns = unique_namespace()
    yield ns
    await delete_namespace(SHARED_URL, ns)


@pytest.fixture
async def managed(tmp_path: Path, leaks: LeakRegistry) -> AsyncIterator[ManagedRedis]:
    """A private TLS-only redis-server with passwords and the sidecar's ACL user; stopped after.

    Its own server, so a test may flush it: the shared Redis is never flushed.
    """
    async with managed_redis(tmp_path) as redis:
        leaks.add(redis.password)
        if redis.server.admin_password is not None:
            leaks.add(redis.server.admin_password)
        yield redis


@pytest.fixture(name="caches")
async def caches_fixture(clock, namespace) -> AsyncIterator[Any]:
    """Build RedisCaches on the test's namespace (own metrics); all closed at teardown."""
    made: list[RedisCache] = []

    def make(*, key: bytes | None = None) -> RedisCache:
        cache = RedisCache(
            SHARED_URL,
            namespace,
            clock=clock,
            metrics=Metrics(CollectorRegistry()),
            codec=TokenCodec(key),
        )
        made.append(cache)
        return cache

    yield make
    for cache in made:
        await cache.aclose()


@pytest.fixture(name="sidecar")
def sidecar_fixture(make_service, caches, idp):
    """One started TokenService in fleet mode on the test's namespace."""

    def build(*, key: bytes | None = None, **profile_overrides):
        cache = caches(key=key)
        return make_service(
            make_profile(idp, **profile_overrides), metrics=cache._metrics, cache=cache
        )

    return build


# -- the client library against a live token API ---------------------------------


@pytest.fixture
async def stack(idp, make_service) -> AsyncIterator[dict[str, Any]]:
    """A started token service, its token API on TCP and a Unix socket, and a protected API."""
    service = make_service(make_profile(idp))
    await service.get("api")
    async with client_stack(service, idp) as value:
        yield value
