"""Driving refresh loops on the FakeClock: wait until they park, advance time between refreshes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sidecar.service import TokenService
from sidecar.testing import FakeClock

Services = TokenService | Sequence[TokenService]


async def idle(services: Services, timeout: float = 5.0) -> None:
    """Wait (bounded, real time) until every refresh loop is parked on the clock."""
    group = [services] if isinstance(services, TokenService) else services
    loops = [r.wait_idle() for s in group for r in s.refreshers.values()]
    await asyncio.wait_for(asyncio.gather(*loops), timeout)


async def run_for(clock: FakeClock, services: Services, seconds: float) -> None:
    """Advance virtual time, letting each refresh that falls due finish before moving on."""
    target = clock.monotonic() + seconds
    while True:
        await idle(services)
        deadline = clock.next_deadline()
        if deadline is None or deadline > target:
            break
        await clock.advance_to(deadline)
    await clock.advance_to(target)
    await idle(services)
