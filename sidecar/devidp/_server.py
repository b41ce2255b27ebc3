"""Serving the dev IdP: the well-known endpoints, the web application, and a loopback runner."""

from __future__ import annotations

from aiohttp import web

from sidecar.devidp._faults import Faults
from sidecar.devidp._grant import TokenEndpoint
from sidecar.devidp._oauth import (
    ASSERTION_ALGORITHMS,
    AUTH_METHODS,
    JWT_BEARER_GRANT,
    TOKEN_EXCHANGE_GRANT,
    request_base,
)
from sidecar.devidp._state import IdPState


class WellKnownEndpoints:
    """``GET /.well-known/jwks.json`` and ``openid-configuration``; faults never apply here."""

    def __init__(self, state: IdPState) -> None:
        self._state = state

    async def jwks(self, _request: web.Request) -> web.Response:
        """The published signing keys; counted in ``jwks_requests``."""
        self._state.jwks_requests += 1
        return web.json_response(self._state.keys.jwks())

    async def discovery(self, request: web.Request) -> web.Response:
        """The OpenID discovery document, with URLs as the request reached us."""
        base = request_base(request)
        return web.json_response(
            {
                "issuer": self._state.issuer_for(request),
                "token_endpoint": base + "/oauth/token",
                "jwks_uri": base + "/.well-known/jwks.json",
                "grant_types_supported": [
                    "client_credentials",
                    TOKEN_EXCHANGE_GRANT,
                    JWT_BEARER_GRANT,
                ],
                "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
                "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            }
        )


def build_app(
    token: TokenEndpoint, well_known: WellKnownEndpoints, faults: Faults
) -> web.Application:
    """A web application routing to the endpoints; shutting it down releases hung requests."""
    app = web.Application()
    app.router.add_post("/oauth/token", token.handle)
    app.router.add_get("/.well-known/jwks.json", well_known.jwks)
    app.router.add_get("/.well-known/openid-configuration", well_known.discovery)

    async def release_hung(_app: web.Application) -> None:
        # A parked handler would hold up server shutdown until its timeout.
        faults.release_hang()

    app.on_shutdown.append(release_hung)
    return app


class LoopbackServer:
    """Serves one application with an ``AppRunner``; started once, stopped idempotently."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None

    @property
    def running(self) -> bool:
        """Whether :meth:`start` succeeded and :meth:`stop` has not run since."""
        return self._runner is not None

    async def start(self, app: web.Application, host: str, port: int) -> str:
        """Serve ``app`` on ``host:port`` (0: an ephemeral port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("already serving")
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        netloc = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"http://{netloc}:{bound_port}"

    async def stop(self) -> None:
        """Stop serving; does nothing when not serving."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
