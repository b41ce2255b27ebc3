"""The dev IdP's exchange grants: RFC 8693 token exchange and Entra-style on-behalf-of.

Both trade a user's access token (issued by this IdP, for an API the client
owns: :attr:`~sidecar.devidp.DevClient.subject_audiences`) for a token for
another API, issued to the same user:

- token exchange, as Auth0's On-Behalf-Of: ``subject_token``,
  ``subject_token_type``, ``audience`` (or ``resource``) and ``scope``; the
  issued token's ``sub`` is the user's, and the delegation is recorded in
  nested ``act`` claims (``{"act": {"sub": CLIENT_ID}}``, at most 5 levels);
  an unusable subject is Auth0's 401 ``invalid_grant``;
- on-behalf-of, as Microsoft Entra's: ``assertion``,
  ``requested_token_use=on_behalf_of`` and ``scope`` in Entra's form
  (``https://api.example.com/read:tools``, or ``.../.default`` for every
  granted scope); an unusable assertion is Entra's 400 ``invalid_grant``.

The exchange knobs of :class:`~sidecar.devidp.Faults` (``subject_rejected``,
``exchange_error`` with ``exchange_claims``) answer after client
authentication; the other knobs apply as for every grant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt
from aiohttp import web

from sidecar.clock import Clock
from sidecar.devidp._faults import Faults
from sidecar.devidp._issuance import TokenIssuer, authorize
from sidecar.devidp._oauth import (
    ACCESS_TOKEN_TYPE,
    JWT_BEARER_GRANT,
    TOKEN_EXCHANGE_GRANT,
    RejectedError,
    invalid_request,
)
from sidecar.devidp._records import DevClient
from sidecar.devidp._state import IdPState

EXCHANGE_GRANTS = (TOKEN_EXCHANGE_GRANT, JWT_BEARER_GRANT)
#: Auth0 records at most this many levels of delegation in ``act``.
MAX_ACT_DEPTH = 5


class ExchangeGrants:
    """Answers the exchange grants for an authenticated client."""

    def __init__(self, state: IdPState, clock: Clock, issuer: TokenIssuer) -> None:
        self._state = state
        self._clock = clock
        self._issuer = issuer

    def answer(
        self,
        request: web.Request,
        client: DevClient,
        grant_type: str,
        fields: Mapping[str, str],
        plan: Faults,
    ) -> web.Response:
        """The answer to one exchange request of ``client`` (already authenticated)."""
        if grant_type not in client.grant_types:
            raise RejectedError(
                403, "unauthorized_client", f"Grant type '{grant_type}' not allowed for the client."
            )
        on_behalf_of = grant_type == JWT_BEARER_GRANT
        subject_status = 400 if on_behalf_of else 401
        if plan.subject_rejected:
            raise RejectedError(subject_status, "invalid_grant", "Invalid subject token")
        if plan.exchange_error is not None:
            raise RejectedError(
                403,
                plan.exchange_error,
                f"Injected refusal: {plan.exchange_error}",
                claims=plan.exchange_claims,
            )
        if on_behalf_of:
            return self._on_behalf_of(request, client, fields, plan)
        return self._token_exchange(request, client, fields, plan)

    def _token_exchange(
        self, request: web.Request, client: DevClient, fields: Mapping[str, str], plan: Faults
    ) -> web.Response:
        token = fields.get("subject_token")
        if not token:
            raise invalid_request("Missing required parameter: subject_token")
        if fields.get("subject_token_type") != ACCESS_TOKEN_TYPE:
            raise invalid_request(f"subject_token_type must be {ACCESS_TOKEN_TYPE}")
        requested = fields.get("requested_token_type", ACCESS_TOKEN_TYPE)
        if requested != ACCESS_TOKEN_TYPE:
            raise invalid_request(f"requested_token_type must be {ACCESS_TOKEN_TYPE}")
        resource = fields.get("resource")
        if resource is not None and "audience" not in fields and resource not in client.audiences:
            raise RejectedError(400, "invalid_target", f'Unknown resource "{resource}"')
        user = self._subject(request, client, token, status=401)
        audience, scopes = authorize(self._state, client, fields)
        claims: dict[str, Any] = {
            "sub": user["sub"],
            "aud": audience,
            "azp": client.client_id,
            "act": _delegation(client.client_id, user.get("act")),
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        extra = {"issued_token_type": ACCESS_TOKEN_TYPE}
        return self._issuer.answer(request, plan, claims, scope=" ".join(scopes), extra=extra)

    def _on_behalf_of(
        self, request: web.Request, client: DevClient, fields: Mapping[str, str], plan: Faults
    ) -> web.Response:
        if fields.get("requested_token_use") != "on_behalf_of":
            raise invalid_request("requested_token_use must be on_behalf_of")
        token = fields.get("assertion")
        if not token:
            raise invalid_request("Missing required parameter: assertion")
        requested = fields.get("scope")
        if not requested:
            raise invalid_request("Missing required parameter: scope")
        user = self._subject(request, client, token, status=400)
        audience, scopes = _entra_scopes(client, requested.split())
        claims = {
            "sub": user["sub"],
            "aud": audience,
            "azp": client.client_id,
            "scp": " ".join(scopes),
            "ver": "2.0",
        }
        extra = {"ext_expires_in": self._state.token_lifetime}
        return self._issuer.answer(request, plan, claims, scope=requested, extra=extra)

    def _subject(
        self, request: web.Request, client: DevClient, token: str, *, status: int
    ) -> dict[str, Any]:
        """The claims of the user's token, or ``invalid_grant`` (Auth0 401, Entra 400)."""
        if not client.subject_audiences:
            raise RejectedError(
                status, "invalid_grant", "The client owns no API whose user tokens it may exchange"
            )
        try:
            claims = self._state.keys.verify(
                token,
                audience=client.subject_audiences,
                issuer=self._state.issuer_for(request),
                now=self._clock.time(),
            )
        except jwt.PyJWTError as exc:
            raise RejectedError(
                status, "invalid_grant", f"Invalid subject token: {type(exc).__name__}"
            ) from None
        if str(claims["sub"]).endswith("@clients"):
            raise RejectedError(status, "invalid_grant", "The subject token is not a user's token")
        return claims


def _delegation(client_id: str, previous: object) -> dict[str, Any]:
    """The ``act`` claim of the issued token: this client, acting for the subject's actors."""
    act: dict[str, Any] = {"sub": client_id}
    depth, inner = 1, previous
    while isinstance(inner, dict):
        depth += 1
        inner = inner.get("act")
    if depth > MAX_ACT_DEPTH:
        raise RejectedError(401, "invalid_grant", "Delegation chain is too long")
    if isinstance(previous, dict):
        act["act"] = previous
    return act


def _entra_scopes(client: DevClient, requested: list[str]) -> tuple[str, tuple[str, ...]]:
    """Entra's ``{API}{scope}`` scopes: one API, scopes granted there (``.default``: all)."""
    for audience, granted in client.audiences.items():
        if all(scope.startswith(audience) for scope in requested):
            names = tuple(dict.fromkeys(scope.removeprefix(audience) for scope in requested))
            if names == (".default",):
                return audience, granted
            missing = [name for name in names if name not in granted]
            if missing:
                raise RejectedError(
                    400, "invalid_scope", f"The scopes {' '.join(missing)} are not granted"
                )
            return audience, names
    raise RejectedError(400, "invalid_scope", "The scopes do not name one API the client may call")
