"""The dev IdP's token endpoint: a client-credentials grant from request body to answer.

Fault knobs that replace the answer come first; then ``grant_type``, client
authentication (a secret, or a ``private_key_jwt`` assertion checked against
the injected clock and accepted once), the client's grants, and issuance.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import uuid
from typing import Any

import jwt
from aiohttp import hdrs, web

from sidecar.devidp._admin import _IdPAdmin
from sidecar.devidp._faults import WRONG_AUDIENCE, Faults
from sidecar.devidp._keys import _shared_key, _SigningKey
from sidecar.devidp._oauth import (
    _ASSERTION_ALGORITHMS,
    _GARBAGE,
    _NO_STORE,
    _SENSITIVE_FIELDS,
    ASSERTION_TYPE,
    MAX_ASSERTION_BYTES,
    MAX_ASSERTION_LIFETIME,
    NO_AUDIENCE,
    RATE_LIMIT,
    _auth_method,
    _basic_credentials,
    _format_seconds,
    _invalid_client,
    _invalid_request,
    _oauth_error,
    _read_fields,
    _RejectedError,
    _request_base,
    _secret_matches,
    _status_answer,
    _unauthorized,
)
from sidecar.devidp._records import DevClient, MaskedValues, RecordedRequest


class _TokenEndpoint(_IdPAdmin):
    """``POST /oauth/token`` of :class:`~sidecar.devidp.DevIdP`, with its fault knobs applied."""

    # -- the token endpoint -----------------------------------------------------

    async def _token_endpoint(self, request: web.Request) -> web.StreamResponse:
        self.token_requests += 1
        plan = self.faults.consume()
        record = RecordedRequest(content_type=request.content_type)
        self.requests.append(record)
        response = await self._answer(request, plan, record)
        if response is None:
            # The connection is gone; aiohttp discards whatever we return.
            return web.Response(status=204)
        record.status = response.status
        return response

    async def _answer(
        self, request: web.Request, plan: Faults, record: RecordedRequest
    ) -> web.Response | None:
        """The answer to one token request, or ``None`` when the connection was reset."""
        bad_body: _RejectedError | None = None
        try:
            fields = await _read_fields(request)
        except _RejectedError as exc:
            fields, bad_body = {}, exc
        record.fields = {k: v for k, v in fields.items() if k not in _SENSITIVE_FIELDS}
        record.sensitive = MaskedValues({k: fields[k] for k in _SENSITIVE_FIELDS if k in fields})
        if plan.delay > 0:
            # Real time on purpose: a slow IdP must trip the caller's real socket timeouts.
            await asyncio.sleep(plan.delay)
        if plan.hang:
            await self.faults.park()
        if plan.reset:
            if request.transport is not None:
                request.transport.abort()
            return None
        fault = self._fault_answer(plan, record)
        if fault is not None:
            return fault
        try:
            if bad_body is not None:
                raise bad_body
            return self._grant(request, fields, plan, record)
        except _RejectedError as exc:
            record.error = exc.error
            return exc.response()

    def _fault_answer(self, plan: Faults, record: RecordedRequest) -> web.Response | None:
        """The answer that replaces the OAuth flow under a fault knob, if any."""
        if plan.status is not None:
            response, record.error = _status_answer(plan.status)
            return response
        if plan.rate_limit:
            record.error = "too_many_requests"
            return self._rate_limited(plan)
        if plan.garbage:
            return web.Response(status=200, text=_GARBAGE, content_type="text/html")
        return None

    def _rate_limited(self, plan: Faults) -> web.Response:
        reset = plan.ratelimit_reset
        if reset is None:
            reset = math.ceil(self._clock.time()) + 1
        headers = {
            "x-ratelimit-limit": str(RATE_LIMIT),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": _format_seconds(reset),
        }
        if plan.retry_after is not None:
            headers[hdrs.RETRY_AFTER] = _format_seconds(plan.retry_after)
        return _oauth_error(429, "too_many_requests", "Global limit has been reached", headers)

    def _grant(
        self, request: web.Request, fields: dict[str, str], plan: Faults, record: RecordedRequest
    ) -> web.Response:
        grant_type = fields.get("grant_type")
        if not grant_type:
            raise _invalid_request("Missing required parameter: grant_type")
        if grant_type != "client_credentials":
            raise _RejectedError(
                400, "unsupported_grant_type", f"Unsupported grant type: {grant_type}"
            )
        client = self._authenticate(request, fields, record)
        if "client_credentials" not in client.grant_types:
            raise _RejectedError(
                403,
                "unauthorized_client",
                "Grant type 'client_credentials' not allowed for the client.",
            )
        audience, scopes = self._authorize(client, fields)
        return self._issue(request, client, audience, scopes, plan)

    def _authenticate(
        self, request: web.Request, fields: dict[str, str], record: RecordedRequest
    ) -> DevClient:
        """The client that authenticated with exactly one method, or a rejection."""
        basic = _basic_credentials(request)
        secret: str | None
        record.auth_method = method = _auth_method(fields, basic)
        if method == "private_key_jwt":
            return self._authenticate_assertion(request, fields, record)
        if basic is not None:
            client_id, secret = basic
            record.sensitive = MaskedValues({**record.sensitive, "client_secret": secret})
            if fields.get("client_id", client_id) != client_id:
                raise _unauthorized()
        else:
            client_id, secret = fields.get("client_id", ""), fields.get("client_secret")
        record.client_id = client_id or None
        client = self.clients.get(client_id)
        if client is None or secret is None or not _secret_matches(secret, client.client_secret):
            raise _unauthorized()
        return client

    def _authenticate_assertion(
        self, request: web.Request, fields: dict[str, str], record: RecordedRequest
    ) -> DevClient:
        """Verify a ``private_key_jwt`` client assertion (RFC 7523) and return its client."""
        if fields.get("client_assertion_type") != ASSERTION_TYPE:
            raise _invalid_request(f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = fields.get("client_assertion", "")
        if len(assertion.encode()) > MAX_ASSERTION_BYTES:
            raise _invalid_client(f"client_assertion must be at most {MAX_ASSERTION_BYTES} bytes")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _invalid_client("client_assertion is not a valid JWT") from exc
        subject = unverified.get("sub")
        client_id = fields.get("client_id") or (subject if isinstance(subject, str) else "")
        record.client_id = client_id or None
        client = self.clients.get(client_id)
        if client is None or client.public_key_pem is None:
            raise _invalid_client("Unknown client or no public key registered for it")
        audiences = self._assertion_audiences(request)
        claims = self._verify_assertion(assertion, client, client.public_key_pem, audiences)
        self._remember_jti(client.client_id, claims["jti"], claims["exp"])
        return client

    def _assertion_audiences(self, request: web.Request) -> list[str]:
        base = _request_base(request)
        return [self._issuer_for(request), base + "/oauth/token", base + "/"]

    def _verify_assertion(
        self, assertion: str, client: DevClient, key: bytes, audiences: list[str]
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                key,
                algorithms=_ASSERTION_ALGORITHMS,
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
            raise _invalid_client(f"Invalid client_assertion: {exc}") from exc
        if not claims["iss"] == claims["sub"] == client.client_id:
            raise _invalid_client("client_assertion iss and sub must be the client_id")
        now = self._clock.time()
        exp, nbf = claims["exp"], claims.get("nbf", now)
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
            raise _invalid_client("client_assertion exp and nbf must be numbers")
        if exp <= now or nbf > now:
            raise _invalid_client("client_assertion is expired or not yet valid")
        if exp > now + MAX_ASSERTION_LIFETIME:
            raise _invalid_client("client_assertion exp must be at most 5 minutes ahead")
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            raise _invalid_client("client_assertion jti must be a non-empty string")
        return claims

    def _remember_jti(self, client_id: str, jti: str, exp: float) -> None:
        now = self._clock.time()
        # Forget jtis whose assertions have expired: they could not be replayed anyway.
        self._seen_jti = {key: until for key, until in self._seen_jti.items() if until > now}
        if (client_id, jti) in self._seen_jti:
            raise _invalid_client("client_assertion jti has already been used")
        self._seen_jti[client_id, jti] = exp

    def _authorize(self, client: DevClient, fields: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        """The audience and scopes to grant (``audience`` wins over RFC 8707 ``resource``)."""
        audience = fields.get("audience") or fields.get("resource") or self.default_audience
        if not audience:
            raise _RejectedError(403, "access_denied", NO_AUDIENCE)
        granted = client.audiences.get(audience)
        if granted is None:
            raise _RejectedError(
                403,
                "access_denied",
                f'Client is not authorized to access "{audience}". You need to create a '
                '"client-grant" associated to this API.',
            )
        requested = fields.get("scope")
        if requested is None:
            return audience, granted
        wanted = tuple(dict.fromkeys(requested.split()))
        missing = [scope for scope in wanted if scope not in granted]
        if missing:
            description = f"Client has not been granted scopes: {' '.join(missing)}"
            raise _RejectedError(403, "invalid_scope", description)
        return audience, wanted

    def _issue(
        self,
        request: web.Request,
        client: DevClient,
        audience: str,
        scopes: tuple[str, ...],
        plan: Faults,
    ) -> web.Response:
        """A successful token answer, shaped by the token knobs of ``plan``."""
        if plan.opaque:
            access_token = secrets.token_urlsafe(24)
        else:
            access_token = self._sign(self._claims(request, client, audience, scopes, plan), plan)
        body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer"}
        if not plan.omit_expires_in:
            lifetime = self.token_lifetime
            body["expires_in"] = str(lifetime) if plan.expires_in_as_string else lifetime
        if scopes:
            body["scope"] = " ".join(scopes)
        self.issued += 1
        self.issued_tokens.append(access_token)
        return web.json_response(body, headers=_NO_STORE)

    def _claims(
        self,
        request: web.Request,
        client: DevClient,
        audience: str,
        scopes: tuple[str, ...],
        plan: Faults,
    ) -> dict[str, Any]:
        now = int(self._clock.time())
        exp = now - 60 if plan.expired else now + self.token_lifetime
        claims: dict[str, Any] = {
            "iss": self._issuer_for(request),
            "sub": f"{client.client_id}@clients",
            "aud": WRONG_AUDIENCE if plan.wrong_aud else audience,
            "azp": client.client_id,
            "gty": "client-credentials",
            "iat": exp - self.token_lifetime,
            "exp": exp,
            "jti": uuid.uuid4().hex,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        return claims

    def _sign(self, claims: dict[str, Any], plan: Faults) -> str:
        key = self._signing
        if plan.unpublished_key:
            if self._unpublished is None:
                self._unpublished = _SigningKey.create(_shared_key(1))
            key = self._unpublished
        headers = {"kid": key.kid, "typ": "JWT"}
        return jwt.encode(claims, key.private_key, algorithm="RS256", headers=headers)
