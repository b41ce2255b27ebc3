"""The dev IdP's state and its administration: clients, keys, issuer, counters, verification.

:class:`_IdPAdmin` is the base of :class:`~sidecar.devidp.DevIdP`: it owns every
attribute, and holds the methods tests call to set the IdP up and inspect it.
"""

from __future__ import annotations

from typing import Any

import jwt
from aiohttp import web

from sidecar.clock import Clock, SystemClock
from sidecar.devidp._faults import Faults
from sidecar.devidp._keys import _shared_key, _SigningKey
from sidecar.devidp._oauth import _request_base
from sidecar.devidp._records import DevClient, RecordedRequest


class _IdPAdmin:
    """The state of one dev IdP and the methods that administer it (see :class:`DevIdP`)."""

    def __init__(
        self,
        *,
        issuer: str | None = None,
        clock: Clock | None = None,
        token_lifetime: int = 86400,
        audience: str = "https://api.example.com/",
    ) -> None:
        self._issuer = issuer
        self._base_url: str | None = None
        self._clock: Clock = clock or SystemClock()
        self.token_lifetime = token_lifetime
        self.audience = audience
        #: Used when a request names no audience (Auth0 tenant setting); off by default.
        self.default_audience: str | None = None
        self.faults = Faults()
        self.clients: dict[str, DevClient] = {}
        self._signing = _SigningKey.create(_shared_key(0))
        self._published: dict[str, _SigningKey] = {self._signing.kid: self._signing}
        self._unpublished: _SigningKey | None = None
        self._seen_jti: dict[tuple[str, str], float] = {}
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self.token_requests = 0
        self.issued = 0
        self.jwks_requests = 0
        self.requests: list[RecordedRequest] = []
        #: Every access token issued, for leak scans; :meth:`reset_counters` keeps it.
        self.issued_tokens: list[str] = []

    # -- administration ---------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The ``iss`` of issued tokens; raises ``RuntimeError`` while unknown."""
        if self._issuer is not None:
            return self._issuer
        if self._base_url is None:
            raise RuntimeError("issuer unknown: pass issuer=, call set_base_url() or start()")
        return self._base_url + "/"

    @property
    def base_url(self) -> str | None:
        """Where the server is reachable (``http://127.0.0.1:PORT``), once known."""
        return self._base_url

    @property
    def token_url(self) -> str:
        """The token endpoint URL; raises ``RuntimeError`` before the base URL is known."""
        if self._base_url is None:
            raise RuntimeError("base URL unknown: call set_base_url() or start()")
        return self._base_url + "/oauth/token"

    def set_base_url(self, url: str) -> None:
        """Record where the server is served; the issuer becomes ``url + "/"`` unless given."""
        self._base_url = url.rstrip("/")

    def add_client(self, client: DevClient) -> None:
        """Register ``client``, replacing any client with the same id."""
        self.clients[client.client_id] = client

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
        self.clients[client_id].client_secret = new_secret

    def rotate_signing_key(self, *, publish: bool = True, keep_old: bool = True) -> str:
        """Sign new tokens with a fresh key and return its kid.

        Args:
            publish: put the new key in the JWKS (off: tokens fail verification).
            keep_old: keep the previous keys in the JWKS so their tokens still verify.
        """
        self._signing = _SigningKey.create()
        if not keep_old:
            self._published.clear()
        if publish:
            self._published[self._signing.kid] = self._signing
        return self._signing.kid

    @property
    def signing_kid(self) -> str:
        """The kid of the key that signs new tokens."""
        return self._signing.kid

    def jwks(self) -> dict[str, Any]:
        """The published public keys, as served at ``/.well-known/jwks.json``."""
        return {"keys": [key.public_jwk() for key in self._published.values()]}

    def release_hang(self) -> None:
        """Shorthand for ``faults.release_hang()``."""
        self.faults.release_hang()

    def reset_counters(self) -> None:
        """Zero the counters and forget the recorded requests."""
        self.token_requests = self.issued = self.jwks_requests = 0
        self.requests.clear()

    def verify_token(self, token: str, audience: str) -> dict[str, Any]:
        """Verify ``token`` against the current JWKS, issuer, ``audience`` and clock.

        Returns the claims; raises a ``jwt.InvalidTokenError`` subclass.
        """
        kid = jwt.get_unverified_header(token).get("kid")
        key = self._published.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise jwt.InvalidTokenError(f"kid {kid!r} is not in the JWKS")
        claims: dict[str, Any] = jwt.decode(
            token,
            key.private_key.public_key(),
            algorithms=["RS256"],
            audience=audience,
            issuer=self.issuer,
            # pyjwt would compare exp with the machine's clock; ours may be a FakeClock.
            options={
                "require": ["exp", "iat", "iss", "aud", "sub"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
        if claims["exp"] <= self._clock.time():
            raise jwt.ExpiredSignatureError("Signature has expired")
        return claims

    def _issuer_for(self, request: web.Request) -> str:
        if self._issuer is None and self._base_url is None:
            # Served by a test harness that never told us its port: learn it here.
            self.set_base_url(_request_base(request))
        return self.issuer
