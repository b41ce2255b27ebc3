"""ExchangeService: the exchange profiles of one daemon, and what callers of them use.

The token API (``POST /v1/exchange/{profile}``) and proxy mode call
:meth:`ExchangeService.exchange` and :meth:`ExchangeService.drop`. Each
profile's exchanger shares the daemon's circuit breaker of its token
endpoint (``breaker_for``), its JWKS caches (through the verifier) and its
metrics. A reload keeps the caches of unchanged profiles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from sidecar.breaker import CircuitBreaker
from sidecar.clock import Clock
from sidecar.config import ProfileConfig
from sidecar.errors import UnknownProfileError
from sidecar.exchange._exchanger import ExchangeAnswer, ProfileExchanger
from sidecar.exchange._minter import ExchangeMinter
from sidecar.idp import IdPClient
from sidecar.metrics import Metrics
from sidecar.subject import SubjectChecker
from sidecar.verify import TokenVerifier

BreakerFor = Callable[[ProfileConfig], CircuitBreaker]


class ExchangeService:
    """The exchange profiles of one daemon; what the token API and the proxy call."""

    def __init__(
        self,
        profiles: Mapping[str, ProfileConfig],
        *,
        idp: IdPClient,
        verifier: TokenVerifier,
        breaker_for: BreakerFor,
        metrics: Metrics,
        clock: Clock,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._idp = idp
        self._verifier = verifier
        self._subjects = SubjectChecker(verifier, clock)
        self._breaker_for = breaker_for
        self._metrics = metrics
        self._clock = clock
        self._environ = environ
        self.exchangers: dict[str, ProfileExchanger] = {
            name: self._make(profile) for name, profile in profiles.items()
        }

    def _make(self, profile: ProfileConfig) -> ProfileExchanger:
        minter = ExchangeMinter(
            profile,
            idp=self._idp,
            verifier=self._verifier,
            breaker=self._breaker_for(profile),
            metrics=self._metrics,
            clock=self._clock,
            environ=self._environ,
        )
        exchanger = ProfileExchanger(
            profile,
            minter=minter,
            subjects=self._subjects,
            metrics=self._metrics,
            clock=self._clock,
        )
        self._metrics.add_exchange_profile(
            profile.name, exchanger.entries, profile.cache_max_entries
        )
        self._metrics.circuit_state.labels(profile.name).set(minter.breaker.state.gauge)
        return exchanger

    def exchanger_for(self, profile: str) -> ProfileExchanger:
        """The exchanger of ``profile``; :class:`UnknownProfileError` if it is not one."""
        try:
            return self.exchangers[profile]
        except KeyError:
            raise UnknownProfileError(profile) from None

    async def exchange(
        self,
        profile: str,
        subject_token: str,
        *,
        scope: str | None = None,
        min_ttl: float | None = None,
    ) -> ExchangeAnswer:
        """A token of ``profile`` for the user of ``subject_token``.

        Args:
            profile: an exchange profile's name.
            subject_token: the user's token, as the MCP server received it.
            scope: a narrower scope than the profile's, if wanted.
            min_ttl: seconds the token must still live (default: the profile's).

        Raises:
            UnknownProfileError: no exchange profile of that name.
            ExchangeError: the documented refusal (``status``, ``code``, ``retry_after``).
        """
        return await self.exchanger_for(profile).exchange(
            subject_token, scope=scope, min_ttl=min_ttl
        )

    def drop(
        self,
        profile: str,
        subject_token: str,
        scope: str | None = None,
        *,
        fingerprint: str | None = None,
    ) -> bool:
        """Forget one user's cached token of ``profile`` (proxy mode's 401 rule).

        With ``fingerprint``, only while the cached token is still that one.
        """
        return self.exchanger_for(profile).drop(subject_token, scope, fingerprint=fingerprint)

    async def reload(self, profiles: Mapping[str, ProfileConfig]) -> None:
        """Apply new profiles: unchanged ones keep their caches, changed ones start empty."""
        old, new = self.exchangers, {}
        for name, profile in profiles.items():
            current = old.get(name)
            if current is not None and current.profile == profile:
                new[name] = current
                continue
            if current is not None:
                self._metrics.remove_exchange_profile(name)
            new[name] = self._make(profile)
        self.exchangers = new
        stopped = [e for name, e in old.items() if new.get(name) is not e]
        for exchanger in stopped:
            if exchanger.name not in new:
                self._metrics.remove_exchange_profile(exchanger.name)
        await asyncio.gather(*(e.aclose() for e in stopped))

    def shut_down(self) -> None:
        """SIGTERM: every exchange under way ends with ``shutting_down``; hits still serve."""
        for exchanger in self.exchangers.values():
            exchanger.shut_down()

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: e.status() for name, e in self.exchangers.items()}

    async def aclose(self) -> None:
        await asyncio.gather(*(e.aclose() for e in self.exchangers.values()))

    def __repr__(self) -> str:
        return f"ExchangeService(profiles={sorted(self.exchangers)!r})"
