"""``token-sidecar dev``: the development IdP and a sidecar wired to it, in one process.

Needs no config and no network: the IdP is the embedded Auth0-compatible
:mod:`sidecar.devidp` on an ephemeral loopback port, with a generated client
secret that exists only in this process.
"""

from __future__ import annotations

import functools
import secrets
import sys
from types import MappingProxyType

from sidecar.config import Config, InlineSecret, ProfileConfig, ServerConfig
from sidecar.daemon import Daemon
from sidecar.devidp import DevClient, DevIdP
from sidecar.errors import ListenError

DEMO_PROFILE = "demo"
DEMO_CLIENT_ID = "demo-client"
DEMO_AUDIENCE = "https://api.example.com/"
DEMO_SCOPE = "read:tools"


def demo_config(idp: DevIdP, secret: str, *, port: int, ops_port: int) -> Config:
    """The config `dev` runs: one `demo` profile against the embedded IdP."""
    base = idp.base_url
    profile = ProfileConfig(
        name=DEMO_PROFILE,
        token_url=f"{base}/oauth/token",
        issuer=idp.issuer,
        jwks_url=f"{base}/.well-known/jwks.json",
        client_id=InlineSecret(DEMO_CLIENT_ID),
        client_secret=InlineSecret(secret),
        audience=DEMO_AUDIENCE,
        scope=DEMO_SCOPE,
        verify="jwks",
    )
    return Config(
        profiles=MappingProxyType({DEMO_PROFILE: profile}),
        server=ServerConfig(listen=f"127.0.0.1:{port}", ops_listen=f"127.0.0.1:{ops_port}"),
        source="dev",
    )


def curl_command(daemon: Daemon) -> str:
    """The exact command that fetches the demo token from this daemon."""
    address = daemon.addresses["token"]
    return f"curl -s -H 'Token-Sidecar: 1' http://{address}/v1/token/{DEMO_PROFILE}"


def token_command(daemon: Daemon) -> str:
    """The ``token-sidecar token`` line that prints the demo token from this daemon."""
    return f"token-sidecar token {DEMO_PROFILE} --url http://{daemon.addresses['token']}"


def _announce(idp: DevIdP, daemon: Daemon) -> None:
    ops = daemon.addresses.get("ops", "")
    sys.stdout.write(
        "token-sidecar dev is running with profile 'demo' against an embedded IdP.\n"
        "Fetch a token:\n\n"
        f"  {curl_command(daemon)}\n\n"
        f"or, for shell scripts:\n\n  {token_command(daemon)}\n\n"
        f"Status: curl -s http://{ops}/status   Metrics: curl -s http://{ops}/metrics\n"
        f"IdP issuer: {idp.issuer}   JWKS: {idp.base_url}/.well-known/jwks.json\n"
        "Stop with Ctrl-C.\n"
    )
    sys.stdout.flush()


async def run_dev(*, port: int, ops_port: int, token_lifetime: int, idp_port: int = 0) -> int:
    """Run the dev IdP and the sidecar until SIGINT/SIGTERM."""
    secret = secrets.token_urlsafe(24)
    idp = DevIdP(audience=DEMO_AUDIENCE, token_lifetime=token_lifetime)
    idp.add_client(
        DevClient(
            client_id=DEMO_CLIENT_ID,
            client_secret=secret,
            audiences={DEMO_AUDIENCE: ("read:tools", "write:tools")},
        )
    )
    try:
        await idp.start(port=idp_port)
    except OSError as exc:
        sys.stderr.write(f"token-sidecar: dev IdP cannot listen: {exc.strerror} (try --idp-port)\n")
        return 1
    try:
        daemon = Daemon(demo_config(idp, secret, port=port, ops_port=ops_port))
        await daemon.run(on_started=functools.partial(_announce, idp))
    except ListenError as exc:
        sys.stderr.write(f"token-sidecar: {exc} (try --port / --ops-port)\n")
        return 1
    finally:
        await idp.stop()
    return 0
