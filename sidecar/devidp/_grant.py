"""The dev IdP's token endpoint: a token request from body to answer, for every grant.

Fault knobs that replace the answer come first; then ``grant_type``, client
authentication (:class:`~sidecar.devidp._clientauth.ClientAuthenticator`), the
client's grants (audience and scopes), and issuance, where the token-shaping
knobs apply. The exchange grants (RFC 8693 token exchange and Entra's
on-behalf-of) continue in :mod:`sidecar.devidp._exchange` once the client is
authenticated.
"""

from __future__ import annotations

import asyncio
import math

from aiohttp import hdrs, web

from sidecar.clock import Clock
from sidecar.devidp._clientauth import ClientAuthenticator
from sidecar.devidp._exchange import EXCHANGE_GRANTS, ExchangeGrants
from sidecar.devidp._faults import Faults
from sidecar.devidp._issuance import TokenIssuer, authorize, client_credentials_claims
from sidecar.devidp._oauth import (
    GARBAGE,
    RATE_LIMIT,
    SENSITIVE_FIELDS,
    RejectedError,
    format_seconds,
    invalid_request,
    oauth_error,
    read_fields,
    status_answer,
)
from sidecar.devidp._records import MaskedValues, RecordedRequest
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
        self._issuer = TokenIssuer(state, clock)
        self._exchanges = ExchangeGrants(state, clock, self._issuer)

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
        if grant_type in EXCHANGE_GRANTS:
            client = self._authenticator.authenticate(request, fields, record)
            return self._exchanges.answer(request, client, grant_type, fields, plan)
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
        audience, scopes = authorize(self._state, client, fields)
        claims = client_credentials_claims(client, audience, scopes)
        return self._issuer.answer(request, plan, claims, scope=" ".join(scopes))
