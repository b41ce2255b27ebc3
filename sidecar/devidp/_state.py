"""What one dev IdP knows: its address and issuer, settings, clients, keys, knobs and counters.

:class:`IdPState` is plain data with a few rules about the issuer; the
endpoints read and update it, and :class:`~sidecar.devidp.DevIdP` exposes it.
"""

from __future__ import annotations

from aiohttp import web

from sidecar.devidp._faults import Faults
from sidecar.devidp._keys import KeyRing
from sidecar.devidp._oauth import request_base
from sidecar.devidp._records import DevClient, RecordedRequest


class IdPState:
    """The state one dev IdP's endpoints share.

    Invariants: the counters only grow until :meth:`reset_counters`;
    ``issued_tokens`` and ``user_tokens`` are never cleared (leak scans read them); the issuer, once
    known, changes only through :meth:`set_base_url` when none was given.
    """

    def __init__(self, *, issuer: str | None, token_lifetime: int, audience: str) -> None:
        self.explicit_issuer = issuer
        self.base_url: str | None = None
        self.token_lifetime = token_lifetime
        self.audience = audience
        #: Used when a request names no audience (Auth0 tenant setting); off by default.
        self.default_audience: str | None = None
        self.faults = Faults()
        self.clients: dict[str, DevClient] = {}
        self.keys = KeyRing()
        self.token_requests = 0
        self.issued = 0
        self.jwks_requests = 0
        self.requests: list[RecordedRequest] = []
        self.issued_tokens: list[str] = []
        #: Users' tokens minted for tests (never cleared: leak scans read them).
        self.user_tokens: list[str] = []

    @property
    def known_issuer(self) -> str | None:
        """The ``iss`` of issued tokens, or ``None`` while neither given nor learned."""
        if self.explicit_issuer is not None:
            return self.explicit_issuer
        return None if self.base_url is None else self.base_url + "/"

    @property
    def issuer(self) -> str:
        """The ``iss`` of issued tokens; raises ``RuntimeError`` while unknown."""
        issuer = self.known_issuer
        if issuer is None:
            raise RuntimeError("issuer unknown: pass issuer=, call set_base_url() or start()")
        return issuer

    @property
    def token_url(self) -> str:
        """The token endpoint URL; raises ``RuntimeError`` before the base URL is known."""
        if self.base_url is None:
            raise RuntimeError("base URL unknown: call set_base_url() or start()")
        return self.base_url + "/oauth/token"

    def set_base_url(self, url: str) -> None:
        """Record where the server is served (without a trailing slash)."""
        self.base_url = url.rstrip("/")

    def issuer_for(self, request: web.Request) -> str:
        """The issuer, learning the base URL from ``request`` when nobody told us."""
        if self.known_issuer is None:
            # Served by a test harness that never told us its port: learn it here.
            self.set_base_url(request_base(request))
        return self.issuer

    def reset_counters(self) -> None:
        """Zero the counters and forget the recorded requests."""
        self.token_requests = self.issued = self.jwks_requests = 0
        self.requests.clear()
