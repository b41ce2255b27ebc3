"""Auth0's wire format at the token endpoint: protocol constants, request parsing, error answers.

An OAuth error is raised as :class:`RejectedError` anywhere in the token flow
and turned into Auth0's JSON error body (with ``no-store`` headers) once.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from http import HTTPStatus
from urllib.parse import unquote_plus

from aiohttp import hdrs, web

from sidecar.config import ASYMMETRIC_ALGORITHMS

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: RFC 8693 token exchange (Auth0 On-Behalf-Of, Keycloak, Okta).
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
#: RFC 7523 JWT bearer grant, as Microsoft Entra uses it for on-behalf-of.
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: RFC 8693 token type of an access token.
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
#: Auth0 rejects client assertions longer than this many bytes.
MAX_ASSERTION_BYTES = 2048
#: Auth0 rejects client assertions whose ``exp`` is further ahead than this.
MAX_ASSERTION_LIFETIME = 300
#: The ``x-ratelimit-limit`` we advertise (Auth0's free-plan token endpoint limit).
RATE_LIMIT = 30
NO_AUDIENCE = "No audience parameter was provided, and no default audience has been configured"
AUTH_METHODS = ("client_secret_post", "client_secret_basic", "private_key_jwt")
#: The algorithms accepted for client assertions, as discovery advertises them.
ASSERTION_ALGORITHMS = ASYMMETRIC_ALGORITHMS
#: Body fields that are recorded only masked (see :class:`~sidecar.devidp.MaskedValues`).
SENSITIVE_FIELDS = (
    "client_secret",
    "client_assertion",
    "subject_token",
    "assertion",
    "actor_token",
)
#: The cache headers of every token endpoint answer (RFC 6749 §5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: The body of the ``garbage`` fault: a gateway's HTML page under a 200.
GARBAGE = "<html><body><h1>Service temporarily unavailable</h1></body></html>"


class RejectedError(Exception):
    """An OAuth error answer; raised inside the token flow, turned into a response once."""

    def __init__(
        self, status: int, error: str, description: str, *, claims: str | None = None
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description
        #: An Entra-style ``claims`` challenge (conditional access), sent back as is.
        self.claims = claims

    def response(self) -> web.Response:
        """Auth0's JSON error answer for this rejection (with ``claims`` when there is one)."""
        return oauth_error(self.status, self.error, self.description, claims=self.claims)


def oauth_error(
    status: int,
    error: str,
    description: str,
    headers: Mapping[str, str] | None = None,
    *,
    claims: str | None = None,
) -> web.Response:
    """An Auth0 error body (``error``, ``error_description``) with ``no-store`` headers."""
    body = {"error": error, "error_description": description}
    if claims is not None:
        body["claims"] = claims
    return web.json_response(body, status=status, headers={**NO_STORE, **(headers or {})})


def unauthorized() -> RejectedError:
    # Auth0's answer to a wrong client id or secret: not RFC 6749's invalid_client.
    return RejectedError(401, "access_denied", "Unauthorized")


def invalid_request(description: str) -> RejectedError:
    """A malformed request (RFC 6749 ``invalid_request``)."""
    return RejectedError(400, "invalid_request", description)


def invalid_client(description: str) -> RejectedError:
    """A failed client assertion (RFC 6749 ``invalid_client``)."""
    return RejectedError(401, "invalid_client", description)


def status_answer(status: int) -> tuple[web.Response, str | None]:
    """An Auth0-like answer for an injected status: HTML from a gateway, JSON otherwise."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if status in (502, 504):
        html = f"<html><head><title>{status} {phrase}</title></head><body>{phrase}</body></html>"
        return web.Response(status=status, text=html, content_type="text/html"), None
    known = {
        401: ("access_denied", "Unauthorized"),
        403: ("access_denied", phrase),
        429: ("too_many_requests", "Global limit has been reached"),
    }
    error, description = known.get(status, ("invalid_request", phrase))
    if status >= 500:
        error = "server_error"
    return oauth_error(status, error, description), error


def format_seconds(value: float) -> str:
    """A header value in seconds: ``30`` for whole numbers, ``1.5`` otherwise."""
    return str(int(value)) if float(value).is_integer() else str(value)


async def read_fields(request: web.Request) -> dict[str, str]:
    """The body as string fields, from JSON or a form; repeated or non-string values are refused."""
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError as exc:
            raise invalid_request("Request body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise invalid_request("Request body must be a JSON object")
        items = list(data.items())
    else:
        items = list((await request.post()).items())
    fields: dict[str, str] = {}
    for name, value in items:
        if not isinstance(value, str):
            raise invalid_request(f"Invalid value for parameter: {name}")
        if name in fields:
            raise invalid_request(f"Parameter must not be repeated: {name}")
        fields[name] = value
    return fields


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """The (client_id, secret) of an ``Authorization: Basic`` header (RFC 6749 §2.3.1)."""
    scheme, _, param = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise unauthorized() from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise unauthorized()
    return unquote_plus(client_id), unquote_plus(secret)


def auth_method(fields: Mapping[str, str], basic: tuple[str, str] | None) -> str | None:
    """The one client authentication method a request uses (None: none); two are refused."""
    present = [
        name
        for name, used in (
            ("client_secret_post", "client_secret" in fields),
            ("client_secret_basic", basic is not None),
            ("private_key_jwt", "client_assertion" in fields or "client_assertion_type" in fields),
        )
        if used
    ]
    if len(present) > 1:
        raise invalid_request("Only one client authentication method may be used")
    return present[0] if present else None


def secret_matches(given: str, expected: str | None) -> bool:
    """Whether ``given`` is the client's secret, compared in constant time."""
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def request_base(request: web.Request) -> str:
    """The ``scheme://host`` the request reached this server at."""
    return f"{request.scheme}://{request.host}"
