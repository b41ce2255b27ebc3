"""TokenMinter: one profile's way to a new token, breaker -> IdP -> verify -> issuance.

A minter is the only object that talks to the IdP for a profile. It asks the
circuit breaker of the profile's token endpoint first, requests a token,
verifies it as the profile's ``verify`` mode says and turns it into a
:class:`~sidecar.token.HeldToken`; every outcome is reported to the breaker
(only transient failures count against it). It also vets tokens another
sidecar shared through the fleet cache, with the same verification, so that
whoever can write to the cache cannot hand callers a token of their choice.

``token-sidecar check --probe`` uses the same minter, so a probe takes
exactly the path a refresh takes.
"""

from __future__ import annotations

import random
from typing import Any

from sidecar.breaker import CircuitBreaker, CircuitState
from sidecar.clock import Clock
from sidecar.config import ProfileConfig
from sidecar.credentials import Credentials
from sidecar.errors import CircuitOpenError, IdPUnavailableError, InvalidTokenError, RefreshError
from sidecar.fleet import SharedToken
from sidecar.idp import IdPClient
from sidecar.issuance import build_token, token_from_shared
from sidecar.token import HeldToken, fingerprint
from sidecar.verify import (
    Expectations,
    TokenVerifier,
    check_claims,
    check_client,
    effective_mode,
    looks_like_jwt,
    unverified_claims,
)


class TokenMinter:
    """Mints and vets tokens for one profile.

    Invariant: every request that took the breaker's half-open probe slot
    gives it back, whatever happens to the request (success, IdP error,
    cancellation or a bug below).
    """

    def __init__(
        self,
        profile: ProfileConfig,
        *,
        idp: IdPClient,
        verifier: TokenVerifier,
        breaker: CircuitBreaker,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.profile = profile
        self.breaker = breaker
        self._idp = idp
        self._verifier = verifier
        self._clock = clock
        self._rng = rng

    @property
    def circuit(self) -> CircuitState:
        """The state of the profile's token-endpoint breaker."""
        return self.breaker.state

    async def mint(self, creds: Credentials) -> HeldToken:
        """Ask the IdP for a new token through the breaker, and verify it.

        Raises:
            RefreshError: the most specific failure (``CircuitOpenError`` when
                the breaker kept the request back).
        """
        if not self.breaker.allow():
            raise CircuitOpenError(
                "circuit open: not calling the IdP",
                retry_after=self.breaker.retry_in() or self.profile.backoff.base,
            )
        try:
            response = await self._idp.request_token(self.profile, creds)
            claims = await self._verifier.verify(self.profile, response.access_token)
            token = build_token(
                response,
                claims,
                self.profile,
                now=self._clock.monotonic(),
                wall_now=self._clock.time(),
                rng=self._rng,
            )
        except IdPUnavailableError:
            self.breaker.record_failure()
            raise
        except RefreshError:
            self.breaker.record_success()  # the IdP answered: it is up
            raise
        except BaseException:
            # Cancelled, or a bug below us: no verdict on the IdP, but the
            # half-open probe slot must be freed or the circuit sticks open.
            self.breaker.release_probe()
            raise
        self.breaker.record_success()
        return token

    async def vet_shared(self, shared: SharedToken, client_id: str) -> HeldToken:
        """``shared`` as this profile's token, if the fleet's trust rules allow it.

        A value that is not sealed is adopted only when the profile checks
        signatures (``verify = "jwks"``); a JWT must name this profile's
        ``iss``, ``aud`` and client ``client_id`` (from the loaded
        credentials). Scope and expiry come from the verified token, not the
        record (see :func:`~sidecar.issuance.token_from_shared`).

        Raises:
            InvalidTokenError: it fails verification or does not match its record.
            IdPUnavailableError: its keys could not be fetched to tell.
        """
        if not shared.sealed and not self.profile.verified:
            raise InvalidTokenError(
                "an unsealed shared token can only be adopted with verify = 'jwks'",
                description="unsealed value, signature not checked",
            )
        claims = await self._verifier.verify(self.profile, shared.value)
        if not claims and looks_like_jwt(shared.value):
            # verify = "none": a sealed JWT still has to be this profile's.
            claims = self._sealed_claims(shared.value)
        return self._held_from(shared, claims, client_id)

    def vet_sealed(self, shared: SharedToken, client_id: str) -> HeldToken:
        """``shared`` as this profile's token, vetted without a network request.

        For a value read from the cold-start file: the AES-GCM seal proves a
        holder of the key wrote it, and stands for the signature (DESIGN
        "Limits and trust": the JWKS signature *or* the key file's
        authenticated encryption). Everything else is checked as in
        :meth:`vet_shared`: a JWT must name this profile's ``iss``, ``aud``
        and client and not be expired; an opaque value is accepted only when
        the profile verifies nothing (``verify = "none"``, or automatic
        without a JWKS URL); scope and expiry come from the token.

        Raises:
            InvalidTokenError: not sealed, or it fails a check.
        """
        if not shared.sealed:
            raise InvalidTokenError(
                "only a sealed value can be vetted without a signature check",
                description="unsealed value",
            )
        if looks_like_jwt(shared.value):
            claims = self._sealed_claims(shared.value)
        elif effective_mode(self.profile, shared.value) != "none":
            raise InvalidTokenError(
                "token is not a JWT",
                error="invalid_token",
                description=f"verify = {effective_mode(self.profile, shared.value)!r} needs a JWT",
            )
        else:
            claims = {}
        return self._held_from(shared, claims, client_id)

    def _sealed_claims(self, value: str) -> dict[str, Any]:
        """The claims of a sealed JWT, signature not checked: exp, nbf, aud and iss are."""
        claims = unverified_claims(value)
        check_claims(claims, Expectations.of(self.profile), now=self._clock.time())
        return claims

    def _held_from(self, shared: SharedToken, claims: dict[str, Any], client_id: str) -> HeldToken:
        if claims:
            check_client(claims, client_id)
        _check_record(shared, claims)
        return token_from_shared(
            shared,
            claims,
            self.profile,
            now=self._clock.monotonic(),
            wall_now=self._clock.time(),
            rng=self._rng,
        )

    def __repr__(self) -> str:
        return f"TokenMinter(profile={self.profile.name!r}, breaker={self.breaker!r})"


def _check_record(shared: SharedToken, claims: dict[str, Any]) -> None:
    """The stored record must describe the token it carries (fingerprint, no longer life)."""
    exp = claims.get("exp")
    if fingerprint(shared.value) != shared.fingerprint or (
        isinstance(exp, int | float) and exp < shared.expires_at - 1
    ):
        raise InvalidTokenError(
            "shared token does not match its record", description="inconsistent record"
        )
