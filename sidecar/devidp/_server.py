"""The dev IdP as a web application: :class:`DevIdP`, its routes, and serving it on loopback."""

from __future__ import annotations

from aiohttp import web

from sidecar.devidp._grant import _TokenEndpoint
from sidecar.devidp._oauth import _ASSERTION_ALGORITHMS, AUTH_METHODS, _request_base


class DevIdP(_TokenEndpoint):
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

    # -- serving ----------------------------------------------------------------

    @property
    def app(self) -> web.Application:
        """The web application (created on first use)."""
        if self._app is None:
            self._app = self.make_app()
        return self._app

    def make_app(self) -> web.Application:
        """A new web application serving this IdP."""
        app = web.Application()
        app[DEV_IDP] = self
        app.router.add_post("/oauth/token", self._token_endpoint)
        app.router.add_get("/.well-known/jwks.json", self._jwks_endpoint)
        app.router.add_get("/.well-known/openid-configuration", self._discovery_endpoint)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: an ephemeral port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("DevIdP is already started")
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        netloc = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"http://{netloc}:{bound_port}"
        self.set_base_url(url)
        return url

    async def stop(self) -> None:
        """Stop serving (hung requests are released first); idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self.faults.release_hang()
            await runner.cleanup()

    async def _on_shutdown(self, _app: web.Application) -> None:
        # A parked handler would hold up server shutdown until its timeout.
        self.faults.release_hang()

    async def _jwks_endpoint(self, _request: web.Request) -> web.Response:
        self.jwks_requests += 1
        return web.json_response(self.jwks())

    async def _discovery_endpoint(self, request: web.Request) -> web.Response:
        base = _request_base(request)
        return web.json_response(
            {
                "issuer": self._issuer_for(request),
                "token_endpoint": base + "/oauth/token",
                "jwks_uri": base + "/.well-known/jwks.json",
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
                "token_endpoint_auth_signing_alg_values_supported": _ASSERTION_ALGORITHMS,
            }
        )

    def __repr__(self) -> str:
        issuer = self._issuer or (self._base_url and self._base_url + "/")
        return (
            f"DevIdP(issuer={issuer!r}, clients={len(self.clients)}, "
            f"token_requests={self.token_requests}, issued={self.issued})"
        )


#: The :class:`DevIdP` an application serves, for apps that embed it.
DEV_IDP = web.AppKey("dev_idp", DevIdP)
