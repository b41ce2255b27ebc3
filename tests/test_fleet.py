"""Fleet mode against real Redis: the cache backend, and two engines sharing one token."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry

from sidecar.config import CacheConfig, Config
from sidecar.errors import CacheUnavailableError, ConfigError
from sidecar.fleet import (
    CacheState,
    MemoryCache,
    RedisCache,
    SharedToken,
    TokenCodec,
    identity_of,
    load_key,
    make_cache,
)
from sidecar.metrics import Metrics
from sidecar.testing import FakeClock
from sidecar.token import fingerprint
from tests.support.builders import AUDIENCE, CLIENT_ID, make_profile
from tests.support.metrics import sample
from tests.support.redis import (
    SHARED_URL,
    free_port,
    namespace_keys,
)
from tests.support.virtual_time import run_for

TOKEN = "header.payload-LEAKCANARY-fleet.signature"


def shared_token(clock: FakeClock, lifetime: float = 3600.0, value: str = TOKEN) -> SharedToken:
    return SharedToken(
        value=value,
        token_type="Bearer",
        scope="read:tools",
        obtained_at=clock.time(),
        expires_at=clock.time() + lifetime,
        fingerprint=fingerprint(value),
    )


@pytest.fixture
async def make_cache_for(clock, namespace) -> AsyncIterator[Any]:
    made: list[RedisCache] = []

    def factory(
        url: str = SHARED_URL, *, key: bytes | None = None, metrics: Metrics | None = None
    ) -> RedisCache:
        cache = RedisCache(
            url,
            namespace,
            clock=clock,
            metrics=metrics or Metrics(CollectorRegistry()),
            codec=TokenCodec(key),
        )
        made.append(cache)
        return cache

    yield factory
    for cache in made:
        await cache.aclose()


async def test_round_trip_sets_redis_ttl_to_token_lifetime(make_cache_for, clock, namespace):
    """A written token reads back equal, under a hashed key whose TTL is its remaining life."""
    cache = make_cache_for()
    token = shared_token(clock, lifetime=600)
    await cache.write("identity-a", token)
    back = await cache.read("identity-a")
    assert back is not None
    assert (back.value, back.expires_at, back.fingerprint) == (
        token.value,
        token.expires_at,
        token.fingerprint,
    )
    assert await cache.read("identity-b") is None
    key = cache.token_key("identity-a")
    assert key.startswith(f"{namespace}:token:")
    assert "identity-a" not in key
    ttl = await cache._redis.pttl(key)
    assert 599_000 < ttl <= 600_000
    assert cache.state is CacheState.OK
    assert repr(back) == (
        f"SharedToken(fingerprint={token.fingerprint!r}, expires_at={token.expires_at:.0f}, "
        "value=[secure])"
    )


async def test_identity_separates_differently_configured_fleets(idp, clock):
    """Audience, scope, client and namespace each give another key."""
    base = make_profile(idp)
    identities = {
        identity_of(base, "client"),
        identity_of(base, "other-client"),
        identity_of(make_profile(idp, scope="write:tools"), "client"),
        identity_of(make_profile(idp, audience="https://other/"), "client"),
        identity_of(make_profile(idp, resource="https://res/"), "client"),
    }
    assert len(identities) == 5
    a = RedisCache(SHARED_URL, "ns-a", clock=clock, metrics=Metrics(CollectorRegistry()))
    b = RedisCache(SHARED_URL, "ns-b", clock=clock, metrics=Metrics(CollectorRegistry()))
    assert a.token_key("x").split(":")[-1] != b.token_key("x").split(":")[-1]
    await a.aclose()
    await b.aclose()


async def test_sealed_values_are_not_readable_tokens(make_cache_for, clock, namespace):
    """With a key, Redis holds ciphertext; the same key opens it, a wrong key or none misses."""
    key = os.urandom(32)
    metrics = Metrics(CollectorRegistry())
    sealed = make_cache_for(key=key)
    await sealed.write("id", shared_token(clock))
    stored = await namespace_keys(SHARED_URL, namespace)
    assert len(stored) == 1
    assert all(TOKEN.encode() not in v and b"fingerprint" not in v for v in stored.values())
    assert (await make_cache_for(key=key).read("id")) is not None
    assert await make_cache_for(key=os.urandom(32), metrics=metrics).read("id") is None
    assert await make_cache_for(metrics=metrics).read("id") is None
    assert sample(metrics, "token_sidecar_cache_errors_total", reason="undecryptable") == 2
    # A plain value is refused by a sidecar that expects sealed ones.
    await make_cache_for().write("plain", shared_token(clock))
    assert await make_cache_for(key=key, metrics=metrics).read("plain") is None
    assert sample(metrics, "token_sidecar_cache_errors_total", reason="unencrypted") == 1


async def test_garbage_value_is_a_miss(make_cache_for, clock):
    """A value that is not ours is counted and read as a miss."""
    metrics = Metrics(CollectorRegistry())
    cache = make_cache_for(metrics=metrics)
    await cache._redis.set(cache.token_key("id"), b"ts1p{not json")
    assert await cache.read("id") is None
    await cache._redis.set(cache.token_key("id"), b"something else")
    assert await cache.read("id") is None
    assert sample(metrics, "token_sidecar_cache_errors_total", reason="malformed") == 2


def test_key_file_raw_base64_and_errors(tmp_path):
    """A key file holds 32 bytes raw or base64; missing or wrong-sized keys are config errors."""
    raw = os.urandom(32)
    (tmp_path / "raw").write_bytes(raw)
    (tmp_path / "b64").write_text(base64.b64encode(raw).decode() + "\n")
    (tmp_path / "short").write_text(base64.b64encode(os.urandom(16)).decode())
    assert load_key(tmp_path / "raw", source="c.toml") == raw
    assert load_key(tmp_path / "b64", source="c.toml") == raw
    for name in ("short", "missing"):
        with pytest.raises(ConfigError) as info:
            load_key(tmp_path / name, source="c.toml")
        assert "cache.key_file" in str(info.value)
        assert "c.toml" in str(info.value)
    config = Config(
        profiles=MappingProxyType({}),
        cache=CacheConfig(backend="redis", key_file=tmp_path / "short"),
        source="c.toml",
    )
    with pytest.raises(ConfigError):
        make_cache(config, FakeClock(), Metrics(CollectorRegistry()))
    assert repr(TokenCodec(raw)) == "TokenCodec(sealed=True)"


async def test_lock_is_exclusive_and_released(make_cache_for):
    """One holder at a time; leaving the block frees the lock and notifies watchers."""
    a, b = make_cache_for(), make_cache_for()
    a.start()
    b.start()
    async with b.watch("id") as written:
        async with a.lock("id", 5.0) as held_a:
            assert held_a
            async with b.lock("id", 5.0) as held_b:
                assert not held_b
        await asyncio.wait_for(written.wait(), 5)
    async with b.lock("id", 5.0) as held_b:
        assert held_b


async def test_unreachable_redis_maps_to_cache_unavailable(make_cache_for, clock, log_output):
    """A refused connection is CacheUnavailableError at once, the backend is down and counted."""
    metrics = Metrics(CollectorRegistry())
    cache = make_cache_for(f"redis://127.0.0.1:{free_port()}/0", metrics=metrics)
    for call in (
        cache.read("id"),
        cache.write("id", shared_token(clock)),
    ):
        with pytest.raises(CacheUnavailableError):
            await asyncio.wait_for(call, 2)
    with pytest.raises(CacheUnavailableError):
        async with cache.lock("id", 1.0):
            pass
    assert cache.state is CacheState.DOWN
    assert sample(metrics, "token_sidecar_cache_backend_up") == 0
    assert sample(metrics, "token_sidecar_cache_errors_total", reason="unavailable") == 3
    assert log_output.getvalue().count('"cache.backend_down"') == 1


async def test_memory_cache_shares_nothing():
    """The memory backend misses every read and grants every lock."""
    cache = MemoryCache()
    assert await cache.read("id") is None
    async with cache.lock("id", 1.0) as held:
        assert held
    assert cache.state is CacheState.OK
    assert repr(cache) == "MemoryCache()"


# -- two engines, one Redis, one IdP, virtual time ----------------------------


@pytest.fixture
async def fleet(make_service, make_cache_for, idp):
    """Build N TokenServices (own metrics, own Redis connections) sharing one Redis namespace."""

    def build(count: int = 2, url: str = SHARED_URL, **profile_overrides):
        services = []
        for seed in range(count):
            metrics = Metrics(CollectorRegistry())
            cache = make_cache_for(url, metrics=metrics)
            services.append(
                make_service(
                    make_profile(idp, **profile_overrides), seed=seed, metrics=metrics, cache=cache
                )
            )
        return services

    return build


async def test_two_sidecars_cold_make_one_idp_request(fleet, idp, clock):
    """Two sidecars started together on a cold Redis cause exactly one IdP token request."""
    a, b = fleet(2)
    served = await asyncio.gather(a.get("api"), b.get("api"))
    assert idp.token_requests == 1
    assert served[0].token.value == served[1].token.value
    minted = [sample(s.metrics, "token_sidecar_tokens_minted_total", profile="api") for s in (a, b)]
    assert sorted(minted) == [0, 1]
    assert a.status()["cache"] == {"backend": "redis", "state": "ok"}


async def test_fleet_refreshes_once_per_window(fleet, idp, clock):
    """Over three refresh windows the two sidecars mint exactly one token per window."""
    a, b = fleet(2)
    await asyncio.gather(a.get("api"), b.get("api"))
    assert idp.token_requests == 1
    for window in range(1, 4):
        current = a.refresher_for("api").token
        assert current is not None
        await run_for(clock, [a, b], current.expires_at - clock.monotonic() - 60)
        assert idp.token_requests == 1 + window
        ta, tb = a.refresher_for("api").token, b.refresher_for("api").token
        assert ta is not None
        assert tb is not None
        assert ta.value == tb.value
    minted = sum(
        sample(s.metrics, "token_sidecar_tokens_minted_total", profile="api") for s in (a, b)
    )
    assert minted == 4


async def test_warm_redis_serves_without_idp_request(fleet, idp, clock):
    """A sidecar that starts while Redis holds the fleet's token adopts it: no IdP request."""
    (first,) = fleet(1)
    token = (await first.get("api")).token
    assert idp.token_requests == 1
    (late,) = fleet(1)
    adopted = (await late.get("api")).token
    assert idp.token_requests == 1
    assert adopted.value == token.value
    assert adopted.expires_at_wall == token.expires_at_wall
    # Refresh timing counts from when the token was minted, not adopted.
    assert adopted.obtained_at == token.obtained_at


