"""HeldToken (what a profile holds, with monotonic deadlines), ServedToken, state, fingerprint.

``expires_in`` (and the JWT ``exp``, when shorter) is converted to monotonic
deadlines on receipt, so a wall-clock jump never makes a token look fresher
or older than it is. Wall-clock expiry is kept only for display. The token's
state (FRESH, STALE, EXPIRED) is derived from those deadlines and the clock;
it is never stored.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import NamedTuple


def fingerprint(value: str) -> str:
    """The first 12 hex digits of SHA-256: how a token is identified anywhere visible."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


class TokenState(enum.Enum):
    """Where a token is in its life, relative to a profile's deadlines."""

    FRESH = "fresh"  # before its refresh instant
    STALE = "stale"  # due for refresh, still servable
    EXPIRED = "expired"  # less than min_ttl left: never served


@dataclass(frozen=True, repr=False, eq=False)
class HeldToken:
    """An access token and the instants that govern it.

    Invariant: ``obtained_at <= refresh_at <= expires_at`` (monotonic seconds).
    The value is never shown by ``repr`` or ``str``.
    """

    value: str
    token_type: str
    scope: str | None
    obtained_at: float
    refresh_at: float
    expires_at: float
    #: UNIX time of expiry, for display and the token API's ``expires_at``.
    expires_at_wall: float
    fingerprint: str

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.obtained_at

    def state(self, now: float, min_ttl: float) -> TokenState:
        if now + min_ttl >= self.expires_at:
            return TokenState.EXPIRED
        if now >= self.refresh_at:
            return TokenState.STALE
        return TokenState.FRESH

    def servable(self, now: float, min_ttl: float) -> bool:
        """Whether the token has more than ``min_ttl`` seconds left at ``now``."""
        return self.expires_at - now > min_ttl

    def expires_in(self, now: float) -> int:
        """Whole seconds left, rounded down (never promise more than there is)."""
        left = self.expires_at - now
        return int(left) if left > 0 else 0  # int() rounds down for positive numbers

    def __repr__(self) -> str:
        return (
            f"HeldToken(fingerprint={self.fingerprint!r}, "
            f"expires_at_wall={self.expires_at_wall:.0f}, value=[secure])"
        )

    __str__ = __repr__


class ServedToken(NamedTuple):
    """A token handed to a caller: whether it is a fallback, and its whole seconds left then.

    A named tuple: one is built for every token request.
    """

    token: HeldToken
    stale: bool
    expires_in: int
