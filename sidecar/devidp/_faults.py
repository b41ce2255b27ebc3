"""The dev IdP's fault knobs: what the token endpoint does wrong, and for how many requests.

Hung requests park on a gate that counts them, so tests wait for "N requests
are hanging" instead of sleeping.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from dataclasses import dataclass, field

#: The ``aud`` of tokens issued while :attr:`Faults.wrong_aud` is on.
WRONG_AUDIENCE = "https://wrong.example/"


class _HangGate:
    """Parks hung requests until released, and counts them so tests wait without sleeping."""

    def __init__(self) -> None:
        self._released: asyncio.Event | None = None
        self._changed: asyncio.Condition | None = None
        self.parked = 0

    async def park(self) -> None:
        if self._released is None:
            self._released = asyncio.Event()
        released = self._released
        self.parked += 1
        try:
            async with self._condition():
                self._condition().notify_all()
            await released.wait()
        finally:
            self.parked -= 1

    def release(self) -> None:
        # Hands the current event to everyone parked on it; the next hang gets a new one.
        if self._released is not None:
            self._released.set()
            self._released = None

    async def wait_parked(self, count: int) -> None:
        async with self._condition():
            await self._condition().wait_for(lambda: self.parked >= count)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed


@dataclass
class Faults:
    """Runtime fault knobs for the token endpoint; all off by default.

    Tests set attributes directly. Each request takes a snapshot of the knobs
    when it arrives (:meth:`consume`). When ``remaining`` is set, the knobs
    apply to that many more requests and then every knob (``delay`` included)
    switches off. Switching ``hang`` off does not wake requests already parked:
    only :meth:`release_hang` (or server shutdown) does.
    """

    status: int | None = None
    remaining: int | None = None
    rate_limit: bool = False
    retry_after: float | None = None
    ratelimit_reset: float | None = None
    delay: float = 0.0
    hang: bool = False
    reset: bool = False
    garbage: bool = False
    wrong_aud: bool = False
    expired: bool = False
    expires_in_as_string: bool = False
    omit_expires_in: bool = False
    opaque: bool = False
    unpublished_key: bool = False
    #: Exchange grants: answer ``invalid_grant`` (the IdP rejects the user's token).
    subject_rejected: bool = False
    #: Exchange grants: answer 403 with this OAuth error (``access_denied``,
    #: ``interaction_required``, ...) and, when set, :attr:`exchange_claims`.
    exchange_error: str | None = None
    #: The ``claims`` challenge sent with :attr:`exchange_error` (Entra conditional access).
    exchange_claims: str | None = None
    _gate: _HangGate = field(default_factory=_HangGate, init=False, repr=False, compare=False)

    def clear(self) -> None:
        """Switch every knob off (parked requests stay parked until released)."""
        for knob in dataclasses.fields(self):
            if knob.init:
                setattr(self, knob.name, knob.default)

    def consume(self) -> Faults:
        """The knobs that apply to one arriving request; counts ``remaining`` down."""
        if self.remaining is not None and self.remaining <= 0:
            self.clear()
        snapshot = copy.copy(self)
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                self.clear()
        return snapshot

    def release_hang(self) -> None:
        """Switch ``hang`` off and let every parked request go on to its answer."""
        self.hang = False
        self._gate.release()

    @property
    def hung(self) -> int:
        """How many requests are parked by ``hang`` right now."""
        return self._gate.parked

    async def wait_hung(self, count: int = 1) -> None:
        """Return once at least ``count`` requests are parked (wrap in a timeout)."""
        await self._gate.wait_parked(count)

    async def park(self) -> None:
        """Park the calling request until :meth:`release_hang`."""
        await self._gate.park()
