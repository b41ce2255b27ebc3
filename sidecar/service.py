"""TokenService: every profile's refresher, the shared breakers, readiness, status and reloads.

One :class:`TokenService` per daemon. It builds a :class:`ProfileRefresher`
(with its :class:`TokenMinter`) per client-credentials profile, and an
:class:`~sidecar.exchange.ExchangeService` for the token exchange profiles
(no refresh loop: per-user tokens are exchanged on request), shares one
:class:`CircuitBreaker` per token endpoint between the profiles that use it,
holds the proxy's :class:`~sidecar.proxy.Upstreams`, answers readiness and
status, and applies a new config without disturbing profiles or upstreams
whose config did not change.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
from collections.abc import Mapping
from typing import Any

import aiohttp

from sidecar._version import __version__
from sidecar.breaker import CircuitBreaker, CircuitState
from sidecar.clock import Clock, SystemClock, cancel_and_wait
from sidecar.config import Config, ProfileConfig, url_view
from sidecar.credentials import CredentialStore
from sidecar.errors import UnknownProfileError
from sidecar.exchange import ExchangeService
from sidecar.fleet import CacheState, FleetRefresh, TokenCache, make_cache
from sidecar.idp import IdPClient
from sidecar.metrics import Metrics
from sidecar.minter import TokenMinter
from sidecar.persist import Restored, TokenFile, confirm_signature, make_token_file, restore_tokens
from sidecar.proxy import ResolverFactory, Upstreams
from sidecar.refresher import WATCH_INTERVAL, ProfileRefresher, RefreshContext
from sidecar.token import HeldToken, ServedToken
from sidecar.verify import TokenVerifier

log = logging.getLogger("sidecar.service")


class TokenService:
    """All profiles of one daemon. Owns their tasks; :meth:`aclose` ends them all."""

    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        environ: Mapping[str, str] | None = None,
        watch_interval: float = WATCH_INTERVAL,
        cache: TokenCache | None = None,
        upstream_resolver: ResolverFactory | None = None,
    ) -> None:
        clock = clock if clock is not None else SystemClock()
        self.metrics = metrics if metrics is not None else Metrics()
        self.config = config
        self.cache = cache if cache is not None else make_cache(config, clock, self.metrics)
        #: The cold-start file (``[cache] persist_file``), or None.
        self.token_file: TokenFile | None = make_token_file(config, clock, self.metrics)
        self._context = RefreshContext(
            metrics=self.metrics,
            clock=clock,
            rng=rng if rng is not None else random.Random(),  # noqa: S311 - jitter, not crypto
            fleet=FleetRefresh(self.cache, clock),
            token_changed=self.token_file.changed if self.token_file else lambda: None,
        )
        self._idp = IdPClient(session, clock)
        self._verifier = TokenVerifier(session, clock)
        self._environ = environ if environ is not None else os.environ
        self._watch_interval = watch_interval
        self._breakers: dict[str, CircuitBreaker] = {}
        self.refreshers: dict[str, ProfileRefresher] = {
            name: self._make_refresher(profile)
            for name, profile in config.profiles.items()
            if not profile.exchanges
        }
        #: The token exchange profiles: per-user tokens, exchanged on request.
        self.exchanges = ExchangeService(
            _exchange_profiles(config),
            idp=self._idp,
            verifier=self._verifier,
            breaker_for=self._breaker,
            metrics=self.metrics,
            clock=clock,
            environ=self._environ,
        )
        self.upstreams = Upstreams(
            config.upstreams,
            refresher_for=self.refresher_for,
            exchanges=self.exchanges,
            metrics=self.metrics,
            clock=clock,
            resolver=upstream_resolver,
        )
        self._started = False
        self._checks: set[asyncio.Task[None]] = set()  # signature checks of restored tokens

    @property
    def clock(self) -> Clock:
        return self._context.clock

    def _breaker(self, profile: ProfileConfig) -> CircuitBreaker:
        """The breaker of the profile's token endpoint; the first profile's settings win."""
        breaker = self._breakers.get(profile.token_url)
        if breaker is None:
            breaker = CircuitBreaker(
                self._context.clock,
                failures=profile.breaker.failures,
                reset=profile.breaker.reset,
                name=url_view(profile.token_url),  # it is logged: no password, no query
            )
            breaker.add_listener(functools.partial(self._on_circuit, breaker, profile.token_url))
            self._breakers[profile.token_url] = breaker
        return breaker

    def _on_circuit(
        self, breaker: CircuitBreaker, token_url: str, old: CircuitState, new: CircuitState
    ) -> None:
        event = {"open": "circuit.opened", "half_open": "circuit.half_opened"}.get(
            new.value, "circuit.closed"
        )
        users = [r.name for r in self.refreshers.values() if r.profile.token_url == token_url]
        users += [
            e.name for e in self.exchanges.exchangers.values() if e.profile.token_url == token_url
        ]
        level = logging.WARNING if new is CircuitState.OPEN else logging.INFO
        log.log(
            level,
            event,
            extra={"endpoint": breaker.name, "from": old.value, "profiles": users},
        )
        for name in users:
            self.metrics.circuit_state.labels(name).set(new.gauge)

    def _make_refresher(self, profile: ProfileConfig) -> ProfileRefresher:
        self.metrics.add_profile(profile.name)
        minter = TokenMinter(
            profile,
            idp=self._idp,
            verifier=self._verifier,
            breaker=self._breaker(profile),
            clock=self._context.clock,
            rng=self._context.rng,
        )
        return ProfileRefresher(
            profile,
            self._context,
            minter,
            CredentialStore(profile, self._environ),
            watch_interval=self._watch_interval,
        )

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Serve what the cold-start file holds, then start every profile's refresh loop."""
        self._started = True
        self.cache.start()
        if self.token_file is not None:
            self._restore(self.token_file)
        for refresher in self.refreshers.values():
            refresher.start()

    def _restore(self, token_file: TokenFile) -> None:
        """Take the file's valid tokens before any loop runs; write it back (also a write test)."""
        context = self._context
        for restored in restore_tokens(
            token_file,
            self.refreshers.values(),
            environ=self._environ,
            clock=context.clock,
            metrics=self.metrics,
        ):
            if restored.refresher.profile.verified:
                self._check_later(restored)
        token_file.start(self._held_tokens)
        token_file.changed()

    def _check_later(self, restored: Restored) -> None:
        context = self._context
        task = asyncio.create_task(
            confirm_signature(restored, clock=context.clock, metrics=self.metrics, rng=context.rng),
            name=f"persist:check:{restored.refresher.name}",
        )
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    def _held_tokens(self) -> list[tuple[str, HeldToken]]:
        """What the cold-start file should hold: each profile's token and its identity."""
        return [held for r in self.refreshers.values() if (held := r.held()) is not None]

    def begin_shutdown(self) -> None:
        """Callers waiting for a refresh get 503 ``shutting_down`` now, not at the grace's end."""
        for refresher in self.refreshers.values():
            refresher.shut_down()
        self.exchanges.shut_down()

    async def aclose(self) -> None:
        """Stop every refresh loop and exchange (bounded); close the upstream clients."""
        await asyncio.gather(*(cancel_and_wait(task, 5.0) for task in list(self._checks)))
        await asyncio.gather(*(r.aclose() for r in self.refreshers.values()))
        await self.exchanges.aclose()
        if self.token_file is not None:
            await self.token_file.aclose()
        await self.upstreams.aclose()
        await self.cache.aclose()

    async def reload(self, config: Config) -> None:
        """Apply ``config``: unchanged profiles keep running; changed ones restart warm."""
        old = self.refreshers
        await self.exchanges.reload(_exchange_profiles(config))
        new = self.refreshers = self._next_refreshers(config, old)
        if self.token_file is not None:
            self.token_file.changed()  # a removed or changed profile leaves the file
        self.upstreams.reload(config.upstreams)
        self.config = config
        # Start the new loops before stopping the old ones: /livez never sees
        # a profile without a running loop.
        if self._started:
            for refresher in new.values():
                refresher.start()
        stopped = [r for name, r in old.items() if new.get(name) is not r]
        await asyncio.gather(*(r.aclose() for r in stopped))
        for refresher in stopped:
            if refresher.name not in new:
                self.metrics.remove_profile(refresher.name)
        for exchanger in self.exchanges.exchangers.values():
            # A profile that became an exchange profile lost its gauge with its refresher.
            state = exchanger.minter.breaker.state
            self.metrics.circuit_state.labels(exchanger.name).set(state.gauge)
        log.info(
            "config.reloaded",
            extra={
                "source": config.source,
                "restarted": sorted(r.name for r in stopped if r.name in new),
                "removed": sorted(r.name for r in stopped if r.name not in new),
                "added": sorted(set(new) - set(old)),
                "exchange_profiles": sorted(self.exchanges.exchangers),
            },
        )

    def _next_refreshers(
        self, config: Config, old: dict[str, ProfileRefresher]
    ) -> dict[str, ProfileRefresher]:
        """The refreshers of ``config``'s client-credentials profiles, keeping what is unchanged."""
        new: dict[str, ProfileRefresher] = {}
        for name, profile in config.profiles.items():
            if profile.exchanges:
                continue
            current = old.get(name)
            if current is not None and current.profile == profile:
                new[name] = current
                continue
            refresher = self._make_refresher(profile)
            if current is not None and _same_identity(current.profile, profile):
                # Only serving knobs changed: the token stays valid for the new profile.
                refresher.inherit_token(current)
            new[name] = refresher
        return new

    # -- serving -----------------------------------------------------------

    def refresher_for(self, profile: str) -> ProfileRefresher:
        try:
            return self.refreshers[profile]
        except KeyError:
            raise UnknownProfileError(profile) from None

    async def get(self, profile: str, min_ttl: float | None = None) -> ServedToken:
        return await self.refresher_for(profile).get(min_ttl)

    # -- health ------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether every required profile is servable, and each profile's reason.

        Exchange profiles hold no token of their own: they are never part of it.
        """
        reasons: dict[str, str] = {}
        ready = True
        for name, refresher in self.refreshers.items():
            if refresher.servable():
                reasons[name] = "ok"
                continue
            reasons[name] = refresher.state().value
            if refresher.profile.required:
                ready = False
        self.metrics.ready.set(1 if ready else 0)
        return ready, reasons

    def alive(self) -> bool:
        """Whether every refresh loop is running."""
        return all(r.alive for r in self.refreshers.values())

    def status(self) -> dict[str, Any]:
        ready, _ = self.readiness()
        return {
            "version": __version__,
            "ready": ready,
            "cache": self._cache_status(),
            "profiles": {
                **{name: r.status() for name, r in self.refreshers.items()},
                **self.exchanges.status(),
            },
            "upstreams": self.upstreams.status(),
        }

    def _cache_status(self) -> dict[str, Any]:
        """The backend and its state; while it is down, also why (``error``: kind and detail)."""
        view: dict[str, Any] = {"backend": self.cache.backend, "state": self.cache.state.value}
        failure = self.cache.failure
        if self.cache.state is CacheState.DOWN and failure is not None:
            view["error"] = failure.view()
        return view


def _exchange_profiles(config: Config) -> dict[str, ProfileConfig]:
    return {name: p for name, p in config.profiles.items() if p.exchanges}


def _same_identity(a: ProfileConfig, b: ProfileConfig) -> bool:
    """Whether tokens of ``a`` are tokens of ``b``: same endpoint, client, audience, scope."""
    return (a.token_url, a.client_id, a.audience, a.resource, a.scope, a.extra_params) == (
        b.token_url,
        b.client_id,
        b.audience,
        b.resource,
        b.scope,
        b.extra_params,
    )
