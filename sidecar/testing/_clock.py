"""A virtual clock for tests and benchmarks: sleeps park until time is advanced.

``FakeClock.sleep()`` parks the caller on a future; ``advance()`` moves time
forward and wakes sleepers in deadline order, letting the woken tasks run at
each deadline before time moves on. ``wait_for_sleepers()`` is the asyncio
analogue of trio's ``wait_all_tasks_blocked``: it returns once a given number
of tasks are parked on the clock (for example, once a refresh loop that went
out to a real IdP on loopback is sleeping again).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

# A fixed, recognisable wall-clock origin keeps JWT claims in tests deterministic.
DEFAULT_WALL_START = 1_800_000_000.0


class FakeClock:
    """A :class:`sidecar.clock.Clock` whose time moves only when told to."""

    def __init__(self, start: float = 1000.0, wall_start: float = DEFAULT_WALL_START) -> None:
        self._now = start
        self._wall_offset = wall_start - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Condition()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if seconds <= 0:
            # Still a scheduling point, like asyncio.sleep(0).
            await asyncio.sleep(0)
            return
        entry = (self._now + seconds, next(self._seq), future)
        heapq.heappush(self._sleepers, entry)
        await self._notify()
        try:
            await future
        finally:
            if not future.done():
                future.cancel()

    @property
    def sleepers(self) -> int:
        """How many tasks are parked on this clock right now."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        """The earliest instant a parked task waits for, if any."""
        self._prune()
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own deadline in order."""
        await self.advance_to(self._now + seconds)

    async def advance_to(self, target: float) -> None:
        """Move time to ``target``; never backwards.

        Tasks that are ready run first, so a sleep they are about to start
        counts from the current instant, not from ``target``.
        """
        await settle()
        while True:
            self._prune()
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            future.set_result(None)
            await settle()
        self._now = max(self._now, target)
        await settle()

    async def wait_for_sleepers(self, count: int, timeout: float = 5.0) -> None:
        """Return once at least ``count`` tasks are parked (bounded by real ``timeout``)."""

        async def _parked() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self.sleepers >= count)

        await asyncio.wait_for(_parked(), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _prune(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now}, sleepers={self.sleepers})"


async def settle(rounds: int = 20) -> None:
    """Let every task that is ready (not waiting on I/O or a clock) run to its next wait."""
    for _ in range(rounds):
        await asyncio.sleep(0)
