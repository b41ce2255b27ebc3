"""Every exception of the daemon, drawn as one tree, and the failure kinds of a refresh.

Each error the sidecar raises on purpose derives from :class:`TokenSidecarError`
and says whether retrying can help (``retryable``). IdP failures are mapped to
these types at one boundary (:mod:`sidecar.idp`), so nothing above it sees an
aiohttp, asyncio or JSON exception. The client library's public
``SidecarError`` is not in this tree: ``sidecar.client`` stands on its own.

    TokenSidecarError
    ├── ConfigError                 bad config: names file, key and problem
    ├── RefreshError                a refresh did not yield a usable token (``kind``)
    │   ├── IdPUnavailableError     transient: connect error, 5xx, reset  (retryable)
    │   │   ├── IdPTimeoutError     the IdP did not answer in time        (retryable)
    │   │   └── IdPResponseError    the IdP answered garbage              (retryable)
    │   ├── IdPRateLimitedError     429; carries ``retry_after``          (retryable)
    │   ├── IdPRejectedError        400/401/403 OAuth error: misconfigured
    │   │   └── CredentialsError    a configured credential cannot be read
    │   ├── InvalidTokenError       signature, aud, iss or exp check failed
    │   └── CircuitOpenError        the breaker kept the request from the IdP (retryable)
    ├── CacheUnavailableError       the shared token cache (Redis) did not answer (retryable)
    ├── UnreadableValueError        a stored value (Redis, cold-start file) cannot be read
    ├── TokenUnavailableError       no servable token for a caller (``code``, ``retry_after``)
    ├── ExchangeError               an exchange of a user's token gave none (``status``, ``code``)
    │   ├── BadExchangeRequestError 400: the request itself is wrong (a scope wider than allowed)
    │   ├── InvalidSubjectError     401: the user's token failed the local check; no IdP call
    │   ├── SubjectRejectedError    401: the IdP rejected the user's token (``invalid_grant``)
    │   ├── ExchangeDeniedError     403: the IdP refused the exchange (``error``, ``claims``)
    │   └── ExchangeUnavailableError 503: transport, 5xx, 429, circuit open  (retryable)
    ├── UnknownProfileError         no such profile
    ├── ApiError                    an error answer of the token API (status, code)
    ├── ListenError                 a listener could not be opened
    └── IllegalTransitionError      a circuit breaker was asked for a move it has no edge for

Messages never contain a token, a client secret or a client assertion.
"""

from __future__ import annotations

import enum


class FailureKind(enum.StrEnum):
    """Why a refresh failed; the values are the ``result`` labels of ``refresh_total``."""

    ERROR = "error"  # transient: connect error, 5xx, garbage
    TIMEOUT = "timeout"  # transient: no answer in time
    RATE_LIMITED = "rate_limited"
    REJECTED = "rejected"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - a failure kind, not a password
    CIRCUIT_OPEN = "circuit_open"

    @property
    def transient(self) -> bool:
        """Whether this kind backs off exponentially (and counts against the breaker)."""
        return self in (FailureKind.ERROR, FailureKind.TIMEOUT)

    @property
    def misconfigured(self) -> bool:
        """Whether this kind means the profile cannot work as configured."""
        return self in (FailureKind.REJECTED, FailureKind.INVALID_TOKEN)


class TokenSidecarError(Exception):
    """Base class of every error raised by the token-sidecar daemon on purpose."""

    retryable: bool = False


