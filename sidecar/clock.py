"""Time, injected: the Clock through which the sidecar reads clocks and sleeps; bounded waits.

Policy code (refresh timing, backoff, breakers, throttles) never calls
``time.monotonic()`` or ``asyncio.sleep()`` directly; it takes a :class:`Clock`.
Production uses :class:`SystemClock`; tests use :class:`sidecar.testing.FakeClock`,
which makes a 24-hour token lifecycle run in milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    """Monotonic time for deadlines, wall time for display, and a sleep."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; used for every deadline."""
        ...

    def time(self) -> float:
        """UNIX time; used only for display, logs and JWT claim checks."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clocks of the machine (read directly: the token API reads one per request)."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


async def wait_until(clock: Clock, event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds of ``clock`` time.

    Returns whether the event was set. Cancellation of the caller cancels both
    helper tasks; nothing is left behind.
    """
    if event.is_set():
        return True
    if timeout <= 0:
        return False
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(timeout))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, sleeper):
            if not task.done():
                task.cancel()
        await asyncio.gather(waiter, sleeper, return_exceptions=True)
    return event.is_set()


async def cancel_and_wait(task: asyncio.Task[object] | None, timeout: float) -> None:
    """Cancel ``task`` and wait for it to end, at most ``timeout`` seconds of real time.

    ``asyncio.wait`` never raises the task's own ``CancelledError``, so a
    cancellation of the caller still propagates, and a task that ignores
    cancellation cannot hold shutdown up for longer than the bound.
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait({task}, timeout=timeout)
