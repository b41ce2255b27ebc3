"""ExchangeMinter: one exchange at the IdP, hold-off -> breaker -> IdP -> verify -> entry.

The only object that asks the IdP for an exchange profile. It refuses at once
while the IdP's 429 asks us to wait or the token endpoint's circuit is open;
otherwise it reads the credentials, sends the exchange, verifies the issued
token as the profile's ``verify`` says and turns it into an
:class:`~sidecar.exchange.ExchangedToken` living until ``min(issued exp,
subject exp)``. Every failure leaves as the documented
:class:`~sidecar.errors.ExchangeError`.

Only transport errors, timeouts, 5xx and garbage count against the breaker; a
429, a rejected user token or any other OAuth refusal proves the IdP is up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.breaker import CircuitBreaker
from sidecar.clock import Clock
from sidecar.config import ACCESS_TOKEN_TYPE, ProfileConfig
from sidecar.credentials import CredentialStore
from sidecar.errors import (
    CredentialsError,
    ExchangeDeniedError,
    ExchangeError,
    ExchangeUnavailableError,
    IdPRateLimitedError,
    IdPRejectedError,
    IdPUnavailableError,
    InvalidTokenError,
    SubjectRejectedError,
)
from sidecar.exchange._cache import ExchangedToken
from sidecar.idp import IdPClient, TokenResponse
from sidecar.metrics import Metrics
from sidecar.subject import Subject
from sidecar.verify import TokenVerifier

#: Retry-After of an exchange that failed transiently (transport error, 5xx, garbage).
TRANSIENT_RETRY_AFTER = 1.0
#: OAuth errors that reject the user's token rather than the exchange itself.
_SUBJECT_ERRORS = frozenset({"invalid_grant"})


class ExchangeMinter:
    """Exchanges one user token at a time at the IdP for one profile.

    Invariant: a request that took the breaker's half-open probe gives it
    back, whatever becomes of it (as :class:`~sidecar.minter.TokenMinter`).
    """

    def __init__(
        self,
        profile: ProfileConfig,
        *,
        idp: IdPClient,
        verifier: TokenVerifier,
        breaker: CircuitBreaker,
        metrics: Metrics,
        clock: Clock,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.profile = profile
        self.breaker = breaker
        self._idp = idp
        self._verifier = verifier
        self._duration = metrics.exchange_duration.labels(profile.name)
        self._clock = clock
        self._credentials = CredentialStore(profile, environ)
        self._hold_until = 0.0  # no IdP request before this monotonic instant (a 429)

    async def mint(self, subject_token: str, scope: str | None, subject: Subject) -> ExchangedToken:
        """Exchange ``subject_token`` for ``scope`` (None: none sent).

        Raises:
            ExchangeError: ``ExchangeUnavailableError`` (rate limited, circuit
                open, transient, misconfigured), ``SubjectRejectedError`` or
                ``ExchangeDeniedError``.
        """
        name = self.profile.name
        now = self._clock.monotonic()
        if now < self._hold_until:
            raise ExchangeUnavailableError(
                name,
                "the IdP's rate limit is in effect",
                retry_after=self._hold_until - now,
                result="rate_limited",
            )
        if not self.breaker.allow():
            raise ExchangeUnavailableError(
                name,
                "circuit open: not calling the IdP",
                retry_after=self.breaker.retry_in() or TRANSIENT_RETRY_AFTER,
                result="circuit_open",
            )
        try:
            token = await self._request(subject_token, scope, subject)
        except CredentialsError as exc:
            self.breaker.release_probe()  # the IdP was not asked
            raise unavailable(name, exc, code="misconfigured") from None
        except IdPUnavailableError as exc:
            self.breaker.record_failure()
            raise unavailable(name, exc) from None
        except IdPRateLimitedError as exc:
            self.breaker.record_success()  # a 429 proves the IdP is up
            wait = exc.retry_after if exc.retry_after is not None else TRANSIENT_RETRY_AFTER
            self._hold_until = self._clock.monotonic() + wait
            raise unavailable(name, exc, retry_after=wait, result="rate_limited") from None
        except IdPRejectedError as exc:
            self.breaker.record_success()  # the IdP answered: one user's refusal says no more
            raise rejection(name, exc) from None
        except InvalidTokenError as exc:
            self.breaker.record_success()
            raise unavailable(name, exc) from None
        except BaseException:
            # Cancelled, or a bug below us: no verdict on the IdP, but free the probe slot.
            self.breaker.release_probe()
            raise
        self.breaker.record_success()
        return token

    async def _request(
        self, subject_token: str, scope: str | None, subject: Subject
    ) -> ExchangedToken:
        """Credentials, the IdP request and verification, timed on the injected clock."""
        started = self._clock.monotonic()
        try:
            creds = self._credentials.load()
            response = await self._idp.exchange_token(self.profile, creds, subject_token, scope)
            claims = await self._verifier.verify(self.profile, response.access_token)
            return self._entry(response, claims, subject)
        finally:
            self._duration.observe(self._clock.monotonic() - started)

    def _entry(
        self, response: TokenResponse, claims: dict[str, Any], subject: Subject
    ) -> ExchangedToken:
        """The cache entry of a verified response: it lives until min(issued exp, subject exp)."""
        now, wall_now = self._clock.monotonic(), self._clock.time()
        lifetimes = [] if response.expires_in is None else [response.expires_in]
        exp = claims.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            lifetimes.append(exp - wall_now)
        if not lifetimes:
            raise InvalidTokenError(
                "exchanged token has no expires_in and no exp", description="lifetime unknown"
            )
        lifetime = min(lifetimes)
        capped = subject.expires_at is not None and subject.expires_at - wall_now < lifetime
        if subject.expires_at is not None and capped:
            lifetime = subject.expires_at - wall_now
        scope = response.scope
        if scope is None and isinstance(claims.get("scope"), str):
            scope = claims["scope"] or None
        return ExchangedToken(
            response.access_token,
            token_type=response.token_type,
            issued_token_type=response.issued_token_type or self._requested_type,
            scope=scope,
            expires_at=now + lifetime,
            expires_at_wall=wall_now + lifetime,
            capped_by_subject=capped,
        )

    @property
    def _requested_type(self) -> str:
        """The issued type to report when the IdP did not say (Entra's OBO never does)."""
        if self.profile.grant == "token_exchange" and self.profile.requested_token_type:
            return self.profile.requested_token_type
        return ACCESS_TOKEN_TYPE

    def __repr__(self) -> str:
        return f"ExchangeMinter(profile={self.profile.name!r}, breaker={self.breaker!r})"


def unavailable(
    profile: str,
    exc: Exception,
    *,
    retry_after: float = TRANSIENT_RETRY_AFTER,
    result: str = "error",
    code: str = "token_unavailable",
) -> ExchangeUnavailableError:
    """A 503 for a failure of the exchange itself, told in the IdP's words, never a token's."""
    error = getattr(exc, "error", None)
    description = getattr(exc, "description", None) or str(exc)
    return ExchangeUnavailableError(
        profile,
        f"no token from the IdP: {description}",
        retry_after=retry_after,
        result=result,
        code=code,
        error=error,
        description=description,
    )


def rejection(profile: str, exc: IdPRejectedError) -> ExchangeError:
    """``invalid_grant`` rejects the user's token; other refusals and claims challenges deny."""
    words = f"{exc.error}: {exc.description}" if exc.description else str(exc.error)
    if exc.error in _SUBJECT_ERRORS and exc.claims is None:
        return SubjectRejectedError(
            profile,
            f"the IdP rejected the subject token ({words})",
            error=exc.error,
            description=exc.description,
        )
    return ExchangeDeniedError(
        profile,
        f"the IdP refused the exchange ({words})",
        error=exc.error,
        description=exc.description,
        claims=exc.claims,
    )
