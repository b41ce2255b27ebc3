"""ProfileRefresher: one profile's token, its refresh loop, serving, invalidate and bookkeeping.

One background task per profile makes every IdP request of the profile;
callers only wake it and wait, so single flight is structural. Minting is the
:class:`~sidecar.minter.TokenMinter`'s, waiting :func:`sidecar.policy.retry_delay`'s,
reports :class:`~sidecar.invalidation.Reports`', the outside view
:mod:`sidecar.profile_status`'s.

Invariants: a failed refresh never replaces a valid token; a token with
``min_ttl`` or less left is never served; callers wait only when nothing is
servable, on an event, bounded by ``wait_timeout``; transient failures back
off with full jitter but never past the token's servable end, 429s wait what
the IdP asked, rejections retry every 5 minutes or when credentials change.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from sidecar.clock import Clock, cancel_and_wait, wait_until
from sidecar.config import ProfileConfig
from sidecar.credentials import CredentialStore
from sidecar.errors import (
    FailureKind,
    IdPUnavailableError,
    InvalidTokenError,
    RefreshError,
    TokenUnavailableError,
)
from sidecar.fleet import (
    LOCK_MARGIN,
    CacheState,
    FleetRefresh,
    FleetRequest,
    FleetResult,
    SharedToken,
    identity_of,
)
from sidecar.instrumentation import ProfileInstruments
from sidecar.invalidation import ReportResult, Reports
from sidecar.metrics import Metrics
from sidecar.minter import TokenMinter
from sidecar.policy import retry_delay
from sidecar.profile_status import (
    LastError,
    ProfileState,
    fallback_reason,
    profile_state,
    served_stale,
    status_entry,
    unavailable_answer,
)
from sidecar.token import HeldToken, ServedToken

#: How often file-backed credentials are checked for a change.
WATCH_INTERVAL = 10.0


def _unobserved() -> None:
    return


@dataclass(frozen=True)
class RefreshContext:
    """The collaborators every refresher of a daemon shares."""

    metrics: Metrics
    clock: Clock
    rng: random.Random
    #: Where tokens are shared with other sidecars (memory: nowhere).
    fleet: FleetRefresh
    #: Called whenever a profile's held token changes (the cold-start file listens).
    token_changed: Callable[[], None] = _unobserved


class ProfileRefresher:
    """Keeps one profile's token warm; see the module docstring for the invariants."""

    def __init__(
        self,
        profile: ProfileConfig,
        context: RefreshContext,
        minter: TokenMinter,
        credentials: CredentialStore,
        *,
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        self.profile = profile
        self.name = profile.name
        self.minter = minter
        self._context = context
        self._clock = context.clock
        self._report = ProfileInstruments(context.metrics, profile.name)
        self._credentials = credentials
        self._watch_interval = watch_interval
        self._token: HeldToken | None = None
        self._identity: str | None = None  # identity_of() of the credentials _token came with
        self._failures = 0  # consecutive failed attempts, any kind
        self._transient_failures = 0  # consecutive transient ones: the backoff exponent
        self._not_before = 0.0  # no attempt before this monotonic instant
        self._last_error: LastError | None = None
        self._last_success_at: float | None = None  # UNIX time
        self._reports = Reports()
        self._force = False
        self._in_flight = False
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._parked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._shutting_down = False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the refresh loop; the first attempt goes out at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"refresh:{self.name}")

    @property
    def alive(self) -> bool:
        """Whether the refresh loop is running (``/livez``)."""
        return self._task is not None and not self._task.done()

    def shut_down(self) -> None:
        """Answer every waiting and later ``get()`` that must wait with ``shutting_down``."""
        self._shutting_down = True
        self._settled.set()  # wakes the waiters; each sees the flag and gives up

    async def aclose(self, timeout: float = 5.0) -> None:
        """Cancel the refresh loop and wait for it (bounded)."""
        task, self._task = self._task, None
        await cancel_and_wait(task, timeout)

    async def wait_idle(self) -> None:
        """Return once the loop is waiting for its next due instant (no attempt running)."""
        await self._parked.wait()

    def inherit_token(self, other: ProfileRefresher) -> None:
        """Take over the token of a refresher being replaced (config reload)."""
        self._token, self._identity = other._token, other._identity
        if self._token is not None:
            self._report.holds(self._token)

    def restore(self, token: HeldToken, identity: str) -> bool:
        """Hold ``token`` (vetted, from the cold-start file) unless a token is held already."""
        if self._token is not None:
            return False
        self._token, self._identity = token, identity
        self._report.holds(token)
        return True

    def withdraw(self, token_fingerprint: str) -> bool:
        """Stop holding the token ``token_fingerprint`` (it failed a late check); refresh now."""
        if self._token is None or self._token.fingerprint != token_fingerprint:
            return False
        self._token = self._identity = None
        self._context.token_changed()
        self._request_attempt()
        return True

    def held(self) -> tuple[str, HeldToken] | None:
        """The current token and its identity, or None: what the cold-start file holds.

        A token a caller reported is None here even when it is handed back
        (stale) for want of a replacement: a restart must not revive it.
        """
        token = self._token
        if token is None or self._identity is None or self._reports.is_reported(token):
            return None
        return self._identity, token

    # -- serving -----------------------------------------------------------

    @property
    def token(self) -> HeldToken | None:
        return self._token

    def serve_now(self, min_ttl: float | None = None) -> ServedToken | None:
        """The servable token now, without waiting; counts a fallback. The token API's hot path."""
        token = self._token
        if token is None:
            return None
        now = self._clock.monotonic()
        need = self.profile.min_ttl if min_ttl is None else max(min_ttl, self.profile.min_ttl)
        if token.expires_at - now <= need:
            return None
        # Refreshes succeeding and no report: fresh, without asking (the usual answer).
        stale = (self._failures > 0 or self._reports.rejected is not None) and served_stale(
            token, now=now, failures=self._failures, reported=self._reports.is_reported(token)
        )
        if stale:
            self._report.served_fallback(fallback_reason(self._last_kind))
        if self._context.fleet.cache.state is CacheState.DOWN:
            self._report.served_fallback("cache_backend_down")
        # Whole seconds left, rounded down (HeldToken.expires_in; positive here, past the check).
        return ServedToken(token, stale, int(token.expires_at - now))

    async def get(self, min_ttl: float | None = None) -> ServedToken:
        """A servable token with at least ``min_ttl`` left, waiting for a refresh if needed."""
        served = self.serve_now(min_ttl)
        if served is not None:
            return served
        need = self.profile.min_ttl if min_ttl is None else max(min_ttl, self.profile.min_ttl)
        deadline = self._clock.monotonic() + self.profile.wait_timeout
        while True:
            if self._shutting_down:
                raise self._unavailable("the sidecar is shutting down", code="shutting_down")
            if self._hopeless(deadline):
                return self._serve_withheld(min_ttl) or self._raise_hopeless()
            settled = self._settled
            if not self._in_flight:
                self._request_attempt()
            if not await wait_until(self._clock, settled, deadline - self._clock.monotonic()):
                served = self._serve_withheld(min_ttl)
                if served is None:
                    raise self._unavailable("timed out waiting for a token")
                return served
            served = self.serve_now(min_ttl)
            if served is not None:
                return served
            if self._failures == 0 and self._token is not None:
                # A fresh token arrived and still lives less than asked for.
                raise self._unavailable(f"the IdP issues tokens shorter than min_ttl {need:.0f}s")

    async def invalidate(self, token_fingerprint: str) -> tuple[str, ServedToken]:
        """Replace the current token if it is the reported one; answer the current valid token.

        Returns ``(result, served)``; see :class:`~sidecar.invalidation.Reports`.
        A reported token is withheld until its replacement arrives; when none
        can be had (the IdP fails, the circuit is open), it is served again
        flagged stale.
        """
        result = self.report(token_fingerprint)
        return result, await self.get()

    def report(self, token_fingerprint: str) -> ReportResult:
        """Note a downstream rejection of a token without waiting for its replacement.

        If it is the current token (and the throttle allows), it is withheld
        and a refresh starts now; :meth:`invalidate` is this plus waiting.
        """
        result = self._reports.report(self._token, token_fingerprint, self._clock.monotonic())
        dropped = None
        if result == "refreshed":
            dropped, self._token = token_fingerprint, None
            self._context.token_changed()
            if not self._in_flight:
                self._request_attempt()
        self._report.invalidated(result, dropped)
        return result

    def credentials_changed(self) -> None:
        """New credentials: forget backoff and misconfiguration, refresh at once."""
        self._report.credentials_changed()
        self._not_before = 0.0
        self._request_attempt()

    def _request_attempt(self) -> None:
        self._force = True
        self._wake.set()

    def _hopeless(self, deadline: float) -> bool:
        """Whether waiting cannot help: refreshes fail and the next attempt comes too late."""
        return bool(self._failures) and not self._in_flight and self._not_before > deadline

    def _raise_hopeless(self) -> NoReturn:
        code, message = unavailable_answer(self._last_error)
        retry_after = max(1.0, self._not_before - self._clock.monotonic())
        raise self._unavailable(message, code=code, retry_after=retry_after)

    def _hand_back_withheld(self) -> None:
        """No replacement came for a reported token: serve it again (stale) if it still serves."""
        if self._token is None:
            self._token = self._reports.hand_back(self._clock.monotonic(), self.profile.min_ttl)

    def _serve_withheld(self, min_ttl: float | None) -> ServedToken | None:
        self._hand_back_withheld()
        return self.serve_now(min_ttl) if self._token is not None else None

    def _unavailable(
        self, message: str, *, retry_after: float = 1.0, code: str = "token_unavailable"
    ) -> TokenUnavailableError:
        return TokenUnavailableError(self.name, message, code=code, retry_after=retry_after)

    @property
    def _last_kind(self) -> FailureKind | None:
        return self._last_error.kind if self._failures and self._last_error else None

    # -- the refresh loop -------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wait_until_due()
            try:
                await self._attempt()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported with its traceback, see below
                # The loop must outlive any bug in one attempt: log it with the
                # traceback, count it as an error, back off, and keep going.
                self._report.crashed(exc)
                self._failures += 1
                self._last_error = LastError(
                    FailureKind.ERROR, "internal", type(exc).__name__, self._clock.time()
                )
                self._not_before = self._clock.monotonic() + self.profile.backoff.cap
                self._hand_back_withheld()
            finally:
                self._in_flight = False
                settled, self._settled = self._settled, asyncio.Event()
                settled.set()

    def _due(self, now: float) -> float:
        if self._force:
            return max(now, self._not_before)
        if self._failures or self._token is None:
            return self._not_before
        return self._token.refresh_at

    async def _wait_until_due(self) -> None:
        while True:
            now = self._clock.monotonic()
            delay = self._due(now) - now
            if delay <= 0:
                break
            if self._credentials.watches_files:
                delay = min(delay, self._watch_interval)
            self._wake.clear()
            self._parked.set()
            await wait_until(self._clock, self._wake, delay)
            self._parked.clear()
            if self._credentials.changed():
                self.credentials_changed()
        self._force = False
        self._in_flight = True

    async def _attempt(self) -> None:
        start = self._clock.monotonic()
        try:
            creds = self._credentials.load()
            identity = identity_of(self.profile, creds.client_id)
            obtained = await self._context.fleet.obtain(
                FleetRequest(
                    profile=self.name,
                    identity=identity,
                    lock_ttl=self.profile.timeout + LOCK_MARGIN,
                    mint=functools.partial(self.minter.mint, creds),
                    hold_off_cap=self.profile.backoff.cap,
                    adopt=functools.partial(self._adoptable, client_id=creds.client_id),
                )
            )
        except RefreshError as exc:
            self._on_failure(exc)
        else:
            self._on_success(obtained, identity)
        finally:
            self._report.attempt_took(self._clock.monotonic() - start)

    async def _adoptable(self, shared: SharedToken, *, client_id: str) -> HeldToken | None:
        """``shared`` as our token if it outlives ours and is vetted; InvalidTokenError if bad."""
        wall, min_ttl = self._clock.time(), self.profile.min_ttl
        if shared.fingerprint == self._reports.rejected or not shared.outlives(
            self._token, wall_now=wall, min_ttl=min_ttl
        ):
            return None
        try:
            return await self.minter.vet_shared(shared, client_id)
        except (InvalidTokenError, IdPUnavailableError) as exc:
            self._report.shared_rejected(shared, exc)
            if isinstance(exc, InvalidTokenError):
                raise
            return None  # unverifiable now (JWKS down, kid in cooldown): mint instead

    def _on_success(self, obtained: FleetResult, identity: str) -> None:
        self._token, self._identity = obtained.token, identity
        self._reports.replaced()
        self._failures = self._transient_failures = 0
        self._not_before = 0.0
        self._last_success_at = self._clock.time()
        self._report.refreshed(obtained, now=self._clock.monotonic())
        self._context.token_changed()

    def _on_failure(self, exc: RefreshError) -> None:
        now = self._clock.monotonic()
        self._failures += 1
        self._last_error = LastError.of(exc, self._clock.time())
        self._hand_back_withheld()
        delay = self._retry_delay(exc, now)
        self._not_before = now + delay
        self._report.refresh_failed(
            exc, failures=self._failures, retry_in=delay, servable=self.servable()
        )

    def _retry_delay(self, exc: RefreshError, now: float) -> float:
        """How long to wait after ``exc``; counts a transient failure into the backoff exponent."""
        attempt = self._transient_failures + 1
        if exc.kind.transient:
            self._transient_failures = attempt
        token = self._token
        return retry_delay(
            exc.kind,
            attempt=attempt,
            backoff=self.profile.backoff,
            rng=self._context.rng,
            retry_after=exc.retry_after,
            servable_for=token.expires_at - self.profile.min_ttl - now if token else None,
        )

    # -- status ------------------------------------------------------------

    def state(self) -> ProfileState:
        token = self._token or self._reports.withheld
        return profile_state(
            token=token,
            now=self._clock.monotonic(),
            min_ttl=self.profile.min_ttl,
            failures=self._failures,
            last_kind=self._last_kind,
            in_flight=self._in_flight,
            reported=token is not None and self._reports.is_reported(token),
        )

    def servable(self) -> bool:
        """Whether the profile holds a servable token (a withheld reported one counts)."""
        token = self._token or self._reports.withheld
        return token is not None and token.servable(self._clock.monotonic(), self.profile.min_ttl)

    def status(self) -> dict[str, Any]:
        """The ``/status`` entry of this profile: states and instants, never a secret."""
        now = self._clock.monotonic()
        return status_entry(
            state=self.state(),
            token=self._token,
            now=now,
            wall_now=self._clock.time(),
            next_attempt_at=self._due(now) if self.alive else None,
            last_success_at=self._last_success_at,
            last_error=self._last_error,
            failures=self._failures,
            circuit=self.minter.circuit.value,
        )

    def __repr__(self) -> str:
        return (
            f"ProfileRefresher(name={self.name!r}, state={self.state().value}, "
            f"failures={self._failures}, token={self._token!r})"
        )