async def test_invalidated_shared_token_is_not_adopted_again(fleet, idp, clock):
    """A token a caller reported is replaced by a new mint, not re-read from Redis."""
    a, b = fleet(2)
    token = (await a.get("api")).token
    await b.get("api")
    await run_for(clock, [a, b], 100)
    result, served = await b.refresher_for("api").invalidate(token.fingerprint)
    assert result == "refreshed"
    assert served.token.value != token.value
    assert idp.token_requests == 2
    # The other sidecar adopts the replacement at its next refresh instead of minting.
    await run_for(clock, [a, b], token.refresh_at - clock.monotonic() + 1)
    assert a.refresher_for("api").token.value == served.token.value
    assert idp.token_requests == 2


async def test_redis_down_falls_back_to_local_refresh(fleet, idp, clock, log_output):
    """With Redis unreachable each sidecar refreshes and serves on its own, counting fallbacks."""
    a, b = fleet(2, url=f"redis://127.0.0.1:{free_port()}/0")
    served = await asyncio.gather(a.get("api"), b.get("api"))
    assert served[0].token.value != served[1].token.value
    assert idp.token_requests == 2
    for s in (a, b):
        # One for the refresh without the cache, one for the token served then.
        assert (
            sample(
                s.metrics,
                "token_sidecar_fallback_total",
                profile="api",
                reason="cache_backend_down",
            )
            == 2
        )
        cache = s.status()["cache"]
        assert (cache["backend"], cache["state"]) == ("redis", "down")
        assert cache["error"]["kind"] == "unreachable"
        assert "connecting to 127.0.0.1" in cache["error"]["detail"]
        assert sample(s.metrics, "token_sidecar_cache_backend_up") == 0
    assert '"source":"local"' in log_output.getvalue().replace(" ", "")