class ConfigError(TokenSidecarError):
    """The configuration is invalid; the message names the file, key and problem."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class RefreshError(TokenSidecarError):
    """A refresh failed; ``kind`` is its failure class (and metrics label)."""

    kind: FailureKind = FailureKind.ERROR
    #: How long the IdP (429) or the breaker (open) asked us to wait, when they did.
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        description: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        #: The OAuth ``error`` code and ``error_description`` when the IdP sent them.
        self.error = error
        self.description = description
        self.status = status


class IdPUnavailableError(RefreshError):
    """Transient: the IdP could not be reached or answered with a server error."""

    retryable = True


class IdPTimeoutError(IdPUnavailableError):
    """The IdP did not answer within the configured timeout."""

    kind = FailureKind.TIMEOUT


class IdPResponseError(IdPUnavailableError):
    """The IdP answered with a body that is not a valid token response."""


class IdPRateLimitedError(RefreshError):
    """The IdP answered 429; ``retry_after`` is how long it asked us to wait."""

    retryable = True
    kind = FailureKind.RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        error: str | None = None,
        description: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message, error=error, description=description, status=status)
        self.retry_after = retry_after


class IdPRejectedError(RefreshError):
    """The IdP refused the request (bad credentials, grant, scope): misconfigured.

    ``claims`` is a claims challenge the IdP sent with its refusal (Entra's
    conditional access asks the caller to get a new user token with it).
    """

    kind = FailureKind.REJECTED

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        description: str | None = None,
        status: int | None = None,
        claims: str | None = None,
    ) -> None:
        super().__init__(message, error=error, description=description, status=status)
        self.claims = claims


class CredentialsError(IdPRejectedError):
    """A configured credential could not be read: the profile is misconfigured."""

    def __init__(self, description: str) -> None:
        super().__init__(description, error="credentials_unavailable", description=description)


class InvalidTokenError(RefreshError):
    """The issued token failed verification (signature, ``aud``, ``iss`` or ``exp``)."""

    kind = FailureKind.INVALID_TOKEN


class CircuitOpenError(RefreshError):
    """The circuit breaker of the token endpoint is open; no request was sent."""

    retryable = True
    kind = FailureKind.CIRCUIT_OPEN

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CacheUnavailableError(TokenSidecarError):
    """The shared token cache could not be reached or did not answer in time.

    Fleet mode maps every Redis connection, timeout and protocol error to this
    one type in :mod:`sidecar.fleet`; a refresh falls back to the IdP on its
    own when it sees it, so serving never fails because of the cache.
    """

    retryable = True


class UnreadableValueError(TokenSidecarError):
    """A stored value (fleet cache, cold-start file) could not be opened or parsed.

    ``reason`` is a metrics label; ``detail``, when given, says more for the log.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason if detail is None else f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TokenUnavailableError(TokenSidecarError):
    """No servable token for a caller; ``code`` is the token API error code."""

    retryable = True

    def __init__(self, profile: str, message: str, *, code: str, retry_after: float) -> None:
        super().__init__(message)
        self.profile = profile
        self.code = code
        self.retry_after = retry_after


class ExchangeError(TokenSidecarError):
    """An exchange of a user's token that yields no token; ``status`` and ``code`` are its answer.

    ``result`` is the ``exchange_total`` label (None: not counted there);
    ``error``, ``description`` and ``claims`` are the IdP's, when it said
    something. Messages are fixed text or the IdP's words, never a token.
    """

    status: int = 503
    code: str = "token_unavailable"
    result: str | None = "error"

    def __init__(
        self,
        profile: str,
        message: str,
        *,
        retry_after: float | None = None,
        error: str | None = None,
        description: str | None = None,
        claims: str | None = None,
    ) -> None:
        super().__init__(message)
        self.profile = profile
        self.message = message
        self.retry_after = retry_after
        self.error = error
        self.description = description
        self.claims = claims

    def copy(self) -> ExchangeError:
        """The same answer as a new exception, for the next caller it is raised to.

        An exception raised again keeps growing its traceback; a remembered or
        shared answer is raised as a copy instead.
        """
        clone = type(self).__new__(type(self), *self.args)  # no traceback, no cause
        clone.__dict__.update(self.__dict__)
        return clone


class BadExchangeRequestError(ExchangeError):
    """The exchange request itself is wrong (for example a scope wider than the profile's)."""

    status = 400
    code = "bad_request"
    result = None


class InvalidSubjectError(ExchangeError):
    """The user's token failed the local check (expired, foreign, badly signed); no IdP call."""

    status = 401
    code = "invalid_subject"
    result = "invalid_subject"


class SubjectRejectedError(ExchangeError):
    """The IdP rejected the user's token (``invalid_grant``)."""

    status = 401
    code = "subject_rejected"
    result = "subject_rejected"


class ExchangeDeniedError(ExchangeError):
    """The IdP refused the exchange (``access_denied``, ``invalid_scope``, a claims challenge)."""

    status = 403
    code = "exchange_denied"
    result = "denied"


class ExchangeUnavailableError(ExchangeError):
    """No token for now: transport error, 5xx, 429 or an open circuit; ``retry_after`` is set."""

    retryable = True

    def __init__(
        self,
        profile: str,
        message: str,
        *,
        retry_after: float,
        result: str = "error",
        code: str = "token_unavailable",
        error: str | None = None,
        description: str | None = None,
    ) -> None:
        super().__init__(
            profile, message, retry_after=retry_after, error=error, description=description
        )
        self.result = result
        self.code = code


class UnknownProfileError(TokenSidecarError):
    """The caller asked for a profile that is not configured."""

    def __init__(self, profile: str) -> None:
        super().__init__("unknown profile")
        self.profile = profile


class ApiError(TokenSidecarError):
    """An error answer of the token API; the message is fixed text, never request input."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        profile: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
        fields: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.profile = profile
        self.retry_after = retry_after
        self.headers = headers or {}
        #: More body fields of this answer (the IdP's words for an exchange refusal).
        self.fields = fields or {}


class ListenError(TokenSidecarError):
    """A listener could not be opened (port in use, socket path taken)."""


class IllegalTransitionError(TokenSidecarError, RuntimeError):
    """A circuit breaker was asked to move between states that have no edge."""
