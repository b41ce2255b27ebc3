"""The exception tree of token-sidecar.

Every error the sidecar raises on purpose derives from :class:`SidecarError`;
each says whether retrying can help (``retryable``). IdP failures are mapped
to these types at one boundary (``sidecar.idp``), so nothing above it sees an
aiohttp, asyncio or JSON exception.

    SidecarError
    ├── ConfigError                 bad config: names file, key and problem
    ├── IdPError                    a token request did not yield a usable token
    │   ├── IdPUnavailableError     transient: connect error, 5xx, reset  (retryable)
    │   │   ├── IdPTimeoutError     the IdP did not answer in time        (retryable)
    │   │   └── IdPResponseError    the IdP answered garbage              (retryable)
    │   ├── IdPRateLimitedError     429; carries ``retry_after``          (retryable)
    │   ├── IdPRejectedError        400/401/403 OAuth error: misconfigured
    │   ├── InvalidTokenError       signature, aud, iss or exp check failed
    │   └── CircuitOpenError        the breaker kept the request from the IdP (retryable)
    ├── CacheUnavailableError       the shared token cache (Redis) did not answer (retryable)
    ├── TokenUnavailableError       no servable token for a caller (``code``, ``retry_after``)
    └── UnknownProfileError         no such profile

Messages never contain a token, a client secret or a client assertion.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base class of every error raised by token-sidecar on purpose."""

    retryable: bool = False


class ConfigError(SidecarError):
    """The configuration is invalid; the message names the file, key and problem."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class IdPError(SidecarError):
    """A token request failed. ``result`` is the metrics label of the failure."""

    result: str = "error"
    #: The OAuth ``error`` code and ``error_description`` when the IdP sent them.
    error: str | None = None
    description: str | None = None

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        description: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.description = description
        self.status = status

    @property
    def kind(self) -> str:
        """The failure class shown in ``/status`` ``last_error.kind``."""
        return self.result


class IdPUnavailableError(IdPError):
    """Transient: the IdP could not be reached or answered with a server error."""

    retryable = True


class IdPTimeoutError(IdPUnavailableError):
    """The IdP did not answer within the configured timeout."""

    result = "timeout"


class IdPResponseError(IdPUnavailableError):
    """The IdP answered with a body that is not a valid token response."""


class IdPRateLimitedError(IdPError):
    """The IdP answered 429; ``retry_after`` is how long it asked us to wait."""

    retryable = True
    result = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class IdPRejectedError(IdPError):
    """The IdP refused the request (bad credentials, grant, scope): misconfigured."""

    result = "rejected"


class InvalidTokenError(IdPError):
    """The issued token failed verification (signature, ``aud``, ``iss`` or ``exp``)."""

    result = "invalid_token"


class CircuitOpenError(IdPError):
    """The circuit breaker of the token endpoint is open; no request was sent."""

    retryable = True
    result = "circuit_open"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CacheUnavailableError(SidecarError):
    """The shared token cache could not be reached or did not answer in time.

    Fleet mode maps every Redis connection, timeout and protocol error to this
    one type at :mod:`sidecar.rediscache`; the engine falls back to a local
    refresh when it sees it, so serving never fails because of the cache.
    """

    retryable = True


class TokenUnavailableError(SidecarError):
    """No servable token for a caller; ``code`` is the token API error code."""

    retryable = True

    def __init__(self, profile: str, message: str, *, code: str, retry_after: float) -> None:
        super().__init__(message)
        self.profile = profile
        self.code = code
        self.retry_after = retry_after


class UnknownProfileError(SidecarError):
    """The caller asked for a profile that is not configured."""

    def __init__(self, profile: str) -> None:
        super().__init__("unknown profile")
        self.profile = profile
