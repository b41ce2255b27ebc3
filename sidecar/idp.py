"""IdPClient: one token request (client credentials or an exchange), its TokenResponse, typed.

:func:`map_transport_errors` is the one boundary where aiohttp and asyncio
exceptions become :mod:`sidecar.errors` types; :func:`classify_response`
turns an HTTP status and body into a token response or the most specific
error (transient, rate limited, rejected). Nothing above this module sees an
aiohttp exception. Both request kinds share the form's client authentication
(:func:`client_auth_fields`) and this boundary: a client-credentials request
(:func:`build_form`) and an exchange of a user's token (:func:`exchange_form`:
RFC 8693 token exchange, or Entra's ``jwt-bearer`` on-behalf-of).
"""

from __future__ import annotations

import base64
import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import orjson

from sidecar.clock import Clock
from sidecar.config import ProfileConfig, url_view
from sidecar.credentials import Credentials, client_assertion
from sidecar.errors import (
    IdPRateLimitedError,
    IdPRejectedError,
    IdPResponseError,
    IdPTimeoutError,
    IdPUnavailableError,
    RefreshError,
)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: RFC 8693 token exchange.
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
#: RFC 7523 JWT bearer grant; with ``requested_token_use=on_behalf_of``, Entra's OBO.
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: The longest ``claims`` challenge kept from an IdP refusal (Entra's are a few hundred bytes).
_CLAIMS_LIMIT = 4096
#: A token response is a few KiB at most; more is garbage, not a token.
MAX_BODY = 256 * 1024
#: OAuth error codes that mean "try again later", whatever the status says.
_TRANSIENT_OAUTH_ERRORS = frozenset({"server_error", "temporarily_unavailable"})
_DESCRIPTION_LIMIT = 300
#: The longest wait an IdP's 429 can impose on us.
MAX_RETRY_AFTER = 3600.0
#: The longest token lifetime believed (``expires_in``, JWT ``exp``, a shared record): a year.
MAX_LIFETIME = 365 * 86400.0


@dataclass(frozen=True, repr=False)
class TokenResponse:
    """A parsed, not yet verified, token response."""

    access_token: str
    token_type: str
    expires_in: float | None
    scope: str | None
    #: RFC 8693's ``issued_token_type`` of an exchange answer, when the IdP sent one.
    issued_token_type: str | None = None

    def __repr__(self) -> str:
        return f"TokenResponse(expires_in={self.expires_in}, scope={self.scope!r}, value=[secure])"


@contextlib.contextmanager
def map_transport_errors(url: str, limit: float) -> Iterator[None]:
    """Translate aiohttp and timeout exceptions into :class:`IdPUnavailableError` types.

    Messages name the URL (password and query masked) and, for a timeout,
    the limit that ran out, so an operator can tell which endpoint failed how.
    """
    where = url_view(url)
    try:
        yield
    except RefreshError:
        raise
    except TimeoutError as exc:  # aiohttp's ServerTimeoutError is a TimeoutError too
        raise IdPTimeoutError(f"{where} did not answer within {limit:g}s") from exc
    except aiohttp.ClientConnectorError as exc:
        raise IdPUnavailableError(f"cannot connect to {where}: {exc.os_error.strerror}") from exc
    except aiohttp.ClientError as exc:
        raise IdPUnavailableError(f"{where}: connection failed: {type(exc).__name__}") from exc


def build_form(profile: ProfileConfig, creds: Credentials, clock: Clock) -> dict[str, str]:
    """The form fields of a client-credentials request (without Basic auth)."""
    form: dict[str, str] = {"grant_type": "client_credentials"}
    for key in ("audience", "resource", "scope"):
        value = getattr(profile, key)
        if value:
            form[key] = value
    form.update(profile.extra_params)
    return form | client_auth_fields(profile, creds, clock)


def exchange_form(
    profile: ProfileConfig, creds: Credentials, clock: Clock, subject_token: str, scope: str | None
) -> dict[str, str]:
    """The form fields of an exchange of ``subject_token`` (without Basic auth).

    ``jwt_bearer`` profiles send Entra's on-behalf-of request (``assertion``,
    ``requested_token_use``, ``scope``); ``token_exchange`` profiles RFC 8693's
    (``subject_token``, its type, the requested type, ``audience`` and/or
    ``resource``, ``scope``). ``scope`` is the effective scope of this exchange.
    """
    form: dict[str, str]
    if profile.grant == "jwt_bearer":
        form = {
            "grant_type": JWT_BEARER_GRANT,
            "assertion": subject_token,
            "requested_token_use": "on_behalf_of",
        }
    else:
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": subject_token,
            "subject_token_type": profile.subject_token_type,
        }
        if profile.requested_token_type:
            form["requested_token_type"] = profile.requested_token_type
        for key in ("audience", "resource"):
            value = getattr(profile, key)
            if value:
                form[key] = value
    if scope:
        form["scope"] = scope
    form.update(profile.extra_params)
    return form | client_auth_fields(profile, creds, clock)


