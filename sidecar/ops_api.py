"""The ops API: /livez /readyz /metrics /status and the LoopWatchdog; it never serves a token.

``/livez`` must only fail when restarting the process can help: a stuck or
starved event loop, or a refresh task that died. It never depends on the IdP,
so an IdP outage does not restart pods. Loop health comes from
:class:`LoopWatchdog`, a task that sleeps on the real event loop and records
how late it wakes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from sidecar.clock import cancel_and_wait
from sidecar.responses import json_response
from sidecar.service import TokenService

log = logging.getLogger("sidecar.ops")

#: How often the watchdog wakes, in seconds of real loop time.
WATCHDOG_INTERVAL: Final = 0.5
#: A wake-up later than this (seconds) means the loop is starved.
MAX_LOOP_LAG: Final = 5.0


class LoopWatchdog:
    """Measures event-loop lag: how late a task sleeping ``interval`` seconds wakes up.

    It deliberately reads the loop's own clock (not the injected
    :class:`~sidecar.clock.Clock`): what it measures is the real loop. Owns at
    most one task, from :meth:`start` to :meth:`aclose`.
    """

    def __init__(self, interval: float = WATCHDOG_INTERVAL, max_lag: float = MAX_LOOP_LAG) -> None:
        self.interval = interval
        self.max_lag = max_lag
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._lag = 0.0
        self._last_beat = 0.0

    @property
    def lag(self) -> float:
        """How late (seconds) the most recent wake-up was."""
        return self._lag

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start measuring on the running loop."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._last_beat = self._loop.time()
        self._task = self._loop.create_task(self._run(), name="loop-watchdog")

    async def aclose(self, timeout: float = 1.0) -> None:
        """Stop measuring and wait (bounded) for the task to end."""
        task, self._task = self._task, None
        await cancel_and_wait(task, timeout)

    def problem(self) -> str | None:
        """Why the loop is unhealthy, or None when it is fine."""
        if self._loop is None or not self.running:
            return "loop watchdog is not running"
        if self._lag > self.max_lag:
            return f"event loop lag {self._lag:.1f}s exceeds {self.max_lag:.1f}s"
        # A loop that blocks without ever waking the watchdog leaves no lag
        # sample behind; the age of the last wake-up catches that case.
        if self._loop.time() - self._last_beat > self.interval + self.max_lag:
            return "loop watchdog is stale"
        return None

    async def _run(self) -> None:
        assert self._loop is not None  # noqa: S101 - start() sets it before creating the task
        while True:
            due = self._loop.time() + self.interval
            await asyncio.sleep(self.interval)
            now = self._loop.time()
            self._lag = max(0.0, now - due)
            self._last_beat = now
            if self._lag > self.max_lag:
                log.warning("loop.lagging", extra={"lag": round(self._lag, 3)})

    def __repr__(self) -> str:
        return (
            f"LoopWatchdog(interval={self.interval}, lag={self._lag:.3f}, running={self.running})"
        )


SERVICE: Final = web.AppKey("ops_service", TokenService)
WATCHDOG: Final = web.AppKey("watchdog", LoopWatchdog)


def make_ops_app(service: TokenService, *, watchdog: LoopWatchdog | None = None) -> web.Application:
    """Build the ops app: ``/livez``, ``/readyz``, ``/metrics`` and ``/status``.

    Args:
        service: the daemon's token service.
        watchdog: the loop watchdog to use (tests pass one with a short
            interval); the app starts and stops it either way.

    Returns:
        The app; no route on it serves a token.
    """
    app = web.Application()
    app[SERVICE] = service
    app[WATCHDOG] = watchdog if watchdog is not None else LoopWatchdog()
    app.cleanup_ctx.append(_run_watchdog)
    exposition = make_aiohttp_handler(service.metrics.registry)

    async def metrics(request: web.Request) -> web.StreamResponse:
        service.readiness()  # keeps the token_sidecar_ready gauge current for scrapes
        return await exposition(request)

    app.router.add_get("/livez", _livez)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", _status)
    return app


async def _run_watchdog(app: web.Application) -> AsyncIterator[None]:
    watchdog = app[WATCHDOG]
    watchdog.start()
    yield
    await watchdog.aclose()


async def _livez(request: web.Request) -> web.Response:
    """200 while the loop turns and every refresh task runs; never asks the IdP."""
    service = request.app[SERVICE]
    reason = request.app[WATCHDOG].problem()
    if reason is None and not service.alive():
        dead = sorted(name for name, r in service.refreshers.items() if not r.alive)
        reason = "refresh task not running: " + ", ".join(dead)
    if reason is not None:
        return json_response({"alive": False, "reason": reason}, status=503)
    return json_response({"alive": True}, status=200)


async def _readyz(request: web.Request) -> web.Response:
    """200 when every required profile holds a servable token, else 503; reasons per profile."""
    ready, profiles = request.app[SERVICE].readiness()
    return json_response({"ready": ready, "profiles": profiles}, status=200 if ready else 503)


async def _status(request: web.Request) -> web.Response:
    """States and instants of every profile; never a secret or a token."""
    return json_response(request.app[SERVICE].status(), status=200)
