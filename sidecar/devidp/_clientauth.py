"""Client authentication at the dev IdP's token endpoint: a secret, or a private_key_jwt assertion.

A request uses exactly one of ``client_secret_post``, ``client_secret_basic``
and ``private_key_jwt``. An assertion (RFC 7523) is checked against the
registered public key, the accepted audiences and the injected clock, and its
``jti`` is accepted once.
"""

from __future__ import annotations

from typing import Any

import jwt
from aiohttp import web

from sidecar.clock import Clock
from sidecar.devidp._oauth import (
    ASSERTION_ALGORITHMS,
    ASSERTION_TYPE,
    MAX_ASSERTION_BYTES,
    MAX_ASSERTION_LIFETIME,
    auth_method,
    basic_credentials,
    invalid_client,
    invalid_request,
    request_base,
    secret_matches,
    unauthorized,
)
from sidecar.devidp._records import DevClient, MaskedValues, RecordedRequest
from sidecar.devidp._state import IdPState


class ClientAuthenticator:
    """Finds the client a token request authenticates as, or raises the rejection.

    Invariant: an assertion ``jti`` is accepted at most once while its
    assertion is unexpired (expired ones could not be replayed anyway).
    """

    def __init__(self, state: IdPState, clock: Clock) -> None:
        self._state = state
        self._clock = clock
        self._seen_jti: dict[tuple[str, str], float] = {}

    def authenticate(
        self, request: web.Request, fields: dict[str, str], record: RecordedRequest
    ) -> DevClient:
        """The client that authenticated with exactly one method, or a rejection."""
        basic = basic_credentials(request)
        secret: str | None
        record.auth_method = method = auth_method(fields, basic)
        if method == "private_key_jwt":
            return self._authenticate_assertion(request, fields, record)
        if basic is not None:
            client_id, secret = basic
            record.sensitive = MaskedValues({**record.sensitive, "client_secret": secret})
            if fields.get("client_id", client_id) != client_id:
                raise unauthorized()
        else:
            client_id, secret = fields.get("client_id", ""), fields.get("client_secret")
        record.client_id = client_id or None
        client = self._state.clients.get(client_id)
        if client is None or secret is None or not secret_matches(secret, client.expected_secret()):
            raise unauthorized()
        return client

    def _authenticate_assertion(
        self, request: web.Request, fields: dict[str, str], record: RecordedRequest
    ) -> DevClient:
        """Verify a ``private_key_jwt`` client assertion (RFC 7523) and return its client."""
        if fields.get("client_assertion_type") != ASSERTION_TYPE:
            raise invalid_request(f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = fields.get("client_assertion", "")
        if len(assertion.encode()) > MAX_ASSERTION_BYTES:
            raise invalid_client(f"client_assertion must be at most {MAX_ASSERTION_BYTES} bytes")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise invalid_client("client_assertion is not a valid JWT") from exc
        subject = unverified.get("sub")
        client_id = fields.get("client_id") or (subject if isinstance(subject, str) else "")
        record.client_id = client_id or None
        client = self._state.clients.get(client_id)
        if client is None or client.public_key_pem is None:
            raise invalid_client("Unknown client or no public key registered for it")
        audiences = self._assertion_audiences(request)
        claims = self._verify_assertion(assertion, client, client.public_key_pem, audiences)
        self._remember_jti(client.client_id, claims["jti"], claims["exp"])
        return client

    def _assertion_audiences(self, request: web.Request) -> list[str]:
        base = request_base(request)
        return [self._state.issuer_for(request), base + "/oauth/token", base + "/"]

    def _verify_assertion(
        self, assertion: str, client: DevClient, key: bytes, audiences: list[str]
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                key,
                algorithms=list(ASSERTION_ALGORITHMS),
                audience=audiences,
                # Times are checked below against the injected clock, not pyjwt's.
                options={
                    "require": ["iss", "sub", "aud", "exp", "jti"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise invalid_client(f"Invalid client_assertion: {exc}") from exc
        if not claims["iss"] == claims["sub"] == client.client_id:
            raise invalid_client("client_assertion iss and sub must be the client_id")
        now = self._clock.time()
        exp, nbf = claims["exp"], claims.get("nbf", now)
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
            raise invalid_client("client_assertion exp and nbf must be numbers")
        if exp <= now or nbf > now:
            raise invalid_client("client_assertion is expired or not yet valid")
        if exp > now + MAX_ASSERTION_LIFETIME:
            raise invalid_client("client_assertion exp must be at most 5 minutes ahead")
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            raise invalid_client("client_assertion jti must be a non-empty string")
        return claims

    def _remember_jti(self, client_id: str, jti: str, exp: float) -> None:
        now = self._clock.time()
        # Forget jtis whose assertions have expired: they could not be replayed anyway.
        self._seen_jti = {key: until for key, until in self._seen_jti.items() if until > now}
        if (client_id, jti) in self._seen_jti:
            raise invalid_client("client_assertion jti has already been used")
        self._seen_jti[client_id, jti] = exp
