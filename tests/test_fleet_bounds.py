"""Every shared value is bounded: planted hold-offs and locks cannot park the fleet.

Red-team findings RT-04 (a planted hold-off parked every sidecar for decades,
a string ``until`` crash-looped the refresh, ``1e300`` made the token API and
``/status`` answer 500) and RT-06 (a lock key without a TTL stopped all
refreshes). Values are planted in a real Redis under the test's namespace; the
sidecars run on the fake clock.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from sidecar.config import BackoffConfig
from sidecar.fleet import identity_of
from tests.support.builders import CLIENT_ID, make_profile
from tests.support.virtual_time import run_for

CAP = 60.0  # the profile's backoff cap


async def advance(clock, seconds: float, step: float = 0.5) -> None:
    """Move the fake clock while an attempt waits on it (run_for waits for idle loops)."""
    for _ in range(int(seconds / step)):
        await asyncio.sleep(0.02)  # let the attempt reach its next wait
        await clock.advance(step)


def keys(cache, idp):
    identity = identity_of(make_profile(idp), CLIENT_ID)
    return cache._hold_off_key(identity), cache._lock_key(identity)


def hold_off(kind: str, until: object) -> bytes:
    return orjson.dumps(
        {"kind": kind, "error": "planted", "description": "planted by attacker", "until": until}
    )


@pytest.mark.parametrize(
    ("kind", "bound"), [("error", CAP), ("timeout", CAP), ("rate_limited", 3600.0)]
)
async def test_planted_hold_off_lasts_at_most_its_cap(sidecar, caches, idp, clock, kind, bound):
    """A hold-off a day long is obeyed for its cap (backoff cap, or 1 h for 429s), then minting."""
    writer = caches()
    hold_key, _ = keys(writer, idp)
    await writer._redis.set(hold_key, hold_off(kind, clock.time() + 86400))
    service = sidecar(backoff=BackoffConfig(base=1.0, cap=CAP))
    await run_for(clock, service, bound - 1)
    assert idp.token_requests == 0  # positive control: within its bound it is obeyed
    status = service.status()["profiles"]["api"]
    assert "planted by attacker" in status["last_error"]["description"]
    assert status["next_refresh_at"] - clock.time() <= bound
    await run_for(clock, service, 2 * CAP + 1)
    assert idp.token_requests == 1
    assert service.refresher_for("api").token.value in idp.issued_tokens


@pytest.mark.parametrize(
    "raw",
    [
        hold_off("rate_limited", "soon"),
        hold_off("rate_limited", 1e300),
        b'{"kind":"error","until":1000000000000000000000000000000}',  # beyond 64 bits
        hold_off("rate_limited", 1_000_000_000.0 + 1.8e9),  # 31 years
        hold_off("rate_limited", -5),
        b'{"kind":"rate_limited","until":NaN}',
        b'{"kind":"error"}',
        hold_off("bogus", 0),
        b"[1, 2]",
        b"not json",
        orjson.dumps({"kind": "error", "until": 0, "description": "x" * 1_000_000}),
    ],
)
async def test_malformed_hold_off_is_a_miss(sidecar, caches, idp, clock, raw):
    """A hold-off of the wrong type, shape or size is no hold-off: a token at once, no crash."""
    writer = caches()
    hold_key, _ = keys(writer, idp)
    await writer._redis.set(hold_key, raw)
    service = sidecar()
    served = await asyncio.wait_for(service.get("api"), 5)
    assert served.token.value in idp.issued_tokens
    assert idp.token_requests == 1
    orjson.dumps(service.status())  # /status stays serialisable: no 500
    assert service.refresher_for("api").status()["last_error"] is None


async def test_genuine_hold_off_is_still_obeyed(sidecar, caches, idp, clock):
    """Positive control: a peer's short, well-formed hold-off keeps this sidecar from the IdP."""
    writer = caches()
    hold_key, _ = keys(writer, idp)
    await writer._redis.set(hold_key, hold_off("rate_limited", clock.time() + 30))
    service = sidecar()
    await run_for(clock, service, 29)
    assert idp.token_requests == 0
    await run_for(clock, service, 10)
    assert idp.token_requests == 1


async def test_lock_without_expiry_is_taken_over(sidecar, caches, idp, clock):
    """RT-06: a lock planted with no TTL gets the lock TTL, and the sidecar mints anyway."""
    writer = caches()
    _, lock_key = keys(writer, idp)
    await writer._redis.set(lock_key, b"squatter")
    service = sidecar(timeout=1.0)
    await advance(clock, 3 * (1.0 + 2.0 + 0.25) + 1)
    await run_for(clock, service, 0)
    assert idp.token_requests == 1
    assert service.refresher_for("api").token.value in idp.issued_tokens
    ttl = await writer._redis.pttl(lock_key)
    assert 0 < ttl <= 3000  # the planted lock now expires after the lock TTL


async def test_lock_with_expiry_is_respected(sidecar, caches, idp, clock):
    """Positive control: a live holder's lock (with its TTL) is waited for, not taken over."""
    writer = caches()
    _, lock_key = keys(writer, idp)
    await writer._redis.set(lock_key, b"peer", px=60_000)
    sidecar(timeout=1.0)
    await advance(clock, 1.0 + 2.0)  # within one round of waiting
    assert idp.token_requests == 0
    assert 3000 < await writer._redis.pttl(lock_key) <= 60_000
