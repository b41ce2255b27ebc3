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
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from sidecarproc import Sidecar

from sidecar.config import Config, InlineSecret, ProfileConfig
from sidecar.devidp import DevClient, DevIdP
from sidecar.logs import JSONFormatter
from sidecar.metrics import Metrics
from sidecar.service import TokenService
from sidecar.testing import FakeClock

AUDIENCE = "https://api.example.com/"
CLIENT_ID = "sidecar-test-client"
# Recognisable, so a leak is easy to spot in a failure message.
CLIENT_SECRET = "s3cret-LEAKCANARY-7f1e9a"


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
    """The development IdP on an ephemeral loopback port, sharing the test's clock."""
    dev = DevIdP(clock=clock, audience=AUDIENCE)
    dev.add_client(
        DevClient(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            audiences={AUDIENCE: ("read:tools", "write:tools")},
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


def make_profile(idp: DevIdP, name: str = "api", **overrides: Any) -> ProfileConfig:
    """A profile pointed at the development IdP, with inline test credentials."""
    base = idp.base_url
    fields: dict[str, Any] = {
        "name": name,
        "token_url": f"{base}/oauth/token",
        "issuer": idp.issuer,
        "jwks_url": f"{base}/.well-known/jwks.json",
        "client_id": InlineSecret(CLIENT_ID),
        "client_secret": InlineSecret(CLIENT_SECRET),
        "audience": AUDIENCE,
        "scope": "read:tools",
        "timeout": 2.0,
        "connect_timeout": 1.0,
    }
    fields.update(overrides)
    return ProfileConfig(**fields)


class ServiceFactory(Protocol):
    def __call__(
        self, *profiles: ProfileConfig, seed: int = ..., **kwargs: Any
    ) -> TokenService: ...


@pytest.fixture
async def make_service(
    session: aiohttp.ClientSession, clock: FakeClock, metrics: Metrics
) -> AsyncIterator[ServiceFactory]:
    """Build started TokenServices on the fake clock; all are closed at teardown."""
    made: list[TokenService] = []

    def factory(*profiles: ProfileConfig, seed: int = 1, **kwargs: Any) -> TokenService:
        config = Config(profiles=MappingProxyType({p.name: p for p in profiles}))
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


Services = TokenService | Sequence[TokenService]


async def idle(services: Services, timeout: float = 5.0) -> None:
    """Wait (bounded, real time) until every refresh loop is parked on the clock."""
    group = [services] if isinstance(services, TokenService) else services
    loops = [r.wait_idle() for s in group for r in s.refreshers.values()]
    await asyncio.wait_for(asyncio.gather(*loops), timeout)


async def run_for(clock: FakeClock, services: Services, seconds: float) -> None:
    """Advance virtual time, letting each refresh that falls due finish before moving on."""
    target = clock.monotonic() + seconds
    while True:
        await idle(services)
        deadline = clock.next_deadline()
        if deadline is None or deadline > target:
            break
        await clock.advance_to(deadline)
    await clock.advance_to(target)
    await idle(services)


def write_secret(path: Path, value: str) -> None:
    """Swap a secret file the way Kubernetes does: write elsewhere, then rename over."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value)
    tmp.replace(path)


Predicate = Callable[[], bool]


@pytest.fixture
async def sidecar_factory(tmp_path: Path, leaks: LeakRegistry) -> AsyncIterator[Any]:
    """Start ``serve`` processes from a TOML snippet; all are killed at teardown.

    At teardown each process's whole stderr (every log line it wrote, access
    and malformed-request lines included) is scanned for the test's secrets.
    """
    made: list[Sidecar] = []

    async def make(
        profiles: str,
        *,
        socket_path: Path | None = None,
        server_extra: str = "",
        nofile: int | None = None,
    ) -> Sidecar:
        config = tmp_path / f"config-{len(made)}.toml"
        sidecar = Sidecar(config, socket_path=socket_path, server_extra=server_extra, nofile=nofile)
        config.write_text(sidecar.server_toml() + profiles)
        made.append(sidecar)
        await sidecar.start()
        return sidecar

    yield make
    for sidecar in made:
        await sidecar.kill()
    written = b"".join(bytes(sidecar.stderr) for sidecar in made).decode(errors="replace")
    leaked = [v for v in leaks.all_values() if v and v in written]
    assert not leaked, f"{len(leaked)} secret value(s) reached a sidecar's stderr"
