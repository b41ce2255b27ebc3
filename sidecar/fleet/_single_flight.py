"""FleetRefresh: adopt the fleet's token, or refresh under the fleet lock and share it.

One algorithm over any :class:`~sidecar.fleet.TokenCache`; with the memory
backend it reduces to "ask the IdP". A refresher calls :meth:`FleetRefresh.obtain`
where it used to call the IdP:

1. read the shared token; if it is better than ours (the refresher decides),
   adopt it: no IdP request;
2. else try the fleet lock; the holder reads once more (a value may have
   landed meanwhile), asks the IdP, writes the result, releases the lock and
   notifies;
3. the others wait for that notification, bounded by the lock TTL (a holder
   that dies loses the lock at its TTL), and start again at 1, at most
   :data:`MAX_ROUNDS` times; then they mint for themselves.

A holder whose IdP request fails transiently or is rate limited shares the
failure as a hold-off (:data:`HOLD_OFF_SECONDS`, or the IdP's ``Retry-After``):
until it passes, the rest of the fleet fails its attempt at once, without an
IdP request, and backs off on its own schedule. Backoff and 429 waits thus
apply fleet-wide, bounded: a hold-off counts for at most the profile's backoff
cap (a 429's at most an hour) from when a sidecar first sees it, whatever
its ``until`` says. Rejections are not shared: they may be one sidecar's own
credentials.

When the backend is down, or fails on the way, the refresher asks the IdP on
its own (``Source.LOCAL``): serving never fails because of the cache.
Refresh-ahead timing, jitter, backoff and the breaker stay in the refresher.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sidecar.clock import Clock, wait_until
from sidecar.errors import (
    CacheUnavailableError,
    FailureKind,
    IdPRateLimitedError,
    IdPTimeoutError,
    IdPUnavailableError,
    InvalidTokenError,
    RefreshError,
)
from sidecar.fleet._cache import CacheState, SharedFailure, SharedToken, TokenCache
from sidecar.idp import MAX_RETRY_AFTER
from sidecar.token import HeldToken

log = logging.getLogger("sidecar.fleet")

#: Seconds added to a profile's IdP ``timeout`` for the lock TTL (verification, writes).
LOCK_MARGIN = 2.0
#: How many times a sidecar waits for another holder before giving up this attempt.
MAX_ROUNDS = 3
#: Waiters wait this much past the lock TTL, so a dead holder's lock has surely expired.
WAIT_GRACE = 0.25
#: How long a peer's transient IdP failure keeps the rest of the fleet from the IdP.
HOLD_OFF_SECONDS = 2.0


class Source(enum.Enum):
    """Where a refreshed token came from."""

    IDP = "idp"  # minted here and shared
    SHARED = "shared"  # adopted from the fleet: no IdP request
    LOCAL = "local"  # minted here without the shared cache (backend down)


@dataclass(frozen=True)
class FleetResult:
    """A refreshed token and where it came from."""

    token: HeldToken
    source: Source


@dataclass(frozen=True)
class FleetRequest:
    """One refresh: the token identity, how to mint, and when a shared token is better."""

    profile: str
    identity: str
    lock_ttl: float
    mint: Callable[[], Awaitable[HeldToken]]
    #: The longest a peer's non-429 hold-off may keep this sidecar from the IdP (backoff cap).
    hold_off_cap: float
    #: This refresher's view of a shared token, or None when it is no better than ours
    #: or cannot be vetted now; raises InvalidTokenError when it is bad (then dropped).
    adopt: Callable[[SharedToken], Awaitable[HeldToken | None]]


class FleetRefresh:
    """Runs fleet single flight over one cache; shared by every refresher of a daemon."""

    def __init__(self, cache: TokenCache, clock: Clock) -> None:
        self.cache = cache
        self._clock = clock
        #: Per identity: the hold-off last seen and the monotonic instant it was first seen.
        self._first_seen: dict[str, tuple[SharedFailure, float]] = {}

    async def obtain(self, request: FleetRequest) -> FleetResult:
        """A new token for ``request``; IdP errors from ``mint`` propagate unchanged."""
        if self.cache.backend == "memory":
            # Nothing is shared: no fleet to coordinate, no fleet events to log.
            return FleetResult(await request.mint(), Source.IDP)
        if self.cache.state is CacheState.DOWN:
            return FleetResult(await request.mint(), Source.LOCAL)
        try:
            return await self._through_cache(request)
        except CacheUnavailableError:
            # Nothing was minted yet (a failed write is handled in _mint_and_share).
            return FleetResult(await request.mint(), Source.LOCAL)

    async def _through_cache(self, request: FleetRequest) -> FleetResult:
        for _ in range(MAX_ROUNDS):
            # Watch before reading, so a write between the read and the wait is not missed.
            async with self.cache.watch(request.identity) as written:
                adopted = await self._adoptable(request)
                if adopted is not None:
                    return adopted
                await self._raise_if_held_off(request)
                async with self.cache.lock(request.identity, request.lock_ttl) as held:
                    if held:
                        return await self._adoptable(request) or await self._mint_and_share(request)
                log.debug("fleet.waiting", extra={"bound": request.lock_ttl})
                await wait_until(self._clock, written, request.lock_ttl + WAIT_GRACE)
        # The lock outlived every bound and nobody shared a token (a holder stuck or a
        # planted lock): mint for ourselves rather than fail.
        return await self._adoptable(request) or await self._mint_and_share(request)

    async def _adoptable(self, request: FleetRequest) -> FleetResult | None:
        shared = await self.cache.read(request.identity)
        if shared is None:
            return None
        try:
            token = await request.adopt(shared)
        except InvalidTokenError:
            # Provably bad (forged, another client's, inconsistent): drop it so that
            # no peer trips over it again; a newer value written meanwhile stays.
            await self.cache.discard(request.identity, shared)
            return None
        return FleetResult(token, Source.SHARED) if token is not None else None

    async def _mint_and_share(self, request: FleetRequest) -> FleetResult:
        log.info(
            "fleet.refreshing", extra={"profile": request.profile, "lock_ttl": request.lock_ttl}
        )
        try:
            token = await request.mint()
        except (IdPUnavailableError, IdPRateLimitedError) as exc:
            await self._share_failure(request, exc)
            raise
        try:
            await self.cache.write(request.identity, SharedToken.of(token))
        except CacheUnavailableError:
            return FleetResult(token, Source.LOCAL)
        return FleetResult(token, Source.IDP)

    async def _share_failure(self, request: FleetRequest, exc: RefreshError) -> None:
        wait = exc.retry_after if isinstance(exc, IdPRateLimitedError) else None
        failure = SharedFailure(
            kind=exc.kind,
            error=exc.error,
            description=exc.description or str(exc),
            until=self._clock.time() + (wait or HOLD_OFF_SECONDS),
        )
        try:
            await self.cache.hold_off(request.identity, failure)
        except CacheUnavailableError:
            return  # the others find out by themselves; nothing is lost

    async def _raise_if_held_off(self, request: FleetRequest) -> None:
        """Fail this attempt without an IdP request while a peer's failure is fresh."""
        failure = await self.cache.held_off(request.identity)
        remaining = self._bounded(request, failure)
        if failure is None or remaining <= 0:
            return
        description = f"held off by another sidecar: {failure.description or failure.kind}"
        if failure.kind == FailureKind.RATE_LIMITED:
            raise IdPRateLimitedError(
                "the IdP rate-limited another sidecar",
                retry_after=remaining,
                error=failure.error,
                description=description,
            )
        error_type = IdPTimeoutError if failure.kind == FailureKind.TIMEOUT else IdPUnavailableError
        raise error_type(
            "another sidecar's refresh failed moments ago",
            error=failure.error,
            description=description,
        )

    def _bounded(self, request: FleetRequest, failure: SharedFailure | None) -> float:
        """Seconds ``failure`` still holds this sidecar off: at most its cap from first sight.

        The cap is the IdP's ``Retry-After`` (at most an hour) for a rate limit,
        else the profile's backoff cap; it counts from when this sidecar first
        saw the value, so a planted or skewed ``until`` cannot park it longer.
        """
        if failure is None:
            self._first_seen.pop(request.identity, None)
            return 0.0
        now = self._clock.monotonic()
        seen, since = self._first_seen.get(request.identity, (None, now))
        if seen != failure:
            since = now
            self._first_seen[request.identity] = (failure, since)
        cap = MAX_RETRY_AFTER if failure.kind == FailureKind.RATE_LIMITED else request.hold_off_cap
        # The backend's expiry is only cleanup: the instant in the value decides, bounded.
        return min(failure.until - self._clock.time(), since + cap - now)
