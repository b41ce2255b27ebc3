"""Every fleet key may vanish (an evicting Upstash, a FLUSHALL): a miss, never an error or a stall.

All of these run against a private, managed-style Redis (TLS, passwords,
the sidecar's restricted ACL user), because they flush it: the shared Redis
at 127.0.0.1:6379 is never flushed. The first tests run the services on the
FakeClock and delete keys at chosen instants; the last one flushes the
server repeatedly under load from two ``serve`` processes.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidecar.config import CacheConfig, Config
from sidecar.devidp import DevIdP
from sidecar.fleet import RedisCache, make_cache
from sidecar.metrics import Metrics
from sidecar.testing import SidecarProcess
from tests.support.builders import make_profile
from tests.support.e2e import HEADERS, e2e_idp, get_json, profile_toml
from tests.support.metrics import sample
from tests.support.redis import ManagedRedis


@pytest.fixture
async def fleet_on(make_service, clock, idp) -> AsyncIterator[Callable[..., list[Any]]]:
    """N started TokenServices in fleet mode on ``cache`` (own Redis clients and metrics)."""
    caches: list[RedisCache] = []

    def build(cache: CacheConfig, count: int = 2) -> list[Any]:
        services = []
        for seed in range(count):
            metrics = Metrics(CollectorRegistry())
            built = make_cache(Config(profiles=MappingProxyType({}), cache=cache), clock, metrics)
            assert isinstance(built, RedisCache)
            caches.append(built)
            services.append(
                make_service(make_profile(idp), seed=seed, metrics=metrics, cache=built)
            )
        return services

    yield build
    for cache in caches:
        await cache.aclose()


async def flush(managed: ManagedRedis, *command: str) -> None:
    admin = managed.server.admin()
    try:
        await admin.execute_command(*command)
    finally:
        await admin.aclose()


async def test_vanished_token_is_a_miss(managed, fleet_on, idp, clock, log_output):
    """A shared token evicted from Redis is minted again by the next sidecar: no error counted."""
    (a,) = fleet_on(managed.cache_config(), count=1)
    first = (await a.get("api")).token
    (warm,) = fleet_on(managed.cache_config(), count=1)
    assert (await warm.get("api")).token.value == first.value  # shared while it is there
    assert idp.token_requests == 1
    await flush(managed, "FLUSHALL")
    assert await managed.keys() == []
    (b,) = fleet_on(managed.cache_config(), count=1)
    second = (await b.get("api")).token
    assert second.value != first.value
    assert idp.token_requests == 2
    for service in (a, warm, b):
        assert service.status()["cache"] == {"backend": "redis", "state": "ok"}
        for reason in ("unavailable", "malformed", "rejected"):
            assert sample(service.metrics, "token_sidecar_cache_errors_total", reason=reason) == 0
    assert "cache.backend_down" not in log_output.getvalue()


async def test_vanished_lock_does_not_stall_the_waiter(managed, fleet_on, idp, clock, log_output):
    """The lock key is flushed while its holder mints: the waiter is told at once, no TTL waited."""
    idp.faults.hang = True
    a, b = fleet_on(managed.cache_config())
    start = clock.monotonic()
    calls = [asyncio.create_task(s.get("api")) for s in (a, b)]
    await idp.faults.wait_hung(1)
    # Parked on the clock: both callers, and the sidecar that waits for the lock holder.
    await clock.wait_for_sleepers(3)
    assert any(b":lock:" in key for key in await managed.keys())  # the holder's lock
    await flush(managed, "FLUSHDB")
    idp.release_hang()
    served = await asyncio.wait_for(asyncio.gather(*calls), 5)
    assert served[0].token.value == served[1].token.value  # the waiter adopted the mint
    assert idp.token_requests == 1
    assert clock.monotonic() == start  # nobody sat out the lock TTL (12 s of this clock)
    assert '"cache.lock_expired"' in log_output.getvalue()


async def test_vanished_lock_lets_another_sidecar_mint(managed, fleet_on, idp, clock):
    """A lock evicted mid-refresh is free: a third sidecar mints too, nobody errs or waits."""
    idp.faults.hang = True
    a, b = fleet_on(managed.cache_config())
    calls = [asyncio.create_task(s.get("api")) for s in (a, b)]
    await idp.faults.wait_hung(1)
    await clock.wait_for_sleepers(3)
    await flush(managed, "FLUSHALL")
    (c,) = fleet_on(managed.cache_config(), count=1)
    late = asyncio.create_task(c.get("api"))
    await idp.faults.wait_hung(2)  # the lock was free: c asked the IdP itself
    idp.release_hang()
    served = await asyncio.wait_for(asyncio.gather(*calls, late), 5)
    assert all(s.token.value for s in served)
    assert idp.token_requests == 2


# -- FLUSHALL under load, two serve processes -----------------------------------------

CALLERS_PER_SIDECAR = 2
REQUESTS_PER_CALLER = 100
#: Pacing between one caller's requests; about 1.5 s of load in all.
PACE = 0.01


@pytest.fixture
async def short_idp(leaks) -> AsyncIterator[DevIdP]:
    """The development IdP on the real clock, issuing 3 s tokens (a refresh every ~1.5 s)."""
    dev = e2e_idp(lifetime=3)
    await dev.start()
    leaks.idps.append(dev)
    yield dev
    dev.release_hang()
    await dev.stop()


@pytest.mark.slow
async def test_flushes_under_load_cost_callers_nothing(managed, short_idp, sidecar_factory, http):
    """Two sidecars serve a few hundred requests while Redis is flushed again and again: all 200."""
    profile = profile_toml(short_idp, min_ttl='"1s"', refresh_before='"50%"')
    sidecars: list[SidecarProcess] = await asyncio.gather(
        *(sidecar_factory(managed.cache_toml() + profile) for _ in range(2))
    )
    await asyncio.gather(*(s.wait_event("token.refreshed") for s in sidecars))
    refreshed_before = sum(s.count("token.refreshed") for s in sidecars)
    statuses: list[int] = []
    flushes = 0
    load_done = asyncio.Event()

    def refreshed_meanwhile() -> bool:
        return sum(s.count("token.refreshed") for s in sidecars) > refreshed_before

    async def caller(sidecar: SidecarProcess) -> None:
        # The load goes on (bounded) until a refresh ran through the flushed
        # Redis: on a slow machine the planned requests may all come first.
        sent = 0
        while sent < REQUESTS_PER_CALLER or (
            not refreshed_meanwhile() and sent < 10 * REQUESTS_PER_CALLER
        ):
            async with http.get(f"{sidecar.url}/v1/token/api", headers=HEADERS) as resp:
                statuses.append(resp.status)
            sent += 1
            await asyncio.sleep(PACE)  # paces the load; waits for nothing

    async def flusher() -> None:
        nonlocal flushes
        admin = managed.server.admin()
        commands = itertools.cycle((("FLUSHALL",), ("FLUSHDB",), ("FLUSHALL", "ASYNC")))
        try:
            while not load_done.is_set():
                await admin.execute_command(*next(commands))
                flushes += 1
                await asyncio.sleep(0.05)  # about 20 flushes a second
        finally:
            await admin.aclose()

    flushing = asyncio.create_task(flusher())
    await asyncio.gather(*(caller(s) for s in sidecars for _ in range(CALLERS_PER_SIDECAR)))
    load_done.set()
    await flushing

    planned = len(sidecars) * CALLERS_PER_SIDECAR * REQUESTS_PER_CALLER
    assert len(statuses) >= planned
    assert statuses.count(200) == len(statuses), sorted(set(statuses))
    # The flushes raced real fleet work: refreshes through Redis happened during the load.
    assert flushes >= 10
    assert refreshed_meanwhile()
    for sidecar in sidecars:
        assert sidecar.count("cache.backend_down") == 0  # a vanished key is no backend error
        _, status = await get_json(http, f"{sidecar.ops}/status")
        assert status["cache"] == {"backend": "redis", "state": "ok"}
    assert [await s.stop() for s in sidecars] == [0, 0]


async def test_flush_probe_reaches_the_managed_server(managed):
    """Positive control for the flushes above: they empty the private server they target."""
    admin = managed.server.admin()
    try:
        await admin.set(f"{managed.namespace}:probe", b"1")
        assert await managed.keys()
        await admin.execute_command("FLUSHALL")
        assert await managed.keys() == []
    finally:
        await admin.aclose()
