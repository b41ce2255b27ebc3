"""SubjectChecker: a caller's user token, checked locally before it is exchanged.

An exchange costs IdP quota (Auth0 bills and rate-limits On-Behalf-Of), so a
token the IdP would refuse anyway is refused here first: with
``verify = "jwks"`` its signature is checked against the subject issuer's
JWKS (:class:`~sidecar.verify.TokenVerifier`'s cache, shared with the
profiles), then ``exp``, ``nbf``, ``iss`` and ``aud`` on the injected clock;
with ``verify = "none"`` the IdP judges the token, but a JWT's ``exp`` is
still read (unverified) so an expired one costs nothing and its expiry still
caps the cache entry. Either way a token with less than ``min_ttl`` left is
refused. ``leeway`` moves the subject's expiry later by that many seconds,
for clock skew, for the check and the cap alike.

Every refusal is :class:`~sidecar.errors.InvalidSubjectError`; its message
says what failed, never the token. A JWKS that cannot be fetched is not the
caller's fault: :class:`~sidecar.errors.ExchangeUnavailableError`. A token
signed with a key the JWKS does not have is refused, even inside the JWKS
refetch cooldown: a stream of forged ``kid`` values must not turn into 503s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeGuard

from sidecar.clock import Clock
from sidecar.config import SubjectConfig
from sidecar.errors import (
    ExchangeUnavailableError,
    IdPUnavailableError,
    InvalidSubjectError,
    InvalidTokenError,
)
from sidecar.verify import (
    Expectations,
    TokenVerifier,
    check_claims,
    looks_like_jwt,
    unverified_claims,
)

#: Seconds a caller is asked to wait when the subject issuer's JWKS cannot be fetched.
JWKS_RETRY_AFTER = 5.0


@dataclass(frozen=True, slots=True)
class Subject:
    """What the local check learned about a user's token.

    ``expires_at`` is its expiry (UNIX time, ``leeway`` included), or None
    for an opaque token under ``verify = "none"``: then nothing caps the entry.
    """

    expires_at: float | None


class SubjectChecker:
    """Checks users' tokens for the exchange profiles of one daemon."""

    def __init__(self, verifier: TokenVerifier, clock: Clock) -> None:
        self._verifier = verifier
        self._clock = clock

    async def check(
        self, profile: str, config: SubjectConfig, token: str, *, min_ttl: float
    ) -> Subject:
        """The :class:`Subject` of ``token`` if it passes ``config``'s checks, ``min_ttl`` left.

        Raises:
            InvalidSubjectError: it failed a check (no IdP should see it).
            ExchangeUnavailableError: the subject issuer's JWKS could not be fetched.
        """
        if config.verify == "jwks":
            claims = await self._verified(profile, config, token)
        elif looks_like_jwt(token):
            try:
                claims = unverified_claims(token)
            except InvalidTokenError:
                claims = {}  # the IdP judges it; only an exp we can read counts here
        else:
            claims = {}
        exp = claims.get("exp")
        if not _is_number(exp):
            return Subject(expires_at=None)
        expires_at = float(exp) + config.leeway
        left = expires_at - self._clock.time()
        if left <= 0:
            raise InvalidSubjectError(
                profile, "the subject token has expired", description="exp is in the past"
            )
        if left <= min_ttl:
            raise InvalidSubjectError(
                profile,
                f"the subject token has less than min_ttl ({min_ttl:g}s) left",
                description=f"{left:.0f}s left, min_ttl {min_ttl:g}s",
            )
        return Subject(expires_at=expires_at)

    async def _verified(self, profile: str, config: SubjectConfig, token: str) -> dict[str, Any]:
        """The claims of ``token`` after the signature and claim checks of ``verify = "jwks"``."""
        assert config.jwks_url is not None  # noqa: S101 - the loader requires it for "jwks"
        if not looks_like_jwt(token):
            raise InvalidSubjectError(
                profile, "the subject token is not a JWT", description="verify = 'jwks' needs a JWT"
            )
        try:
            claims = await self._verifier.signed_claims(token, config.jwks_url)
            expect = Expectations(audience=config.audience, issuer=config.issuer)
            # The leeway moves the instant exp is judged at, not nbf's own 60 s margin.
            check_claims(claims, expect, now=self._clock.time() - config.leeway)
        except InvalidTokenError as exc:
            raise _invalid(profile, exc) from None
        except IdPUnavailableError as exc:
            if exc.error == "unknown_kid":
                raise InvalidSubjectError(
                    profile,
                    "the subject token is signed with a key the issuer's JWKS does not have",
                    description=exc.description or str(exc),
                ) from None
            raise ExchangeUnavailableError(
                profile,
                "cannot fetch the subject issuer's JWKS to check the subject token",
                retry_after=JWKS_RETRY_AFTER,
                error="jwks_unavailable",
                description=str(exc),
            ) from None
        return claims

    def __repr__(self) -> str:
        return "SubjectChecker()"


def _invalid(profile: str, exc: InvalidTokenError) -> InvalidSubjectError:
    """An :class:`InvalidTokenError` of the verifier, told as the subject's failure."""
    return InvalidSubjectError(
        profile,
        f"the subject token failed the local check: {exc}",
        description=exc.description or str(exc),
    )


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
