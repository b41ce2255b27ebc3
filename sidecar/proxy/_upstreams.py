"""Upstreams: the configured upstreams of one daemon, their clients, counters and reloads.

One :class:`Upstreams` lives as long as the daemon, so the token app can hold
it while reloads swap what it contains. A reload keeps the client of every
upstream whose config did not change; a changed or removed upstream's client
is retired: new requests go to the new client at once, and the old one closes
when its last request (a long SSE stream, say) has finished. Counters
(:class:`UpstreamInstruments`) belong to the upstream's name and survive
reloads; they feed the metrics, the log events and ``/status``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.clock import Clock, cancel_and_wait
from sidecar.config import UpstreamConfig, url_view
from sidecar.errors import ApiError
from sidecar.exchange import ExchangeService
from sidecar.metrics import Metrics
from sidecar.proxy._client import ResolverFactory, UpstreamClient
from sidecar.proxy._replay import RetryResult
from sidecar.refresher import ProfileRefresher

log = logging.getLogger("sidecar.proxy")

#: How long shutdown waits for retired clients before closing them regardless.
CLOSE_TIMEOUT = 1.0
#: The ``code`` label of an upstream's answer, by status class (no string built per request).
_STATUS_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


@dataclass(frozen=True)
class ProxyFailure:
    """The last answer the sidecar made itself for an upstream (``/status``)."""

    code: str
    message: str
    at: float  # UNIX time

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "at": round(self.at, 3)}


class UpstreamInstruments:
    """The metrics, log events and ``/status`` counters of one upstream name."""

    def __init__(self, metrics: Metrics, name: str, clock: Clock) -> None:
        self.name = name
        self._metrics = metrics
        self._clock = clock
        self._series = metrics.add_upstream(name)
        self.requests = 0
        self.active = 0
        self.last_error: ProxyFailure | None = None

    def started(self) -> None:
        self.active += 1
        self._series.active += 1

    def finished(self) -> None:
        self.active -= 1
        self._series.active -= 1

    def answered(self, status: int, seconds: float) -> None:
        """The upstream answered ``status`` after ``seconds`` (until its headers)."""
        self.requests += 1
        self._series.count(_STATUS_CLASSES.get(status // 100) or f"{status // 100}xx")
        self._series.observe(seconds)

    def refused(self, exc: ApiError) -> None:
        """The sidecar answered for the upstream (``exc.code``): counted, logged, remembered."""
        self.requests += 1
        self._series.count(exc.code)
        self.last_error = ProxyFailure(exc.code, exc.message, self._clock.time())
        level = logging.WARNING if exc.status >= 500 else logging.INFO
        log.log(
            level,
            "proxy.refused",
            extra={
                "upstream": self.name,
                "status": exc.status,
                "code": exc.code,
                "reason": exc.message,
            },
        )

    def broke_off(self, reason: str) -> None:
        """An answer's body could not be passed on to the end: the caller's connection is cut."""
        self.last_error = ProxyFailure("stream_broken", reason, self._clock.time())
        log.warning("proxy.stream_broken", extra={"upstream": self.name, "reason": reason})

    def retry(self, result: RetryResult, fingerprint: str) -> None:
        """An upstream 401 for the token ``fingerprint`` led to ``result``."""
        self._metrics.proxy_retries.labels(self.name, result).inc()
        log.info(
            "proxy.unauthorized",
            extra={"upstream": self.name, "fingerprint": fingerprint, "result": result},
        )

    def status(self, upstream: UpstreamConfig) -> dict[str, Any]:
        return {
            "base_url": url_view(upstream.base_url),
            "profile": upstream.profile,
            "exchange": upstream.exchange,
            "requests": self.requests,
            "active": self.active,
            "last_error": self.last_error.as_dict() if self.last_error else None,
        }


class Upstreams:
    """Every configured upstream: its client, its instruments, and whose tokens it carries."""

    def __init__(
        self,
        upstreams: Mapping[str, UpstreamConfig],
        *,
        refresher_for: Callable[[str], ProfileRefresher],
        exchanges: ExchangeService,
        metrics: Metrics,
        clock: Clock,
        resolver: ResolverFactory | None = None,
    ) -> None:
        self.refresher_for = refresher_for
        #: Where ``exchange`` upstreams get their users' tokens.
        self.exchanges = exchanges
        self._metrics = metrics
        self._clock = clock
        self._resolver = resolver
        self._clients: dict[str, UpstreamClient] = {}
        self._instruments: dict[str, UpstreamInstruments] = {}
        self._retiring: dict[UpstreamClient, asyncio.Task[None]] = {}
        self._apply(upstreams)

    def client(self, name: str) -> UpstreamClient | None:
        """The current client of upstream ``name``, or None when it is not configured."""
        return self._clients.get(name)

    def instruments(self, name: str) -> UpstreamInstruments:
        return self._instruments[name]

    @property
    def names(self) -> list[str]:
        return sorted(self._clients)

    def reload(self, upstreams: Mapping[str, UpstreamConfig]) -> None:
        """Apply a new set of upstreams; see the module docstring."""
        changed = self._apply(upstreams)
        if changed:
            log.info("proxy.reloaded", extra={"upstreams": changed})

    def _apply(self, upstreams: Mapping[str, UpstreamConfig]) -> list[str]:
        old, self._clients = self._clients, {}
        changed = []
        for name, config in upstreams.items():
            current = old.pop(name, None)
            if current is not None and current.config == config:
                self._clients[name] = current
                continue
            if current is not None:
                self._retire(current)
            if name not in self._instruments:
                self._instruments[name] = UpstreamInstruments(self._metrics, name, self._clock)
            self._clients[name] = UpstreamClient(config, resolver=self._resolver)
            changed.append(name)
        for name, removed in old.items():
            self._retire(removed)
            del self._instruments[name]
            self._metrics.remove_upstream(name)
            changed.append(name)
        return sorted(changed)

    def _retire(self, client: UpstreamClient) -> None:
        task = asyncio.create_task(client.aclose_when_idle(), name=f"retire:{client.config.name}")
        self._retiring[client] = task
        task.add_done_callback(lambda _: self._retiring.pop(client, None))

    async def aclose(self) -> None:
        """Close every client; retired ones get :data:`CLOSE_TIMEOUT` to finish first."""
        retiring = dict(self._retiring)
        await asyncio.gather(*(cancel_and_wait(t, CLOSE_TIMEOUT) for t in retiring.values()))
        clients = [*self._clients.values(), *retiring]
        await asyncio.gather(*(c.aclose() for c in clients))

    def status(self) -> dict[str, Any]:
        """The ``/status`` entry of every upstream: requests, active, last error; no secret."""
        return {
            name: self._instruments[name].status(client.config)
            for name, client in sorted(self._clients.items())
        }
