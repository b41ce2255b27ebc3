"""Scheduling policy as pure functions: when to refresh, how long to wait after each failure kind.

Nothing here reads a clock, sleeps or does I/O; every input is an argument,
and randomness comes from an injected ``random.Random``, so tests can assert
exact instants.
"""

from __future__ import annotations

import math
import random

from sidecar.config import BackoffConfig, RefreshBefore
from sidecar.errors import FailureKind

#: Refresh no later than this many seconds before expiry, or half-life if shorter.
REFRESH_FLOOR_SECONDS = 60.0
#: The refresh instant moves earlier by up to this share of the refresh window.
JITTER_SHARE = 0.1
#: The shortest time between receiving a token and refreshing it, if it serves that long.
MIN_REFRESH_GAP = 1.0
#: How long a misconfigured profile waits before asking the IdP again.
MISCONFIGURED_RETRY_SECONDS = 300.0


def refresh_window(lifetime: float, refresh_before: RefreshBefore, min_ttl: float) -> float:
    """Seconds before expiry at which a refresh becomes due (before jitter).

    The configured window, but never less than min(60 s, half the lifetime),
    so short tokens refresh at half-life at the latest. A window longer than
    the whole lifetime would refresh on receipt forever; it becomes half-life.
    A window shorter than ``min_ttl`` would let the token become unservable
    before its refresh; it grows to ``min_ttl``.
    """
    if lifetime <= 0:
        return 0.0
    window = max(refresh_before.window(lifetime), min(REFRESH_FLOOR_SECONDS, lifetime / 2))
    if window >= lifetime:
        window = lifetime / 2
    return min(max(window, min_ttl), lifetime)


def refresh_at(
    *,
    obtained_at: float,
    expires_at: float,
    refresh_before: RefreshBefore,
    min_ttl: float,
    rng: random.Random,
) -> float:
    """The monotonic instant a token obtained at ``obtained_at`` should be refreshed."""
    lifetime = expires_at - obtained_at
    window = refresh_window(lifetime, refresh_before, min_ttl)
    jitter = rng.uniform(0.0, JITTER_SHARE * window)
    # Never refresh before half the servable span has passed (and never sooner
    # than MIN_REFRESH_GAP, while the token still serves): a token that lives
    # barely longer than min_ttl must not make the loop mint back to back.
    servable_end = expires_at - min_ttl
    earliest = min(
        obtained_at + max(MIN_REFRESH_GAP, (servable_end - obtained_at) / 2), servable_end
    )
    return max(obtained_at, earliest, expires_at - window - jitter)


def backoff_ceiling(attempt: int, *, base: float, cap: float) -> float:
    """The upper bound of the ``attempt``-th (1-based) exponential backoff, clamped to ``cap``.

    Safe for any attempt number: the exponent is bounded before it is computed.
    """
    if attempt <= 0:
        return 0.0
    # 2**exponent overflows floats near 1024; far earlier the cap wins anyway.
    exponent = min(attempt - 1, 64)
    return min(cap, base * math.pow(2.0, exponent))


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    rng: random.Random,
    servable_for: float | None = None,
) -> float:
    """Full-jitter backoff for the ``attempt``-th consecutive failure.

    ``servable_for`` is how long the current token stays servable; the delay
    never sleeps past that point, so the last chance to refresh is not missed.
    """
    delay = rng.uniform(0.0, backoff_ceiling(attempt, base=base, cap=cap))
    if servable_for is not None and servable_for > 0:
        delay = min(delay, servable_for)
    return delay


def rate_limit_delay(
    *,
    retry_after: float | None,
    fallback: float,
) -> float:
    """How long to wait after a 429: what the IdP asked for, else the usual backoff."""
    if retry_after is not None and retry_after > 0:
        return retry_after
    return fallback


def retry_delay(
    kind: FailureKind,
    *,
    attempt: int,
    backoff: BackoffConfig,
    rng: random.Random,
    retry_after: float | None = None,
    servable_for: float | None = None,
) -> float:
    """How long to wait before the next attempt after a failure of ``kind`` (DESIGN lifecycle).

    ``attempt`` is the 1-based number of this failure among consecutive
    transient ones (for a 429 without a wait of its own: the one it would
    be); ``retry_after`` is what a 429 or an open circuit asked for;
    ``servable_for`` how long the current token stays servable.
    """
    if kind.transient:
        return backoff_delay(
            attempt, base=backoff.base, cap=backoff.cap, rng=rng, servable_for=servable_for
        )
    if kind is FailureKind.RATE_LIMITED:
        fallback = backoff_delay(attempt, base=backoff.base, cap=backoff.cap, rng=rng)
        return rate_limit_delay(retry_after=retry_after, fallback=fallback)
    if kind is FailureKind.CIRCUIT_OPEN:
        return retry_after if retry_after is not None else backoff.base
    return MISCONFIGURED_RETRY_SECONDS
