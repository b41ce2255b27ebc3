"""The ``serve`` process lifecycle: signals during start-up and a stop with callers waiting."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from sidecar.testing import SidecarProcess
from tests.support.e2e import HEADERS, profile_toml

pytestmark = pytest.mark.slow


def handles(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


async def catches(pid: int, signum: int, timeout: float = 10.0) -> None:
    """Wait until process ``pid`` has a handler for ``signum``."""
    deadline = time.monotonic() + timeout
    while not handles(pid, signum):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} installed no handler for signal {signum}")
        await asyncio.sleep(0.005)


async def test_sighup_during_start_up_is_deferred(real_idp, sidecar_factory, tmp_path):
    """A SIGHUP in the first fraction of a second neither kills serve nor is lost."""
    # Not the factory: it waits for sidecar.started, and the signal must come before.
    sidecar = SidecarProcess(tmp_path, profile_toml(real_idp))
    await sidecar.start(wait_for=None)
    try:
        # Signal as soon as the early handler is in (before the ~1 s of imports and
        # config loading): earlier, SIGHUP's default action would end any program.
        await catches(sidecar.pid, signal.SIGHUP)
        assert not sidecar.named("sidecar.started")
        sidecar.send_signal(signal.SIGHUP)
        await sidecar.wait_event("sidecar.started")
        deferred = await sidecar.wait_event("sidecar.reload_deferred")
        assert deferred["reason"] == "SIGHUP during start-up"
        assert not sidecar.exited
        # Positive control: once up, a SIGHUP reloads as always.
        sidecar.send_signal(signal.SIGHUP)
        await sidecar.wait_event("token.refreshed")
        assert await sidecar.stop() == 0
    finally:
        await sidecar.kill()


async def test_sigterm_answers_waiting_callers_and_exits_within_grace(real_idp, sidecar_factory):
    """SIGTERM answers callers waiting on a hanging IdP 503 shutting_down and exits within 6 s."""
    real_idp.faults.hang = True
    sidecar = await sidecar_factory(profile_toml(real_idp, timeout='"25s"', wait_timeout='"20s"'))
    await asyncio.wait_for(real_idp.faults.wait_hung(1), 5)
    async with aiohttp.ClientSession() as http:

        async def wait_for_token() -> tuple[int, dict[str, object]]:
            async with http.get(f"{sidecar.url}/v1/token/api", headers=HEADERS) as resp:
                return resp.status, await resp.json()

        callers = [asyncio.create_task(wait_for_token()) for _ in range(3)]
        done, _ = await asyncio.wait(callers, timeout=0.3)
        assert not done  # all three are waiting for the hanging refresh
        stopped_at = time.monotonic()
        sidecar.send_signal(signal.SIGTERM)
        answers = await asyncio.wait_for(asyncio.gather(*callers), 6)
        code = await sidecar.stop(None)
    assert time.monotonic() - stopped_at < 6
    assert code == 0
    for status, body in answers:
        assert (status, body["error"]) == (503, "shutting_down")