def client_auth_fields(profile: ProfileConfig, creds: Credentials, clock: Clock) -> dict[str, str]:
    """The form fields that authenticate the client (none for ``client_secret_basic``)."""
    if profile.client_auth == "client_secret_post":
        secret = creds.client_secret.reveal() if creds.client_secret else ""
        return {"client_id": creds.client_id, "client_secret": secret}
    if profile.client_auth == "private_key_jwt":
        return {
            "client_id": creds.client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion(profile, creds, clock),
        }
    return {}


def basic_auth_header(client_id: str, secret: str) -> str:
    """RFC 6749 §2.3.1: form-urlencode id and secret, join with ':', then base64."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class IdPClient:
    """Requests tokens from RFC 6749 token endpoints over one aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, clock: Clock) -> None:
        self._session = session
        self._clock = clock

    async def request_token(self, profile: ProfileConfig, creds: Credentials) -> TokenResponse:
        """POST a client-credentials grant; return the parsed response or raise a RefreshError."""
        return await self._post(profile, creds, build_form(profile, creds, self._clock))

    async def exchange_token(
        self, profile: ProfileConfig, creds: Credentials, subject_token: str, scope: str | None
    ) -> TokenResponse:
        """POST an exchange of a user's token (the profile's grant); as :meth:`request_token`.

        A refusal carries the IdP's ``claims`` challenge, if it sent one
        (:attr:`~sidecar.errors.IdPRejectedError.claims`).
        """
        form = exchange_form(profile, creds, self._clock, subject_token, scope)
        return await self._post(profile, creds, form, exchange=True)

    async def _post(
        self,
        profile: ProfileConfig,
        creds: Credentials,
        form: dict[str, str],
        *,
        exchange: bool = False,
    ) -> TokenResponse:
        headers = {"Accept": "application/json"}
        if profile.client_auth == "client_secret_basic":
            secret = creds.client_secret.reveal() if creds.client_secret else ""
            headers["Authorization"] = basic_auth_header(creds.client_id, secret)
        timeout = aiohttp.ClientTimeout(total=profile.timeout, sock_connect=profile.connect_timeout)
        with map_transport_errors(profile.token_url, profile.timeout):
            async with self._session.post(
                profile.token_url,
                data=form,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            ) as resp:
                body = await read_capped(resp)
                return classify_response(
                    resp.status, resp.headers, body, now=self._clock.time(), exchange=exchange
                )


