"""The development IdP itself: :class:`DevIdP`, which owns its state, endpoints and server.

:class:`DevIdP` composes an :class:`~sidecar.devidp._state.IdPState` (clients,
keys, knobs, counters), the endpoints that read and update it, and a
:class:`~sidecar.devidp._server.LoopbackServer`. Its own methods are the ones
tests drive the IdP with; the attributes tests read are properties over the state.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sidecar.clock import Clock, SystemClock
from sidecar.devidp._faults import Faults
from sidecar.devidp._grant import TokenEndpoint
from sidecar.devidp._records import DevClient, RecordedRequest
from sidecar.devidp._server import LoopbackServer, WellKnownEndpoints, build_app
from sidecar.devidp._state import IdPState


class DevIdP:
    """An Auth0-compatible development IdP; one instance per server.

    Invariants: every issued JWT is signed by a key in :meth:`jwks` unless
    ``faults.unpublished_key`` is on; ``jti`` is fresh for every token; a client
    assertion ``jti`` is accepted once; the counters only grow until
    :meth:`reset_counters`.

    Args:
        issuer: the ``iss`` of issued tokens (Auth0 style, with a trailing
            slash). Default: the server's base URL plus ``/``, known after
            :meth:`start`, :meth:`set_base_url` or the first request.
        clock: wall time for ``iat``/``exp`` and rate-limit headers.
        token_lifetime: ``expires_in`` of issued tokens, in seconds.
        audience: the API that :meth:`register` grants clients.
    """

    def __init__(
        self,
        *,
        issuer: str | None = None,
        clock: Clock | None = None,
        token_lifetime: int = 86400,
        audience: str = "https://api.example.com/",
    ) -> None:
        self._clock: Clock = clock or SystemClock()
        self._state = IdPState(issuer=issuer, token_lifetime=token_lifetime, audience=audience)
        self._token_endpoint = TokenEndpoint(self._state, self._clock)
        self._well_known = WellKnownEndpoints(self._state)
        self._server = LoopbackServer()
        self._app: web.Application | None = None

    # -- settings -----------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """The clock that dates issued tokens and judges their expiry."""
        return self._clock

    @property
    def token_lifetime(self) -> int:
        """``expires_in`` of tokens issued from now on, in seconds."""
        return self._state.token_lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: int) -> None:
        self._state.token_lifetime = seconds

    @property
    def audience(self) -> str:
        """The API that :meth:`register` grants clients."""
        return self._state.audience

    @audience.setter
    def audience(self, audience: str) -> None:
        self._state.audience = audience

    @property
    def default_audience(self) -> str | None:
        """Used when a request names no audience (Auth0 tenant setting); off by default."""
        return self._state.default_audience

    @default_audience.setter
    def default_audience(self, audience: str | None) -> None:
        self._state.default_audience = audience

    @property
    def faults(self) -> Faults:
        """The fault knobs of the token endpoint; tests set their attributes."""
        return self._state.faults

    # -- addresses ------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The ``iss`` of issued tokens; raises ``RuntimeError`` while unknown."""
        return self._state.issuer

    @property
    def base_url(self) -> str | None:
        """Where the server is reachable (``http://127.0.0.1:PORT``), once known."""
        return self._state.base_url

    @property
    def token_url(self) -> str:
        """The token endpoint URL; raises ``RuntimeError`` before the base URL is known."""
        return self._state.token_url

    def set_base_url(self, url: str) -> None:
        """Record where the server is served; the issuer becomes ``url + "/"`` unless given."""
        self._state.set_base_url(url)

    # -- clients and keys -----------------------------------------------------------

    @property
    def clients(self) -> dict[str, DevClient]:
        """The registered clients by id (tests may read and change them)."""
        return self._state.clients

    def add_client(self, client: DevClient) -> None:
        """Register ``client``, replacing any client with the same id."""
        self._state.clients[client.client_id] = client

    def register(
        self,
        client_id: str,
        client_secret: str | None = None,
        *,
        public_key_pem: bytes | None = None,
        scopes: tuple[str, ...] = (),
    ) -> DevClient:
        """Register a client granted ``scopes`` on :attr:`audience`, and return it."""
        client = DevClient(client_id, client_secret, public_key_pem, {self.audience: scopes})
        self.add_client(client)
        return client

    def rotate_secret(self, client_id: str, new_secret: str) -> None:
        """Replace a client's secret; the old one stops working at once."""
        self._state.clients[client_id].client_secret = new_secret

    def rotate_signing_key(self, *, publish: bool = True, keep_old: bool = True) -> str:
        """Sign new tokens with a fresh key and return its kid.

        Args:
            publish: put the new key in the JWKS (off: tokens fail verification).
            keep_old: keep the previous keys in the JWKS so their tokens still verify.
        """
        return self._state.keys.rotate(publish=publish, keep_old=keep_old)

    @property
    def signing_kid(self) -> str:
        """The kid of the key that signs new tokens."""
        return self._state.keys.signing_kid

    def jwks(self) -> dict[str, Any]:
        """The published public keys, as served at ``/.well-known/jwks.json``."""
        return self._state.keys.jwks()

    def issue_user_token(
        self,
        sub: str,
        audience: str,
        expires_in: float = 3600,
        *,
        issuer: str | None = None,
        unpublished_key: bool = False,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """A user's access token for ``audience``, as this IdP's login flow would issue it.

        Signed by the current signing key (or, with ``unpublished_key``, by a
        key the JWKS never shows), dated by :attr:`clock`; ``expires_in`` may
        be negative for an expired token. ``issuer`` overrides ``iss`` (a
        foreign token); ``claims`` adds or overrides claims. The token is not
        counted in :attr:`issued`; it is kept in :attr:`user_tokens` for leak scans.
        """
        now = self._clock.time()
        body: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "sub": sub,
            "aud": audience,
            "azp": "dev-login",
            "scope": "openid profile",
            "iat": int(now),
            "exp": int(now + expires_in),
            "jti": uuid.uuid4().hex,
            **(claims or {}),
        }
        token = self._state.keys.sign(body, unpublished=unpublished_key)
        self._state.user_tokens.append(token)
        return token

    @property
    def user_tokens(self) -> list[str]:
        """Every user token :meth:`issue_user_token` made, for leak scans."""
        return self._state.user_tokens

    def verify_token(self, token: str, audience: str) -> dict[str, Any]:
        """Verify ``token`` against the current JWKS, issuer, ``audience`` and clock.

        Returns the claims; raises a ``jwt.InvalidTokenError`` subclass.
        """
        return self._state.keys.verify(
            token, audience=audience, issuer=self.issuer, now=self._clock.time()
        )

    # -- counters and records -------------------------------------------------------

    @property
    def token_requests(self) -> int:
        """Requests to the token endpoint, answered or not."""
        return self._state.token_requests

    @property
    def issued(self) -> int:
        """Access tokens issued."""
        return self._state.issued

    @property
    def jwks_requests(self) -> int:
        """Requests for the JWKS."""
        return self._state.jwks_requests

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every token request since the last :meth:`reset_counters`, oldest first."""
        return self._state.requests

    @property
    def issued_tokens(self) -> list[str]:
        """Every access token issued, for leak scans; :meth:`reset_counters` keeps it."""
        return self._state.issued_tokens

    def reset_counters(self) -> None:
        """Zero the counters and forget the recorded requests."""
        self._state.reset_counters()

    def release_hang(self) -> None:
        """Shorthand for ``faults.release_hang()``."""
        self.faults.release_hang()

    # -- serving --------------------------------------------------------------------

    @property
    def app(self) -> web.Application:
        """The web application (created on first use)."""
        if self._app is None:
            self._app = self.make_app()
        return self._app

    def make_app(self) -> web.Application:
        """A new web application serving this IdP."""
        app = build_app(self._token_endpoint, self._well_known, self.faults)
        app[DEV_IDP] = self
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: an ephemeral port) and return the base URL."""
        if self._server.running:
            raise RuntimeError("DevIdP is already started")
        url = await self._server.start(self.make_app(), host, port)
        self.set_base_url(url)
        return url

    async def stop(self) -> None:
        """Stop serving (hung requests are released first); idempotent."""
        if self._server.running:
            self.faults.release_hang()
        await self._server.stop()

    def __repr__(self) -> str:
        state = self._state
        return (
            f"DevIdP(issuer={state.known_issuer!r}, clients={len(state.clients)}, "
            f"token_requests={state.token_requests}, issued={state.issued})"
        )


#: The :class:`DevIdP` an application serves, for apps that embed it.
DEV_IDP = web.AppKey("dev_idp", DevIdP)
