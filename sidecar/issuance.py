"""Issuance: a verified TokenResponse or SharedToken becomes a HeldToken with deadlines.

The one place where ``expires_in``, the JWT ``exp`` or a shared token's
wall-clock instants become monotonic deadlines and the refresh instant is
drawn (with jitter) from the policy.
"""

from __future__ import annotations

import math
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
    return _held(
        issued.access_token,
        issued.scope if issued.scope is not None else _scope_claim(claims),
        profile,
        obtained_at=now,
        expires_at=now + lifetime,
        expires_at_wall=wall_now + lifetime,
        rng=rng,
    )


def _scope_claim(claims: dict[str, Any]) -> str | None:
    scope = claims.get("scope")
    return scope if isinstance(scope, str) and scope else None


def token_from_shared(
    shared: SharedToken,
    claims: dict[str, Any],
    profile: ProfileConfig,
    *,
    now: float,
    wall_now: float,
    rng: random.Random,
) -> HeldToken:
    """This sidecar's :class:`HeldToken` for a vetted shared one: same instants, its own jitter.

    Expiry and scope come from the token's verified ``claims`` (``exp``,
    ``iat``, ``scope``); the record may only shorten the expiry, and its
    other fields count only when it is sealed. Either way the lifetime is bounded by
    :data:`~sidecar.idp.MAX_LIFETIME`. The refresh window counts from when
    the token was minted, not adopted, so the fleet's refreshes line up with
    the token's life.
    """
    exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
    if exp is None and not shared.sealed:
        raise InvalidTokenError("unsealed shared token without exp", description="missing exp")
    # The record may only shorten the verified exp (a peer's expires_in was shorter).
    expires_wall = min(exp, shared.expires_at) if exp is not None else shared.expires_at
    remaining = expires_wall - wall_now
    if not remaining <= MAX_LIFETIME or remaining <= profile.min_ttl:
        raise InvalidTokenError(
            "shared token lifetime out of bounds",
            description=f"{remaining:.0f}s left: not within (min_ttl, 1 year]",
        )
    minted_wall = iat if iat is not None else shared.obtained_at
    minted_wall = min(wall_now, max(minted_wall, expires_wall - MAX_LIFETIME))
    expires_at = now + remaining
    obtained_at = min(now - (wall_now - minted_wall), expires_at)
    scope = _scope_claim(claims) or (shared.scope if shared.sealed else None)
    return _held(
        shared.value,
        scope,
        profile,
        obtained_at=obtained_at,
        expires_at=expires_at,
        expires_at_wall=expires_wall,
        rng=rng,
    )


def _held(
    value: str,
    scope: str | None,
    profile: ProfileConfig,
    *,
    obtained_at: float,
    expires_at: float,
    expires_at_wall: float,
    rng: random.Random,
) -> HeldToken:
    """A Bearer :class:`HeldToken` whose refresh instant the policy draws (with jitter)."""
    return HeldToken(
        value=value,
        token_type="Bearer",  # noqa: S106 - the only type the sidecar accepts
        scope=scope,
        obtained_at=obtained_at,
        refresh_at=refresh_at(
            obtained_at=obtained_at,
            expires_at=expires_at,
            refresh_before=profile.refresh_before,
            min_ttl=profile.min_ttl,
            rng=rng,
        ),
        expires_at=expires_at,
        expires_at_wall=expires_at_wall,
        fingerprint=fingerprint(value),
    )


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