async def read_capped(resp: aiohttp.ClientResponse, limit: int = MAX_BODY) -> bytes:
    """The body of ``resp``, or :class:`IdPResponseError` once it exceeds ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > limit:
            raise IdPResponseError("IdP response body is too large", status=resp.status)
        chunks.append(chunk)
    return b"".join(chunks)


def classify_response(
    status: int, headers: Any, body: bytes, *, now: float, exchange: bool = False
) -> TokenResponse:
    """Map one HTTP answer of a token endpoint to a token or the most specific error.

    ``exchange`` parses a 200 as an exchange answer (see :func:`parse_token_response`).
    """
    if status == 200:
        return parse_token_response(body, exchange=exchange)
    payload = _json_object(body)
    error = _short(payload.get("error")) if payload else None
    description = (
        _short(payload.get("error_description") or payload.get("message")) if payload else None
    )
    if status == 429:
        retry_after = retry_after_seconds(headers, now=now)
        raise IdPRateLimitedError(
            "IdP rate limit reached",
            retry_after=retry_after,
            error=error or "too_many_requests",
            description=description,
            status=status,
        )
    if status == 408 or status >= 500 or error in _TRANSIENT_OAUTH_ERRORS:
        raise IdPUnavailableError(
            f"IdP answered {status}", error=error, description=description, status=status
        )
    if 300 <= status < 400:
        raise IdPRejectedError(
            f"IdP answered a redirect ({status}); check token_url",
            error=f"http_{status}",
            status=status,
        )
    if status == 400 and error is None:
        raise IdPResponseError("IdP answered 400 without an OAuth error", status=status)
    # 400/401/403 with an OAuth error, or any other 4xx (404: wrong token_url):
    # the request itself is wrong, and retrying it unchanged cannot help.
    if status == 404 and error is None:
        description = description or "the token endpoint was not found: check token_url"
    claims = payload.get("claims") if payload else None
    raise IdPRejectedError(
        f"IdP rejected the token request ({status} {error or 'no error code'})",
        error=error or f"http_{status}",
        description=description,
        status=status,
        claims=claims[:_CLAIMS_LIMIT] if isinstance(claims, str) and claims else None,
    )


def parse_token_response(body: bytes, *, exchange: bool = False) -> TokenResponse:
    """Parse a 200 body defensively: unknown fields ignored, ``expires_in`` int or string.

    An exchange answer may also have ``token_type`` ``N_A`` (RFC 8693: the
    issued token is not an access token) and carries ``issued_token_type``.
    """
    payload = _json_object(body)
    if payload is None:
        raise IdPResponseError("IdP answered 200 with a body that is not a JSON object", status=200)
    token = payload.get("access_token")
    if not isinstance(token, str) or not token:
        raise IdPResponseError("token response has no access_token", status=200)
    token_type = payload.get("token_type", "Bearer")
    known = {"bearer": "Bearer", "n_a": "N_A"} if exchange else {"bearer": "Bearer"}
    if not isinstance(token_type, str) or token_type.lower() not in known:
        raise IdPResponseError("token response has an unsupported token_type", status=200)
    scope = payload.get("scope")
    issued_type = payload.get("issued_token_type")
    return TokenResponse(
        access_token=token,
        token_type=known[token_type.lower()],
        expires_in=_expires_in(payload.get("expires_in")),
        scope=scope if isinstance(scope, str) and scope else None,
        issued_token_type=_short(issued_type) if exchange else None,
    )


def _expires_in(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise IdPResponseError("expires_in is not a number", status=200)
    try:
        seconds = float(value) if isinstance(value, int | float | str) else math.nan
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise IdPResponseError("expires_in is not a positive number", status=200)
    if seconds > MAX_LIFETIME:
        # Garbage, not a token for the ages: a number this big breaks every JSON encoder.
        raise IdPResponseError("expires_in is above one year", status=200)
    return seconds


def retry_after_seconds(headers: Any, *, now: float) -> float | None:
    """``Retry-After`` (seconds or HTTP date), else ``x-ratelimit-reset`` (UNIX time) - now.

    Clamped to [0, :data:`MAX_RETRY_AFTER`]: an absurd or non-finite value
    from the IdP must not park a profile forever.
    """
    raw = headers.get("Retry-After")
    seconds: float | None = None
    if raw:
        try:
            seconds = float(raw)
        except ValueError:
            with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                seconds = parsedate_to_datetime(raw).timestamp() - now
    if seconds is None:
        reset = headers.get("x-ratelimit-reset")
        if reset:
            with contextlib.suppress(ValueError):
                seconds = float(reset) - now
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def _short(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value[:_DESCRIPTION_LIMIT]
