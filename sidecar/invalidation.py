"""Reports: a caller's word that a token was rejected downstream, throttled and remembered.

A :class:`Reports` decides what one ``invalidate`` does (``refreshed``,
``already_rotated`` or ``throttled``), withholds a reported token while its
replacement is on the way and hands it back when none can be had, and
remembers its fingerprint so the token is never adopted again (from the
fleet cache, say). It holds no clock and does no I/O: the refresher passes
the instants in.
"""

from __future__ import annotations

from typing import Literal

from sidecar.token import HeldToken

#: At most one forced refresh per profile per this many seconds.
INVALIDATE_THROTTLE = 10.0

ReportResult = Literal["refreshed", "already_rotated", "throttled"]


class Reports:
    """The invalidate reports of one profile.

    Invariant: a withheld token is always the one most recently reported,
    and it is handed back at most once.
    """

    def __init__(self, throttle: float = INVALIDATE_THROTTLE) -> None:
        self._throttle = throttle
        self._last_forced_at: float | None = None
        #: Fingerprint of the last token a caller reported: never adopted again.
        self.rejected: str | None = None
        self._withheld: HeldToken | None = None

    @property
    def withheld(self) -> HeldToken | None:
        """The reported token held back while its replacement is on the way."""
        return self._withheld

    def report(self, current: HeldToken | None, fingerprint: str, now: float) -> ReportResult:
        """What a report of ``fingerprint`` does; ``refreshed`` means: withhold ``current``."""
        if current is None or current.fingerprint != fingerprint:
            return "already_rotated"
        if self._last_forced_at is not None and now - self._last_forced_at < self._throttle:
            return "throttled"
        self._last_forced_at = now
        self._withheld = current
        self.rejected = current.fingerprint
        return "refreshed"

    def is_reported(self, token: HeldToken) -> bool:
        """Whether ``token`` is the one a caller reported rejected."""
        return token.fingerprint == self.rejected

    def replaced(self) -> None:
        """A new token arrived: nothing is withheld any more."""
        self._withheld = None

    def hand_back(self, now: float, min_ttl: float) -> HeldToken | None:
        """The withheld token, once, if it is still servable: no replacement could be had."""
        withheld, self._withheld = self._withheld, None
        if withheld is None or not withheld.servable(now, min_ttl):
            return None
        return withheld

    def __repr__(self) -> str:
        withheld = self._withheld.fingerprint if self._withheld else None
        return f"Reports(rejected={self.rejected!r}, withheld={withheld!r})"