async def test_idp_failure_holds_off_the_whole_fleet(fleet, idp, clock):
    """A holder's transient IdP failure keeps its peers from the IdP until the hold-off passes."""
    idp.faults.status = 503
    a, b = fleet(2)
    await run_for(clock, [a, b], 0)
    assert idp.token_requests == 1  # the peer failed its attempt without asking the IdP
    for service in (a, b):
        status = service.refresher_for("api").status()
        assert status["last_error"]["kind"] == "error"
        assert status["consecutive_failures"] >= 1
    peer = [
        s
        for s in (a, b)
        if "held off" in (s.refresher_for("api").status()["last_error"]["description"])
    ]
    assert len(peer) == 1
    idp.faults.status = None
    await run_for(clock, [a, b], 10)
    assert idp.issued == 1
    ta, tb = a.refresher_for("api").token, b.refresher_for("api").token
    assert ta is not None
    assert tb is not None
    assert ta.value == tb.value


async def test_rate_limit_holds_off_the_fleet_for_retry_after(fleet, idp, clock):
    """A 429 with Retry-After seen by one sidecar keeps every sidecar from the IdP that long."""
    idp.faults.rate_limit = True
    idp.faults.retry_after = 30
    a, b = fleet(2)
    await run_for(clock, [a, b], 29)
    assert idp.token_requests == 1
    idp.faults.rate_limit = False
    await run_for(clock, [a, b], 60)
    assert idp.issued == 1
    assert idp.token_requests == 2


async def test_forged_shared_token_is_not_adopted(fleet, idp, clock, make_cache_for):
    """A token planted in Redis that does not verify is never served; the sidecar mints its own."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = clock.time()
    claims = {"iss": idp.issuer, "aud": AUDIENCE, "sub": "evil", "iat": int(now)}
    claims["exp"] = int(now) + 7200
    forged = jwt.encode(claims, key, algorithm="RS256", headers={"kid": idp.signing_kid})
    planted = SharedToken(
        value=forged,
        token_type="Bearer",
        scope=None,
        obtained_at=now,
        expires_at=now + 7200,
        fingerprint=fingerprint(forged),
    )
    metrics = Metrics(CollectorRegistry())
    writer = make_cache_for(metrics=metrics)
    await writer.write(identity_of(make_profile(idp), CLIENT_ID), planted)
    (service,) = fleet(1)
    served = await service.get("api")
    assert served.token.value != forged
    assert served.token.value in idp.issued_tokens
    assert idp.token_requests == 1
    rejected = service.metrics.registry.get_sample_value(
        "token_sidecar_cache_errors_total", {"reason": "rejected"}
    )
    assert rejected is not None
    assert rejected >= 1  # checked before and again under the lock
