"""The dev IdP's token endpoint: a client-credentials grant from request body to answer.

Fault knobs that replace the answer come first; then ``grant_type``, client
authentication (:class:`~sidecar.devidp._clientauth.ClientAuthenticator`), the
client's grants (audience and scopes), and issuance, where the token-shaping
knobs apply.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import uuid
from typing import Any

from aiohttp import hdrs, web

from sidecar.clock import Clock
from sidecar.devidp._clientauth import ClientAuthenticator
from sidecar.devidp._faults import WRONG_AUDIENCE, Faults
from sidecar.devidp._oauth import (
    GARBAGE,
    NO_AUDIENCE,
    NO_STORE,
    RATE_LIMIT,
    SENSITIVE_FIELDS,
    RejectedError,
    format_seconds,
    invalid_request,
    oauth_error,
    read_fields,
    status_answer,
)
from sidecar.devidp._records import DevClient, MaskedValues, RecordedRequest
from sidecar.devidp._state import IdPState


class TokenEndpoint:
    """``POST /oauth/token`` of one dev IdP, with its fault knobs applied.

    Invariants: every request is counted and recorded before it is answered;
    a token is counted as issued only once its answer is built; secrets and
    assertions are recorded only masked.
    """

    def __init__(self, state: IdPState, clock: Clock) -> None:
        self._state = state
        self._clock = clock
        self._authenticator = ClientAuthenticator(state, clock)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler of the route."""
        state = self._state
        state.token_requests += 1
        plan = state.faults.consume()
        record = RecordedRequest(content_type=request.content_type)
        state.requests.append(record)
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
        bad_body: RejectedError | None = None
        try:
            fields = await read_fields(request)
        except RejectedError as exc:
            fields, bad_body = {}, exc
        record.fields = {k: v for k, v in fields.items() if k not in SENSITIVE_FIELDS}
        record.sensitive = MaskedValues({k: fields[k] for k in SENSITIVE_FIELDS if k in fields})
        if plan.delay > 0:
            # Real time on purpose: a slow IdP must trip the caller's real socket timeouts.
            await asyncio.sleep(plan.delay)
        if plan.hang:
            await self._state.faults.park()
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
        except RejectedError as exc:
            record.error = exc.error
            return exc.response()

    def _fault_answer(self, plan: Faults, record: RecordedRequest) -> web.Response | None:
        """The answer that replaces the OAuth flow under a fault knob, if any."""
        if plan.status is not None:
            response, record.error = status_answer(plan.status)
            return response
        if plan.rate_limit:
            record.error = "too_many_requests"
            return self._rate_limited(plan)
        if plan.garbage:
            return web.Response(status=200, text=GARBAGE, content_type="text/html")
        return None

    def _rate_limited(self, plan: Faults) -> web.Response:
        reset = plan.ratelimit_reset
        if reset is None:
            reset = math.ceil(self._clock.time()) + 1
        headers = {
            "x-ratelimit-limit": str(RATE_LIMIT),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": format_seconds(reset),
        }
        if plan.retry_after is not None:
            headers[hdrs.RETRY_AFTER] = format_seconds(plan.retry_after)
        return oauth_error(429, "too_many_requests", "Global limit has been reached", headers)

    def _grant(
        self, request: web.Request, fields: dict[str, str], plan: Faults, record: RecordedRequest
    ) -> web.Response:
        grant_type = fields.get("grant_type")
        if not grant_type:
            raise invalid_request("Missing required parameter: grant_type")
        if grant_type != "client_credentials":
            raise RejectedError(
                400, "unsupported_grant_type", f"Unsupported grant type: {grant_type}"
            )
        client = self._authenticator.authenticate(request, fields, record)
        if "client_credentials" not in client.grant_types:
            raise RejectedError(
                403,
                "unauthorized_client",
                "Grant type 'client_credentials' not allowed for the client.",
            )
        audience, scopes = self._authorize(client, fields)
        return self._issue(request, client, audience, scopes, plan)

    def _authorize(self, client: DevClient, fields: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        """The audience and scopes to grant (``audience`` wins over RFC 8707 ``resource``)."""
        audience = fields.get("audience") or fields.get("resource") or self._state.default_audience
        if not audience:
            raise RejectedError(403, "access_denied", NO_AUDIENCE)
        granted = client.audiences.get(audience)
        if granted is None:
            raise RejectedError(
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
            raise RejectedError(403, "invalid_scope", description)
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
            claims = self._claims(request, client, audience, scopes, plan)
            access_token = self._state.keys.sign(claims, unpublished=plan.unpublished_key)
        body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer"}
        if not plan.omit_expires_in:
            lifetime = self._state.token_lifetime
            body["expires_in"] = str(lifetime) if plan.expires_in_as_string else lifetime
        if scopes:
            body["scope"] = " ".join(scopes)
        self._state.issued += 1
        self._state.issued_tokens.append(access_token)
        return web.json_response(body, headers=NO_STORE)

    def _claims(
        self,
        request: web.Request,
        client: DevClient,
        audience: str,
        scopes: tuple[str, ...],
        plan: Faults,
    ) -> dict[str, Any]:
        now = int(self._clock.time())
        lifetime = self._state.token_lifetime
        exp = now - 60 if plan.expired else now + lifetime
        claims: dict[str, Any] = {
            "iss": self._state.issuer_for(request),
            "sub": f"{client.client_id}@clients",
            "aud": WRONG_AUDIENCE if plan.wrong_aud else audience,
            "azp": client.client_id,
            "gty": "client-credentials",
            "iat": exp - lifetime,
            "exp": exp,
            "jti": uuid.uuid4().hex,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        return claims
