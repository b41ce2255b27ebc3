"""The clock seam: wait_until on the injected clock, and the FakeClock waking sleepers in order."""

from __future__ import annotations

import asyncio

from sidecar.clock import wait_until
from sidecar.testing import FakeClock


async def test_wait_until_times_out_on_the_clock():
    """wait_until returns False once the clock passes the timeout, True when the event fires."""
    clock = FakeClock()
    event = asyncio.Event()
    waiter = asyncio.ensure_future(wait_until(clock, event, 5))
    await clock.advance(4.9)
    assert not waiter.done()
    await clock.advance(0.1)
    assert await waiter is False
    waiter = asyncio.ensure_future(wait_until(clock, event, 5))
    await clock.advance(1)
    event.set()
    assert await waiter is True
    assert clock.sleepers == 0


async def test_fake_clock_wakes_sleepers_in_deadline_order():
    """Sleepers wake in deadline order, each at its own instant."""
    clock = FakeClock(start=0.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.ensure_future(sleeper(n, s)) for n, s in (("b", 20), ("a", 10), ("c", 30))]
    await clock.wait_for_sleepers(3)
    assert clock.next_deadline() == 10
    await clock.advance(25)
    assert woke == [("a", 10), ("b", 20)]
    await clock.advance(5)
    assert woke == [("a", 10), ("b", 20), ("c", 30)]
    await asyncio.gather(*tasks)
    assert clock.time() - clock.monotonic() == 1_800_000_000.0
