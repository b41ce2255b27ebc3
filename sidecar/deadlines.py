"""Deadlines: many network deadlines of one length on one timer, and a timeout that moves.

``asyncio.timeout`` arms an event-loop timer per block and re-arms it at every
``reschedule``: a ``TimerHandle``, a push onto the loop's heap (compared in
Python) and, later, popping the cancelled handle. The listeners start a head
deadline per keep-alive request and a proxied request moves its deadline at
each step (connection ready, body sent, each answer chunk), so that cost was
paid several times per request.

:class:`Deadlines` keeps every deadline of one length in one dictionary.
Each is set "now + seconds", so insertion order is deadline order: one timer
fires at the first entry's deadline, expires what is due and re-arms for the
next. Starting and stopping a deadline are two dictionary operations.

:class:`MovingTimeout` is ``asyncio.timeout``'s contract over :class:`Deadlines`:
when its deadline passes the task is cancelled, and the block ends with
``TimeoutError`` (a cancellation from elsewhere stays a cancellation). Each
:meth:`MovingTimeout.restart` counts the length of the chosen
:class:`Deadlines` from now.

Time here is the event loop's own clock: these are network deadlines of the
real loop, as with aiohttp's keep-alive timer, not refresh policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

_Item = TypeVar("_Item", bound=Hashable)


class Deadlines(Generic[_Item]):
    """Deadlines ``seconds`` after each :meth:`start`, with one timer for the earliest.

    Invariant: while an entry exists, a timer is armed at or before the first
    entry's deadline (entries only ever join at the end, with the latest deadline).
    """

    def __init__(self, seconds: float, on_expiry: Callable[[_Item], None]) -> None:
        self.seconds = seconds
        self._on_expiry = on_expiry
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due: dict[_Item, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self, item: _Item) -> None:
        """Start ``item``'s deadline now (it must not have one running here)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._due[item] = deadline = loop.time() + self.seconds
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)

    def stop(self, item: _Item) -> None:
        """Drop ``item``'s deadline, if it has one."""
        self._due.pop(item, None)

    def restart(self, item: _Item) -> None:
        """Start ``item``'s deadline again now (whether it had one here or not)."""
        self._due.pop(item, None)
        self.start(item)

    def close(self) -> None:
        """Drop every deadline and the timer."""
        self._due.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        assert self._loop is not None  # noqa: S101 - the timer was armed on it
        now = self._loop.time()
        while self._due:
            item, deadline = next(iter(self._due.items()))
            if deadline > now:
                self._timer = self._loop.call_at(deadline, self._expire)
                return
            del self._due[item]
            self._on_expiry(item)

    def __len__(self) -> int:
        return len(self._due)


class MovingTimeout:
    """``asyncio.timeout`` for one ``with`` block in a task, its deadline set on :class:`Deadlines`.

    No deadline runs until the first :meth:`restart`; each restart replaces
    the previous deadline. Once one has passed, later restarts do nothing and
    the block ends with ``TimeoutError``; after the block they do nothing either.
    """

    __slots__ = ("_cancelling", "_expired", "_on", "_task")

    def __init__(self) -> None:
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._on: Deadlines[MovingTimeout] | None = None
        self._expired = False

    def __enter__(self) -> Self:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("MovingTimeout is only for a block inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None  # restarts after the block do nothing
        if self._on is not None:
            self._on.stop(self)
            self._on = None
        # As asyncio.timeout: only our own cancellation becomes a TimeoutError.
        if (
            self._expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc

    @property
    def expired(self) -> bool:
        """Whether the deadline passed (the task was cancelled for it)."""
        return self._expired

    def restart(self, deadlines: Deadlines[MovingTimeout]) -> None:
        """Be due ``deadlines.seconds`` from now, instead of any earlier deadline."""
        if self._expired or self._task is None:
            return
        on = self._on
        if on is deadlines:
            deadlines.restart(self)
            return
        if on is not None:
            on.stop(self)
        self._on = deadlines
        deadlines.start(self)

    def stop(self) -> None:
        """No deadline until the next :meth:`restart`."""
        if self._on is not None:
            self._on.stop(self)
            self._on = None

    def expire(self) -> None:
        """The deadline passed: cancel the task (the ``on_expiry`` of :class:`Deadlines`)."""
        self._on = None
        self._expired = True
        if self._task is not None:
            self._task.cancel()


def timeouts(seconds: float) -> Deadlines[MovingTimeout]:
    """:class:`Deadlines` of ``seconds`` for :class:`MovingTimeout` blocks."""
    return Deadlines(seconds, MovingTimeout.expire)
