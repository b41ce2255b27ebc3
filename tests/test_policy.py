"""Refresh timing and backoff are pure functions with exact, table-driven results."""

import random

import pytest

from sidecar.config import BackoffConfig, RefreshDuration, RefreshShare
from sidecar.errors import FailureKind
from sidecar.policy import (
    backoff_ceiling,
    backoff_delay,
    rate_limit_delay,
    refresh_at,
    refresh_window,
    retry_delay,
)

SHARE_20 = RefreshShare(0.2)


@pytest.mark.parametrize(
    ("lifetime", "refresh_before", "min_ttl", "expected"),
    [
        (86400, SHARE_20, 30, 17280),  # 20 % of a day
        (86400, RefreshDuration(300), 30, 300),  # a fixed 5 minutes
        (3600, RefreshDuration(10 * 60), 30, 600),
        (100, SHARE_20, 10, 50),  # floor min(60, 50) = 50 beats 20 s: half-life
        (300, SHARE_20, 30, 60),  # floor of 60 s beats 20 % = 60 s: equal
        (600, SHARE_20, 30, 120),  # 20 % beats the 60 s floor
        (60, RefreshDuration(120), 10, 30),  # window >= lifetime: half-life
        (40, SHARE_20, 30, 30),  # half-life 20 s < min_ttl: refresh at the servable line
        (0, SHARE_20, 30, 0),
    ],
)
def test_refresh_window(lifetime, refresh_before, min_ttl, expected):
    """The refresh window follows DESIGN.md: configured, floored, and never past the lifetime."""
    assert refresh_window(lifetime, refresh_before, min_ttl) == expected


class _FixedRandom(random.Random):
    """A Random whose uniform() returns the upper bound: worst-case jitter."""

    def uniform(self, _a: float, b: float) -> float:
        return b


def test_refresh_at_moves_earlier_by_at_most_ten_percent_of_window():
    """Jitter moves the refresh instant earlier by up to 10 % of the window, never later."""
    at = refresh_at(
        obtained_at=0.0,
        expires_at=86400.0,
        refresh_before=SHARE_20,
        min_ttl=30,
        rng=_FixedRandom(),
    )
    assert at == 86400 - 17280 - 1728


@pytest.mark.parametrize(
    ("lifetime", "min_ttl", "earliest"),
    [(31.0, 30.0, 1.0), (3600.0, 3590.0, 5.0), (40.0, 30.0, 7.0), (30.5, 30.0, 0.5)],
)
def test_barely_servable_tokens_do_not_refresh_on_receipt(lifetime, min_ttl, earliest):
    """A token barely longer-lived than min_ttl waits half its servable span before refreshing."""
    at = refresh_at(
        obtained_at=0.0,
        expires_at=lifetime,
        refresh_before=SHARE_20,
        min_ttl=min_ttl,
        rng=_FixedRandom(),
    )
    assert at == earliest


def test_refresh_at_spreads_a_fleet():
    """Fifty instances started together get fifty different refresh instants within the band."""
    rng = random.Random(7)
    instants = [
        refresh_at(
            obtained_at=0.0, expires_at=86400.0, refresh_before=SHARE_20, min_ttl=30, rng=rng
        )
        for _ in range(50)
    ]
    assert len(set(instants)) == 50
    assert all(86400 - 17280 - 1728 <= t <= 86400 - 17280 for t in instants)
    assert max(instants) - min(instants) > 1000


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (100, 60.0), (10**9, 60.0)],
)
def test_backoff_ceiling(attempt, expected):
    """The backoff ceiling doubles from base and clamps to cap, even for huge attempt numbers."""
    assert backoff_ceiling(attempt, base=1.0, cap=60.0) == expected


def test_backoff_delay_is_full_jitter():
    """Full jitter draws uniformly between zero and the ceiling."""
    rng = random.Random(1)
    expected = random.Random(1).uniform(0.0, 8.0)
    assert backoff_delay(4, base=1.0, cap=60.0, rng=rng) == expected


def test_backoff_never_sleeps_past_the_servable_end():
    """A backoff longer than the token's remaining servable time is cut to that time."""
    assert backoff_delay(50, base=1.0, cap=60.0, rng=_FixedRandom(), servable_for=12.5) == 12.5


@pytest.mark.parametrize(
    ("retry_after", "fallback", "expected"),
    [(30.0, 2.0, 30.0), (None, 2.0, 2.0), (0.0, 2.0, 2.0)],
)
def test_rate_limit_delay(retry_after, fallback, expected):
    """A 429 waits what the IdP asked for, else the usual backoff."""
    assert rate_limit_delay(retry_after=retry_after, fallback=fallback) == expected


BACKOFF = BackoffConfig(base=1.0, cap=60.0)


@pytest.mark.parametrize(
    ("kind", "attempt", "retry_after", "servable_for", "expected"),
    [
        (FailureKind.ERROR, 1, None, None, 1.0),  # first transient failure: base
        (FailureKind.TIMEOUT, 4, None, None, 8.0),  # doubles per consecutive failure
        (FailureKind.ERROR, 100, None, None, 60.0),  # capped
        (FailureKind.ERROR, 7, None, 5.0, 5.0),  # never past the servable end
        (FailureKind.RATE_LIMITED, 1, 30.0, None, 30.0),  # what the IdP asked for
        (FailureKind.RATE_LIMITED, 3, None, None, 4.0),  # no ask: the backoff it would be
        (FailureKind.RATE_LIMITED, 1, 30.0, 5.0, 30.0),  # a 429's wait is not shortened
        (FailureKind.CIRCUIT_OPEN, 1, 12.5, None, 12.5),  # until the breaker lets a probe by
        (FailureKind.CIRCUIT_OPEN, 1, None, None, 1.0),  # no reset known: the backoff base
        (FailureKind.REJECTED, 9, None, None, 300.0),  # misconfigured: every 5 minutes
        (FailureKind.INVALID_TOKEN, 1, None, 5.0, 300.0),
    ],
)
def test_retry_delay(kind, attempt, retry_after, servable_for, expected):
    """Each failure kind waits as DESIGN.md's lifecycle rules say."""
    delay = retry_delay(
        kind,
        attempt=attempt,
        backoff=BACKOFF,
        rng=_FixedRandom(),
        retry_after=retry_after,
        servable_for=servable_for,
    )
    assert delay == expected


def test_only_error_and_timeout_are_transient():
    """Exactly the transient kinds back off exponentially; exactly two mean misconfigured."""
    assert {k for k in FailureKind if k.transient} == {FailureKind.ERROR, FailureKind.TIMEOUT}
    assert {k for k in FailureKind if k.misconfigured} == {
        FailureKind.REJECTED,
        FailureKind.INVALID_TOKEN,
    }
