"""ProfileExchanger: one exchange profile's callers, its cache and its single flights.

For each call: the effective scope (the profile's, or a narrower one the
caller asks for) and the key; then the cache (a live entry with more than
``min_ttl`` left is a *hit*, a remembered rejection is answered again:
*negative*); then an exchange already under way for the key (wait for it:
*coalesced*); else a *miss*: the user's token is checked locally
(:class:`~sidecar.subject.SubjectChecker`) and one task asks the IdP
(:class:`~sidecar.exchange.ExchangeMinter`) and stores the answer. Every
call counts exactly one lookup outcome; every refusal is counted once by
result and logged without its subject.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, NamedTuple

from sidecar.clock import Clock, cancel_and_wait, wait_until
from sidecar.config import ProfileConfig, SubjectConfig
from sidecar.errors import (
    BadExchangeRequestError,
    ExchangeDeniedError,
    ExchangeError,
    ExchangeUnavailableError,
    InvalidSubjectError,
    SubjectRejectedError,
)
from sidecar.exchange._cache import (
    ExchangedToken,
    SubjectCache,
    cache_key,
    key_prefix,
    keyed,
)
from sidecar.exchange._minter import ExchangeMinter
from sidecar.metrics import EXCHANGE_CACHE_OUTCOMES, Metrics
from sidecar.subject import Subject, SubjectChecker

log = logging.getLogger("sidecar.exchange")


class ExchangeAnswer(NamedTuple):
    """A per-user token handed to a caller.

    ``cached`` is true when this call caused no IdP request (a hit, or waiting
    on another caller's exchange); ``expires_in`` is whole seconds left then.
    """

    token: ExchangedToken
    cached: bool
    expires_in: int


class ProfileExchanger:
    """Exchanges users' tokens for one profile; see the module docstring for the steps.

    Invariants: at most one IdP request per key at any moment; a rejection
    never reaches the breaker; no entry is served with ``min_ttl`` or less left.
    """

    def __init__(
        self,
        profile: ProfileConfig,
        *,
        minter: ExchangeMinter,
        subjects: SubjectChecker,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.profile = profile
        self.name = profile.name
        self.minter = minter
        self._subjects = subjects
        self._metrics = metrics
        self._clock = clock
        # A profile built in code without a subject table: the IdP judges every token.
        self._subject_config = profile.subject or SubjectConfig(verify="none")
        self.cache = SubjectCache(profile.cache_max_entries, floor=profile.min_ttl)
        self._flights: dict[bytes, asyncio.Task[ExchangedToken]] = {}
        self._shutting_down = False
        # The metric's own series, read by /status too: counting is ``[0] += 1``.
        self._lookups = {
            outcome: metrics.exchange_cache_total.series(self.name, outcome)
            for outcome in EXCHANGE_CACHE_OUTCOMES
        }
        self._hits = self._lookups["hit"]
        self._last_error: dict[str, Any] | None = None
        self._profile_scope = _scope_words(profile.scope)
        self._profile_key_scope = " ".join(sorted(self._profile_scope))
        self._profile_key_prefix = key_prefix(self.name, self._profile_key_scope)

    # -- the caller's side -------------------------------------------------------

    def serve_now(
        self, subject_token: str, *, scope: str | None = None, min_ttl: float | None = None
    ) -> ExchangeAnswer | None:
        """A cache hit without awaiting anything, or None: then :meth:`exchange` must be awaited.

        Raises:
            ExchangeError: a remembered rejection, or a request the profile refuses.
        """
        if scope is None and min_ttl is None:  # the usual call: the hot path, inlined
            return self._from_cache(
                keyed(self._profile_key_prefix, subject_token), self.profile.min_ttl
            )
        _, key, need = self._lookup_key(subject_token, scope, min_ttl)
        return self._from_cache(key, need)

    async def exchange(
        self, subject_token: str, *, scope: str | None = None, min_ttl: float | None = None
    ) -> ExchangeAnswer:
        """A token for the user of ``subject_token``, with more than ``min_ttl`` seconds left.

        Raises:
            ExchangeError: the documented refusal (its ``status`` and ``code``).
        """
        sent_scope, key, need = self._lookup_key(subject_token, scope, min_ttl)
        answer = self._from_cache(key, need)
        if answer is not None:
            return answer
        if self._shutting_down:
            raise _shutting_down(self.name)
        flight = self._flights.get(key)
        leader = False
        if flight is None:
            subject = await self._check_subject(subject_token, need)
            # Another caller may have finished or started this exchange meanwhile.
            answer = self._from_cache(key, need)
            if answer is not None:
                return answer
            flight = self._flights.get(key)
            if flight is None:
                flight = self._take_off(key, subject_token, sent_scope, subject)
                leader = True
        self._lookup("miss" if leader else "coalesced")
        token = await self._wait(flight)
        return self._answer(token, need, cached=not leader)

    def drop(
        self, subject_token: str, scope: str | None = None, *, fingerprint: str | None = None
    ) -> bool:
        """Forget the cached token (and rejection) of this user and scope; whether one was held.

        Proxy mode calls this when an upstream answers 401 to an exchanged
        token, before it exchanges once more; it passes the ``fingerprint``
        of the token it sent, so a token another request already got in its
        place is kept.
        """
        _, key, _ = self._lookup_key(subject_token, scope, None)
        return self.cache.drop(key, fingerprint)

    def _lookup_key(
        self, subject_token: str, scope: str | None, min_ttl: float | None
    ) -> tuple[str | None, bytes, float]:
        """The scope to send, the cache key and the seconds a caller needs."""
        need = self.profile.min_ttl if min_ttl is None else max(min_ttl, self.profile.min_ttl)
        if scope is None:  # the usual call: the key's prefix is computed once
            return self.profile.scope, keyed(self._profile_key_prefix, subject_token), need
        sent_scope, key_scope = self.effective_scope(scope)
        return sent_scope, cache_key(self.name, key_scope, subject_token), need

    def effective_scope(self, scope: str | None) -> tuple[str | None, str]:
        """The scope to send (None: none) and its normalized form for the key.

        A caller's scope may only narrow the profile's; the request is refused
        otherwise (the scopes asked for are not echoed: they are request input).
        """
        if scope is None:
            return self.profile.scope, self._profile_key_scope
        wanted = list(dict.fromkeys(scope.split()))
        if not wanted:
            raise BadExchangeRequestError(self.name, "scope must name at least one scope")
        if any(word not in self._profile_scope for word in wanted):
            raise BadExchangeRequestError(
                self.name,
                "scope may only narrow the profile's scope: it names a scope the profile lacks",
            )
        return " ".join(wanted), " ".join(sorted(wanted))

    def _from_cache(self, key: bytes, need: float) -> ExchangeAnswer | None:
        """A hit, or a remembered rejection raised again; None when the IdP must be asked."""
        now = self._clock.monotonic()
        token = self.cache.token(key, now)
        if token is not None:
            left = token.expires_at - now
            if left > need:
                self._hits[0] += 1
                return ExchangeAnswer(token, cached=True, expires_in=int(left))
            if token.capped_by_subject:
                # A new exchange would end at the same instant: the user's token is too short.
                self._lookup("miss")
                raise self._refused(_too_short(self.name, need))
        rejection = self.cache.rejection(key, now)
        if rejection is not None:
            self._lookup("negative")
            raise rejection.copy()
        return None

    async def _check_subject(self, subject_token: str, need: float) -> Subject:
        try:
            return await self._subjects.check(
                self.name, self._subject_config, subject_token, min_ttl=need
            )
        except ExchangeError as exc:
            self._lookup("miss")
            raise self._refused(exc) from None

    async def _wait(self, flight: asyncio.Task[ExchangedToken]) -> ExchangedToken:
        """The flight's token, waiting at most ``wait_timeout``; its refusal as a copy."""
        if not flight.done():
            landed = asyncio.Event()
            flight.add_done_callback(lambda _: landed.set())
            if not await wait_until(self._clock, landed, self.profile.wait_timeout):
                raise ExchangeUnavailableError(
                    self.name, "timed out waiting for the IdP", retry_after=1.0
                )
        if flight.cancelled():
            raise _shutting_down(self.name)
        try:
            return flight.result()
        except ExchangeError as exc:
            raise exc.copy() from None

    def _answer(self, token: ExchangedToken, need: float, *, cached: bool) -> ExchangeAnswer:
        """``token`` for a caller that needs ``need`` seconds of it (it waited, or asked itself)."""
        now = self._clock.monotonic()
        if token.expires_at - now > need:
            return ExchangeAnswer(token, cached=cached, expires_in=token.expires_in(now))
        if token.capped_by_subject:
            raise self._refused(_too_short(self.name, need))
        raise self._refused(
            ExchangeUnavailableError(
                self.name, f"the IdP issues tokens shorter than min_ttl {need:g}s", retry_after=1.0
            )
        )

    def _lookup(self, outcome: str) -> None:
        self._lookups[outcome][0] += 1

    # -- the flight ----------------------------------------------------------------

    def _take_off(
        self, key: bytes, subject_token: str, scope: str | None, subject: Subject
    ) -> asyncio.Task[ExchangedToken]:
        """Start the one exchange of ``key``; every caller of the key waits for this task."""
        flight = asyncio.create_task(
            self._fly(key, subject_token, scope, subject), name=f"exchange:{self.name}"
        )
        self._flights[key] = flight
        flight.add_done_callback(functools.partial(self._landed, key))
        return flight

    def _landed(self, key: bytes, flight: asyncio.Task[ExchangedToken]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if flight.cancelled():
            return
        exc = flight.exception()  # retrieved here, so a flight nobody waited for stays quiet
        if exc is not None and not isinstance(exc, ExchangeError):
            # A bug below us: the callers get a 500; the log has the traceback.
            log.error("exchange.crashed", exc_info=exc, extra={"profile": self.name})

    async def _fly(
        self, key: bytes, subject_token: str, scope: str | None, subject: Subject
    ) -> ExchangedToken:
        """One IdP exchange: stored on success, remembered when the IdP rejects the user."""
        started = self._clock.monotonic()
        try:
            token = await self.minter.mint(subject_token, scope, subject)
        except ExchangeError as exc:
            if isinstance(exc, SubjectRejectedError | ExchangeDeniedError) and (
                self.profile.negative_ttl > 0
            ):
                until = self._clock.monotonic() + self.profile.negative_ttl
                self.cache.remember(key, exc.copy(), until)
            raise self._refused(exc) from None
        now = self._clock.monotonic()
        self.cache.store(key, token, now)
        self._metrics.exchange_total.labels(self.name, "success").inc()
        log.debug(
            "exchange.issued",
            extra={
                "profile": self.name,
                "fingerprint": token.fingerprint,
                "expires_in": token.expires_in(now),
                "capped_by_subject": token.capped_by_subject,
                "took": round(now - started, 3),
            },
        )
        return token

    def _refused(self, exc: ExchangeError) -> ExchangeError:
        """Count and log a refusal the caller is about to get; return it for raising."""
        if exc.result is not None:
            self._metrics.exchange_total.labels(self.name, exc.result).inc()
        self._last_error = {
            "kind": exc.result or exc.code,
            "error": exc.error,
            "description": exc.description or exc.message,
            "at": int(self._clock.time()),
        }
        level = logging.DEBUG if isinstance(exc, InvalidSubjectError) else logging.WARNING
        if isinstance(exc, SubjectRejectedError):
            level = logging.INFO
        log.log(
            level,
            "exchange.failed",
            extra={
                "profile": self.name,
                "kind": exc.result or exc.code,
                "error": exc.error,
                "description": exc.description or exc.message,
            },
        )
        return exc

    # -- lifecycle and status ---------------------------------------------------------

    def entries(self) -> float:
        """Tokens held now (the ``exchange_cache_entries`` gauge reads this at each scrape)."""
        return float(len(self.cache))

    def status(self) -> dict[str, Any]:
        """The ``/status`` entry: counts and the last error, never a subject or a token."""
        lookups = {outcome: int(series[0]) for outcome, series in self._lookups.items()}
        answered = lookups["hit"] + lookups["miss"]
        return {
            "grant": self.profile.grant,
            "entries": len(self.cache),
            "max_entries": self.cache.max_entries,
            "hits": lookups["hit"],
            "misses": lookups["miss"],
            "coalesced": lookups["coalesced"],
            "negative": lookups["negative"],
            "hit_ratio": round(lookups["hit"] / answered, 4) if answered else None,
            "in_flight": len(self._flights),
            "circuit": self.minter.breaker.state.value,
            "last_error": self._last_error,
        }

    def shut_down(self) -> None:
        """SIGTERM: exchanges under way end now (their callers get 503 ``shutting_down``).

        Cached tokens are still served during the grace; a miss is refused
        at once instead of starting an exchange that could outlive the process.
        """
        self._shutting_down = True
        for flight in self._flights.values():
            flight.cancel()

    async def aclose(self, timeout: float = 5.0) -> None:
        """Cancel the exchanges under way (their callers get ``shutting_down``) and forget all."""
        flights = list(self._flights.values())
        await asyncio.gather(*(cancel_and_wait(f, timeout) for f in flights))
        self.cache.clear()

    def __repr__(self) -> str:
        return f"ProfileExchanger(profile={self.name!r}, cache={self.cache!r})"


def _scope_words(scope: str | None) -> frozenset[str]:
    return frozenset(scope.split()) if scope else frozenset()


def _shutting_down(profile: str) -> ExchangeUnavailableError:
    return ExchangeUnavailableError(
        profile, "the sidecar is shutting down", retry_after=1.0, code="shutting_down"
    )


def _too_short(profile: str, need: float) -> InvalidSubjectError:
    return InvalidSubjectError(
        profile,
        f"the subject token has less than min_ttl ({need:g}s) left",
        description="the subject expires before min_ttl",
    )
