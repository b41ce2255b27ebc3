"""Issuance: a verified TokenResponse or SharedToken becomes a HeldToken with deadlines.

The one place where ``expires_in``, the JWT ``exp`` or a shared token's
wall-clock instants become monotonic deadlines and the refresh instant is
drawn (with jitter) from the policy.
"""

from __future__ import annotations

import random
from typing import Any

from sidecar.config import ProfileConfig
from sidecar.errors import IdPResponseError, InvalidTokenError
from sidecar.fleet import SharedToken
from sidecar.idp import MAX_LIFETIME, TokenResponse
from sidecar.policy import refresh_at
from sidecar.token import HeldToken, fingerprint


def build_token(
    issued: TokenResponse,
    claims: dict[str, Any],
    profile: ProfileConfig,
    *,
    now: float,
    wall_now: float,
    rng: random.Random,
) -> HeldToken:
    """Turn a verified response into a :class:`HeldToken` with monotonic deadlines.

    Lifetime is min(``expires_in``, JWT ``exp`` - now); a token without either
    is garbage, and one that would never be servable is refused.
    """
    lifetimes = []
    if issued.expires_in is not None:
        lifetimes.append(issued.expires_in)
    exp = claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        lifetimes.append(exp - wall_now)
    if not lifetimes:
        raise IdPResponseError("token response has no expires_in and the token no exp")
    lifetime = min(lifetimes)
    if lifetime > MAX_LIFETIME:
        raise IdPResponseError("token lifetime (JWT exp) is above one year")
    if lifetime <= profile.min_ttl:
        raise InvalidTokenError(
            "token lifetime is not above min_ttl",
            error="invalid_token",
            description=f"lifetime {lifetime:.0f}s <= min_ttl {profile.min_ttl:.0f}s",
        )
    expires_at = now + lifetime
    return HeldToken(
        value=issued.access_token,
        token_type=issued.token_type,
        scope=issued.scope if issued.scope is not None else _scope_claim(claims),
        obtained_at=now,
        refresh_at=refresh_at(
            obtained_at=now,
            expires_at=expires_at,
            refresh_before=profile.refresh_before,
            min_ttl=profile.min_ttl,
            rng=rng,
        ),
        expires_at=expires_at,
        expires_at_wall=wall_now + lifetime,
        fingerprint=fingerprint(issued.access_token),
    )


def _scope_claim(claims: dict[str, Any]) -> str | None:
    scope = claims.get("scope")
    return scope if isinstance(scope, str) and scope else None


def token_from_shared(
    shared: SharedToken,
    profile: ProfileConfig,
    *,
    now: float,
    wall_now: float,
    rng: random.Random,
) -> HeldToken:
    """This sidecar's :class:`HeldToken` for a shared one: same instants, its own jitter.

    The refresh window counts from when the token was minted, not adopted,
    so the fleet's refreshes line up with the token's life.
    """
    obtained_at = now - max(0.0, wall_now - shared.obtained_at)
    expires_at = now + (shared.expires_at - wall_now)
    return HeldToken(
        value=shared.value,
        token_type=shared.token_type,
        scope=shared.scope,
        obtained_at=min(obtained_at, expires_at),
        refresh_at=refresh_at(
            obtained_at=min(obtained_at, expires_at),
            expires_at=expires_at,
            refresh_before=profile.refresh_before,
            min_ttl=profile.min_ttl,
            rng=rng,
        ),
        expires_at=expires_at,
        expires_at_wall=shared.expires_at,
        fingerprint=shared.fingerprint,
    )
