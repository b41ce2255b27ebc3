"""Deadlines on one timer, and MovingTimeout (asyncio.timeout over them), on a real loop."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.deadlines import Deadlines, MovingTimeout, timeouts


async def sleep_under(
    timeout: MovingTimeout, *restarts: Deadlines[MovingTimeout], seconds: float
) -> None:
    """Sleep ``seconds`` in ``timeout``'s block, after restarting it on each of ``restarts``."""
    with timeout:
        for deadlines in restarts:
            timeout.restart(deadlines)
        await asyncio.sleep(seconds)


async def test_deadlines_expire_in_order_and_rearm():
    """Deadlines fire in start order, one timer at a time; a stopped one never fires."""
    expired: list[str] = []
    done = asyncio.Event()

    def on_expiry(name: str) -> None:
        expired.append(name)
        if len(expired) == 3:
            done.set()

    deadlines: Deadlines[str] = Deadlines(0.05, on_expiry)
    deadlines.start("first")
    deadlines.start("served")
    await asyncio.sleep(0.02)
    deadlines.start("second")
    deadlines.start("third")
    deadlines.stop("served")  # its head completed in time
    assert len(deadlines) == 3
    await asyncio.wait_for(done.wait(), 2.0)
    assert expired == ["first", "second", "third"]
    assert len(deadlines) == 0
    # After the last one the timer is not re-armed; a new start arms it again.
    deadlines.start("late")
    deadlines.close()
    await asyncio.sleep(0.08)
    assert expired == ["first", "second", "third"]


async def test_moving_timeout_ends_the_block_with_timeout_error():
    """A block still waiting when its deadline passes ends with TimeoutError, marked expired."""
    deadlines = timeouts(0.05)
    timeout = MovingTimeout()
    with pytest.raises(TimeoutError):
        await sleep_under(timeout, deadlines, seconds=2)
    assert timeout.expired
    assert len(deadlines) == 0
    current = asyncio.current_task()
    assert current is not None
    assert current.cancelling() == 0  # the cancellation was taken back


async def test_block_done_in_time_is_left_alone():
    """A block that ends before its deadline ends normally, and its deadline is gone."""
    deadlines = timeouts(0.05)
    with MovingTimeout() as timeout:
        timeout.restart(deadlines)
        assert len(deadlines) == 1
        await asyncio.sleep(0)
    assert not timeout.expired
    assert len(deadlines) == 0
    await asyncio.sleep(0.08)  # past the deadline: nothing cancels this task now
    assert not timeout.expired


async def test_restart_counts_from_now():
    """Restarting more often than the deadline's length keeps a block alive past that length."""
    deadlines = timeouts(0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with MovingTimeout() as timeout:
        timeout.restart(deadlines)
        for _ in range(5):
            await asyncio.sleep(0.05)
            timeout.restart(deadlines)
    assert loop.time() - started >= 0.25
    assert not timeout.expired


async def test_restart_moves_between_lengths():
    """A restart on other deadlines replaces the earlier deadline: the longer one holds."""
    short, long = timeouts(0.03), timeouts(0.5)
    with MovingTimeout() as timeout:
        timeout.restart(short)
        timeout.restart(long)
        assert (len(short), len(long)) == (0, 1)
        await asyncio.sleep(0.08)
    assert not timeout.expired
    with pytest.raises(TimeoutError):  # the positive control
        await sleep_under(MovingTimeout(), long, short, seconds=0.5)


async def test_no_deadline_until_the_first_restart():
    """Entered but never restarted (or stopped): the block may wait as long as it needs."""
    deadlines = timeouts(0.02)
    with MovingTimeout() as timeout:
        await asyncio.sleep(0.05)
        timeout.restart(deadlines)
        timeout.stop()
        await asyncio.sleep(0.05)
    assert not timeout.expired


async def test_cancellation_from_elsewhere_stays_a_cancellation():
    """A task cancelled by someone else inside the block sees CancelledError, not TimeoutError."""
    deadlines = timeouts(5.0)
    entered = asyncio.Event()

    async def waiter() -> None:
        with MovingTimeout() as timeout:
            timeout.restart(deadlines)
            entered.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(waiter())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


async def test_outer_cancellation_after_expiry_wins():
    """Expired and also cancelled from elsewhere: the outside cancellation is not swallowed."""
    deadlines = timeouts(0.02)
    expired = asyncio.Event()

    async def waiter() -> None:
        with MovingTimeout() as timeout:
            timeout.restart(deadlines)
            try:
                await asyncio.Event().wait()  # until cancelled
            except asyncio.CancelledError:
                expired.set()
                await asyncio.Event().wait()  # the second cancellation lands here
                raise

    task = asyncio.create_task(waiter())
    await expired.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_moving_timeout_needs_a_task():
    """Outside a task (a bare callback) MovingTimeout refuses to start."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[BaseException] = loop.create_future()

    def callback() -> None:
        try:
            MovingTimeout().__enter__()
        except RuntimeError as exc:
            outcome.set_result(exc)

    loop.call_soon(callback)
    assert "inside a task" in str(await outcome)


async def test_restart_after_the_block_does_nothing():
    """A restart once the block has ended (a body still going out) starts no deadline."""
    deadlines = timeouts(0.02)
    with MovingTimeout() as timeout:
        timeout.restart(deadlines)
    timeout.restart(deadlines)
    assert len(deadlines) == 0
    await asyncio.sleep(0.05)  # past the deadline: this task is not cancelled
    assert not timeout.expired


async def test_restarted_deadline_moves_behind_later_ones():
    """A restarted deadline is due a full length from its restart, after the ones set since."""
    expired: list[str] = []
    both = asyncio.Event()

    def on_expiry(name: str) -> None:
        expired.append(name)
        if len(expired) == 2:
            both.set()

    deadlines: Deadlines[str] = Deadlines(0.2, on_expiry)
    deadlines.start("restarted")  # first due at 0.2
    await asyncio.sleep(0.05)
    deadlines.start("other")  # due at 0.25
    await asyncio.sleep(0.05)
    deadlines.restart("restarted")  # now due at 0.3
    await asyncio.wait_for(both.wait(), 2.0)
    assert expired == ["other", "restarted"]
