"""Token seeding: a profile holds a current token without an IdP round trip.

For benchmarks of the serving path and tests that need a held token but no
refresh. The refresher has no public way to take a token from outside a
refresh, so :func:`seed_token` is the one place that sets it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.clock import Clock
from sidecar.token import HeldToken, fingerprint

if TYPE_CHECKING:
    from sidecar.refresher import ProfileRefresher


def seed_token(
    refresher: ProfileRefresher,
    value: str,
    *,
    lifetime: float,
    clock: Clock,
    refresh_in: float | None = None,
    scope: str | None = None,
) -> HeldToken:
    """Make ``value`` the profile's current token, as if it had just been obtained.

    Args:
        refresher: the profile to seed; its refresh loop need not run.
        value: the access token.
        lifetime: seconds on ``clock`` until the token expires.
        clock: the clock the refresher reads (``SystemClock()`` in benchmarks).
        refresh_in: seconds until the token is due for refresh (default: at expiry).
        scope: the token's granted scope.

    Returns:
        The token now held.
    """
    now, wall = clock.monotonic(), clock.time()
    token = HeldToken(
        value=value,
        token_type="Bearer",  # noqa: S106 - a token type, not a secret
        scope=scope,
        obtained_at=now,
        refresh_at=now + (lifetime if refresh_in is None else refresh_in),
        expires_at=now + lifetime,
        expires_at_wall=wall + lifetime,
        fingerprint=fingerprint(value),
    )
    # The refresher has no public way to take a token from outside a refresh;
    # this is the one place that sets it, to adapt if the refresher changes.
    refresher._token = token  # noqa: SLF001
    return token
