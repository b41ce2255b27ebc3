"""SubjectCache and cache_key: pure rules, tested at exact virtual instants."""

from __future__ import annotations

import hashlib

import pytest

from sidecar.errors import SubjectRejectedError
from sidecar.exchange import SWEEP_INTERVAL, ExchangedToken, SubjectCache, cache_key
from sidecar.exchange._cache import key_prefix, keyed

SECRET = "user-token-LEAKCANARY-cache"


def token(expires_at: float, value: str = "t", *, capped: bool = False) -> ExchangedToken:
    return ExchangedToken(
        value,
        token_type="Bearer",
        issued_token_type="urn:ietf:params:oauth:token-type:access_token",
        scope=None,
        expires_at=expires_at,
        expires_at_wall=1_800_000_000 + expires_at,
        capped_by_subject=capped,
    )


def key(n: int) -> bytes:
    return cache_key("p", "", f"user-{n}")


def test_key_depends_on_profile_scope_and_token_and_hides_the_token():
    """Profile, scope and token all change the key; the key is a digest, not the token."""
    base = cache_key("p", "read", SECRET)
    assert len(base) == 32
    assert SECRET.encode() not in base
    assert base == cache_key("p", "read", SECRET)
    others = {cache_key("q", "read", SECRET), cache_key("p", "write", SECRET)}
    others |= {cache_key("p", "read", SECRET + "x"), cache_key("p", "", "read\0" + SECRET)}
    assert base not in others
    assert len(others) == 4


def test_key_is_the_documented_digest():
    """SHA-256 of profile, NUL, scope, NUL and the token: the same for every way it is computed."""
    expected = hashlib.sha256(b"p\0read write\0" + SECRET.encode()).digest()
    assert cache_key("p", "read write", SECRET) == expected
    assert keyed(key_prefix("p", "read write"), SECRET) == expected


def test_repr_of_an_exchanged_token_hides_its_value():
    """The repr names the fingerprint, never the value."""
    held = token(100.0, SECRET)
    assert repr(held) == (
        f"ExchangedToken(fingerprint={held.fingerprint!r}, expires_at_wall=1800000100, "
        "value=[secure])"
    )
    assert SECRET not in str(held)


@pytest.mark.parametrize(
    ("now", "served"), [(0.0, True), (69.9, True), (70.0, False), (100.0, False)]
)
def test_an_entry_is_served_only_while_more_than_the_floor_is_left(now, served):
    """With min_ttl 30 s, a token expiring at 100 is served until 70, then dropped for good."""
    cache = SubjectCache(10, floor=30.0)
    cache.store(key(1), token(100.0), now=0.0)
    assert (cache.token(key(1), now) is not None) is served
    assert len(cache) == (1 if served else 0)


def test_too_short_a_token_is_not_stored():
    """A token with the floor or less left when it arrives is not held."""
    cache = SubjectCache(10, floor=30.0)
    cache.store(key(1), token(30.0), now=0.0)
    assert len(cache) == 0


def test_lru_bound_evicts_the_least_recently_used():
    """Past max_entries, the least recently used token goes; a lookup counts as a use."""
    cache = SubjectCache(3, floor=0.0)
    for n in range(3):
        cache.store(key(n), token(100.0), now=0.0)
    assert cache.token(key(0), 1.0) is not None  # 0 is now the most recent
    cache.store(key(3), token(100.0), now=1.0)
    assert cache.token(key(1), 1.0) is None
    assert [cache.token(key(n), 1.0) is not None for n in (0, 2, 3)] == [True, True, True]
    assert (len(cache), cache.evictions) == (3, 1)


def test_rejections_are_remembered_until_they_lapse_and_bounded():
    """A rejection is answered until its instant; the oldest go beyond the bound."""
    cache = SubjectCache(2, floor=0.0)
    rejected = SubjectRejectedError("p", "rejected")
    for n in range(3):
        cache.remember(key(n), rejected, until=5.0)
    assert cache.rejections == 2
    assert cache.rejection(key(0), 1.0) is None
    assert cache.rejection(key(2), 4.9) is rejected
    assert cache.rejection(key(2), 5.0) is None
    cache.store(key(1), token(100.0), now=5.0)  # a token replaces a remembered rejection
    assert cache.rejection(key(1), 5.0) is None


def test_drop_forgets_token_and_rejection():
    """drop() forgets what a key holds and says whether it held anything."""
    cache = SubjectCache(10, floor=0.0)
    cache.store(key(1), token(100.0), now=0.0)
    cache.remember(key(2), SubjectRejectedError("p", "r"), until=10.0)
    assert (cache.drop(key(1)), cache.drop(key(2)), cache.drop(key(1))) == (True, True, False)


def test_storing_sweeps_dead_entries_at_most_once_a_minute():
    """Dead tokens and lapsed rejections go when a token is stored, once per SWEEP_INTERVAL."""
    cache = SubjectCache(100, floor=10.0)
    cache.store(key(0), token(50.0), now=0.0)  # the first store sweeps (nothing to sweep)
    cache.store(key(1), token(50.0), now=1.0)
    cache.remember(key(2), SubjectRejectedError("p", "r"), until=5.0)
    cache.store(key(3), token(500.0), now=SWEEP_INTERVAL - 1)  # too early: nothing swept
    assert (len(cache), cache.rejections) == (3, 1)
    cache.store(key(4), token(500.0), now=SWEEP_INTERVAL)
    assert (len(cache), cache.rejections) == (2, 0)
