"""Fleet mode end to end: several ``token-sidecar serve`` processes sharing Redis and one IdP.

The IdP runs in the test process on the real clock with short token
lifetimes, so refresh windows pass in seconds. Each test uses its own Redis
namespace (or its own ``redis-server``) and removes its keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from sidecar.devidp import DevIdP
from sidecar.testing import SidecarProcess
from sidecar.token import fingerprint
from tests.support.e2e import (
    HEADERS,
    e2e_idp,
    get_json,
    profile_toml,
    run_cli,
)
from tests.support.redis import (
    SHARED_URL,
    RedisServer,
    namespace_keys,
    unique_namespace,
)
from tests.support.upstream import make_tls_files

pytestmark = pytest.mark.slow

Factory = Callable[..., Awaitable[SidecarProcess]]


@pytest.fixture
async def make_idp(leaks) -> AsyncIterator[Callable[..., Awaitable[DevIdP]]]:
    made: list[DevIdP] = []

    async def make(lifetime: int = 3600) -> DevIdP:
        dev = e2e_idp(lifetime)
        await dev.start()
        leaks.idps.append(dev)
        made.append(dev)
        return dev

    yield make
    for dev in made:
        dev.release_hang()
        await dev.stop()


@pytest.fixture
def fleet_factory(sidecar_factory) -> Factory:
    """Start ``serve`` processes with a [cache] table (sidecar_factory kills them)."""

    async def make(profiles: str, cache: str) -> SidecarProcess:
        sidecar: SidecarProcess = await sidecar_factory(cache + profiles)
        return sidecar

    return make


def cache_toml(namespace: str, url: str = SHARED_URL, key_file: Path | None = None) -> str:
    lines = ["[cache]", 'backend = "redis"', f'url = "{url}"', f'namespace = "{namespace}"']
    if key_file is not None:
        lines.append(f'key_file = "{key_file}"')
    return "\n".join(lines) + "\n"


def short_lived(idp: DevIdP) -> str:
    return profile_toml(idp, min_ttl='"1s"', refresh_before='"50%"')


async def token_of(http: aiohttp.ClientSession, sidecar: SidecarProcess) -> str:
    status, body = await get_json(http, f"{sidecar.url}/v1/token/api", headers=HEADERS)
    assert status == 200, body
    return str(body["access_token"])


async def metric(http: aiohttp.ClientSession, sidecar: SidecarProcess, line_start: str) -> float:
    async with http.get(f"{sidecar.ops}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_four_cold_sidecars_mint_once_per_window(make_idp, fleet_factory, namespace, http):
    """Four sidecars started together mint one token, then exactly one per refresh window."""
    idp = await make_idp(lifetime=6)
    sidecars = await asyncio.gather(
        *(fleet_factory(short_lived(idp), cache_toml(namespace)) for _ in range(4))
    )
    await asyncio.gather(*(s.wait_event("token.refreshed") for s in sidecars))
    assert idp.token_requests == 1
    assert len({await token_of(http, s) for s in sidecars}) == 1

    # Three refresh windows of about 3 s each: one mint per window for the whole fleet;
    # the other sidecars adopt each token at their own jittered instants.
    def all_hold_the_fourth() -> bool:
        tokens = idp.issued_tokens
        return len(tokens) >= 4 and {held(s) for s in sidecars} == {fingerprint(tokens[-1])}

    await sidecars[0].wait_until(all_hold_the_fourth, timeout=15)
    assert idp.token_requests == 4
    assert len({await token_of(http, s) for s in sidecars}) == 1
    minted = [
        await metric(http, s, 'token_sidecar_tokens_minted_total{profile="api"}') for s in sidecars
    ]
    assert sum(minted) == 4
    assert [await s.stop() for s in sidecars] == [0] * 4


async def test_killed_lock_holder_is_taken_over(make_idp, fleet_factory, namespace, http):
    """The lock holder dies mid-request: another sidecar refreshes after the lock TTL."""
    idp = await make_idp()
    idp.faults.hang = True
    sidecars = await asyncio.gather(
        *(fleet_factory(profile_toml(idp), cache_toml(namespace)) for _ in range(2))
    )
    await idp.faults.wait_hung(1)
    await asyncio.gather(*(s.wait_event("sidecar.started") for s in sidecars))
    holder_events = [s.count("fleet.refreshing") for s in sidecars]
    assert sorted(holder_events) == [0, 1]
    holder, survivor = sidecars if holder_events[0] else sidecars[::-1]
    assert holder.proc is not None
    holder.proc.send_signal(signal.SIGKILL)
    await holder.stop(None)
    idp.release_hang()
    # The caller waits through the dead holder's lock TTL (timeout 2 s + margin), then is served.
    token = await token_of(http, survivor)
    assert token in idp.issued_tokens
    assert survivor.count("fleet.refreshing") == 1
    assert await survivor.stop() == 0


async def test_redis_outage_falls_back_and_converges(make_idp, fleet_factory, http):
    """Redis stops mid-run: no caller error, fallback counted; after restart the fleet converges."""
    redis = RedisServer()
    await redis.start()
    try:
        await _outage_scenario(await make_idp(lifetime=6), fleet_factory, http, redis)
    finally:
        await redis.stop()


async def _outage_scenario(
    idp: DevIdP, fleet_factory: Factory, http: aiohttp.ClientSession, redis: RedisServer
) -> None:
    cache = cache_toml(unique_namespace(), url=redis.url)
    a, b = await asyncio.gather(*(fleet_factory(short_lived(idp), cache) for _ in range(2)))
    await asyncio.gather(*(s.wait_event("token.refreshed") for s in (a, b)))
    statuses: list[int] = []
    stop = asyncio.Event()

    async def caller(sidecar: SidecarProcess) -> None:
        while not stop.is_set():
            async with http.get(f"{sidecar.url}/v1/token/api", headers=HEADERS) as resp:
                statuses.append(resp.status)
            await asyncio.sleep(0.02)  # paces the load (about 50/s per caller); waits for nothing

    callers = [asyncio.create_task(caller(s)) for s in (a, b) for _ in range(2)]
    await redis.stop()
    await asyncio.gather(*(s.wait_event("cache.backend_down") for s in (a, b)))
    # A refresh window passes without Redis: each sidecar refreshes on its own.
    await asyncio.gather(*(_wait_source(s, "local") for s in (a, b)))
    for s in (a, b):
        _, body = await get_json(http, f"{s.ops}/status")
        assert (body["cache"]["state"], body["cache"]["error"]["kind"]) == ("down", "unreachable")
        fallback = 'token_sidecar_fallback_total{profile="api",reason="cache_backend_down"}'
        assert await metric(http, s, fallback) > 1
    await redis.start()
    await asyncio.gather(*(s.wait_event("cache.backend_up", count=2) for s in (a, b)))

    # Converged: both hold the same token again (each token change is logged).
    await a.wait_until(lambda: held(a) == held(b), timeout=10)
    stop.set()
    await asyncio.gather(*callers)
    assert len(statuses) >= len(callers)  # every caller was answered at least once
    assert set(statuses) == {200}
    assert [await s.stop() for s in (a, b)] == [0, 0]


async def _wait_source(sidecar: SidecarProcess, source: str) -> None:
    """Wait until the sidecar logged a refresh from ``source`` (bounded)."""

    def seen() -> bool:
        return any(e.get("source") == source for e in sidecar.named("token.refreshed"))

    await sidecar.wait_until(seen, timeout=10)


def held(sidecar: SidecarProcess) -> str | None:
    """The fingerprint of the token the sidecar holds, from its last ``token.refreshed``."""
    refreshed = sidecar.named("token.refreshed")
    return str(refreshed[-1]["fingerprint"]) if refreshed else None


async def test_sealed_tokens_warm_restart_and_wrong_key(
    make_idp, fleet_factory, namespace, http, tmp_path
):
    """Sealed values hide the token; a restart adopts it; a wrong key misses without crashing."""
    idp = await make_idp()
    key, wrong = tmp_path / "key", tmp_path / "wrong"
    key.write_bytes(os.urandom(32))
    wrong.write_bytes(os.urandom(32))
    first = await fleet_factory(profile_toml(idp), cache_toml(namespace, key_file=key))
    token = await token_of(http, first)
    assert await first.stop() == 0
    stored = await namespace_keys(SHARED_URL, namespace)
    assert stored
    assert all(token.encode() not in v for v in stored.values())
    restarted = await fleet_factory(profile_toml(idp), cache_toml(namespace, key_file=key))
    assert await token_of(http, restarted) == token
    assert idp.token_requests == 1
    assert restarted.count("fleet.refreshing") == 0
    stranger = await fleet_factory(profile_toml(idp), cache_toml(namespace, key_file=wrong))
    assert await token_of(http, stranger) != token
    assert idp.token_requests == 2
    assert stranger.count("cache.value_unreadable") >= 1
    assert [await s.stop() for s in (restarted, stranger)] == [0, 0]


# -- a managed-style Redis: TLS only, a password file, an ACL user ----------------------


async def test_tls_fleet_shares_and_a_refused_sidecar_falls_back(
    make_idp, fleet_factory, managed, http, leaks
):
    """Over TLS with a password two sidecars share one token; a wrong CA or password falls back."""
    idp = await make_idp()
    a, b = await asyncio.gather(
        *(fleet_factory(profile_toml(idp), managed.cache_toml()) for _ in range(2))
    )
    assert await token_of(http, a) == await token_of(http, b)
    assert idp.token_requests == 1
    wrong_password = managed.directory / "wrong-password"
    wrong_password.write_text("wrong-LEAKCANARY\n")
    leaks.add("wrong-LEAKCANARY")
    (managed.directory / "other").mkdir()
    foreign = make_tls_files(managed.directory / "other").ca
    refused = {
        "tls": await fleet_factory(profile_toml(idp), managed.cache_toml(ssl_ca_file=foreign)),
        "auth": await fleet_factory(
            profile_toml(idp), managed.cache_toml(password_file=wrong_password)
        ),
    }
    for kind, sidecar in refused.items():
        event = await sidecar.wait_event("cache.backend_down")
        assert event["kind"] == kind
        assert await token_of(http, sidecar)  # served all the same, minted on its own
        _, status = await get_json(http, f"{sidecar.ops}/status")
        assert (status["cache"]["state"], status["cache"]["error"]["kind"]) == ("down", kind)
        assert managed.password not in json.dumps(status)
        async with http.get(f"{sidecar.ops}/metrics") as resp:
            exposition = await resp.text()
        assert "token_sidecar_cache_backend_up 0.0" in exposition  # the metrics are there
        assert managed.password not in exposition
        assert "wrong-LEAKCANARY" not in exposition
    assert idp.token_requests == 3
    _, status = await get_json(http, f"{a.ops}/status")
    assert status["cache"] == {"backend": "redis", "state": "ok"}
    assert [await s.stop() for s in (a, b, *refused.values())] == [0] * 4


async def test_unreadable_tls_or_password_file_exits_2(managed, tmp_path):
    """serve and check refuse a missing CA or password file with exit 2, naming file and key."""
    missing = tmp_path / "missing.pem"
    profile = (
        '[profiles.api]\ntoken_url = "http://127.0.0.1:9/t"\nclient_id = "x"\n'
        'client_secret = "y"\njwks_url = "http://127.0.0.1:9/j"\n'
    )
    for key in ("ssl_ca_file", "password_file"):
        config = tmp_path / f"{key}.toml"
        config.write_text(managed.cache_toml(**{key: missing}) + profile)
        for command in ("serve", "check"):
            code, _, err = await run_cli(command, "--config", str(config))
            assert code == 2, (command, err)
            assert f"{config}: cache.{key}: cannot read {missing}: No such file" in err
    good = tmp_path / "good.toml"
    good.write_text(managed.cache_toml() + profile)
    code, out, _ = await run_cli("check", "--config", str(good))
    assert code == 0  # positive control: the same config with the real files passes
    assert managed.password not in out
