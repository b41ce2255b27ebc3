"""What a client may get and how it is handed out: client grants, then the signed answer.

:func:`authorize` applies a client's grants (Auth0 "client grants": an API and
its scopes); :class:`TokenIssuer` signs the token and builds the answer for
every grant type, with the token-shaping fault knobs applied (``opaque``,
``wrong_aud``, ``expired``, ``unpublished_key``, ``omit_expires_in``,
``expires_in_as_string``), and remembers each token it issued for leak scans.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sidecar.clock import Clock
from sidecar.devidp._faults import WRONG_AUDIENCE, Faults
from sidecar.devidp._oauth import NO_AUDIENCE, NO_STORE, RejectedError
from sidecar.devidp._records import DevClient
from sidecar.devidp._state import IdPState


def authorize(
    state: IdPState, client: DevClient, fields: Mapping[str, str]
) -> tuple[str, tuple[str, ...]]:
    """The audience and scopes to grant (``audience`` wins over RFC 8707 ``resource``)."""
    audience = fields.get("audience") or fields.get("resource") or state.default_audience
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


class TokenIssuer:
    """Signs access tokens and answers them, shaped by the token knobs of a request's plan.

    Invariant: every token answered is appended to ``state.issued_tokens``
    and counted in ``state.issued``.
    """

    def __init__(self, state: IdPState, clock: Clock) -> None:
        self._state = state
        self._clock = clock

    def answer(
        self,
        request: web.Request,
        plan: Faults,
        claims: Mapping[str, Any],
        *,
        scope: str | None,
        extra: Mapping[str, Any] | None = None,
    ) -> web.Response:
        """A 200 token answer for ``claims`` (``iss``, ``iat``, ``exp`` and ``jti`` are added).

        ``scope`` is the answer's ``scope`` field; ``extra`` adds fields such
        as ``issued_token_type``.
        """
        if plan.opaque:
            access_token = secrets.token_urlsafe(24)
        else:
            signed = self._timed(request, claims, plan)
            access_token = self._state.keys.sign(signed, unpublished=plan.unpublished_key)
        body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer"}
        if extra:
            body.update(extra)
        if not plan.omit_expires_in:
            lifetime = self._state.token_lifetime
            body["expires_in"] = str(lifetime) if plan.expires_in_as_string else lifetime
        if scope:
            body["scope"] = scope
        self._state.issued += 1
        self._state.issued_tokens.append(access_token)
        return web.json_response(body, headers=NO_STORE)

    def _timed(
        self, request: web.Request, claims: Mapping[str, Any], plan: Faults
    ) -> dict[str, Any]:
        now = int(self._clock.time())
        lifetime = self._state.token_lifetime
        exp = now - 60 if plan.expired else now + lifetime
        signed = {"iss": self._state.issuer_for(request), **claims}
        if plan.wrong_aud:
            signed["aud"] = WRONG_AUDIENCE
        return signed | {"iat": exp - lifetime, "exp": exp, "jti": uuid.uuid4().hex}


def client_credentials_claims(
    client: DevClient, audience: str, scopes: tuple[str, ...]
) -> dict[str, Any]:
    """The claims of an Auth0 client-credentials token (``sub`` = ``CLIENT_ID@clients``)."""
    claims: dict[str, Any] = {
        "sub": f"{client.client_id}@clients",
        "aud": audience,
        "azp": client.client_id,
        "gty": "client-credentials",
    }
    if scopes:
        claims["scope"] = " ".join(scopes)
    return claims
