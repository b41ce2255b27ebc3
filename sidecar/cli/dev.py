"""``token-sidecar dev``: the development IdP and a sidecar wired to it, in one process.

Needs no config and no network: the IdP is the embedded Auth0-compatible
:mod:`sidecar.devidp` on an ephemeral loopback port, with a generated client
secret that exists only in this process. Besides the ``demo`` profile
(client credentials) it runs ``demo-user``, a token exchange profile, and
prints a user's token the dev IdP issued, ready to exchange.
"""

from __future__ import annotations

import dataclasses
import functools
import secrets
import sys
from types import MappingProxyType

from sidecar.config import Config, InlineSecret, ProfileConfig, ServerConfig, SubjectConfig
from sidecar.daemon import Daemon
from sidecar.devidp import TOKEN_EXCHANGE_GRANT, DevClient, DevIdP
from sidecar.errors import ListenError

DEMO_PROFILE = "demo"
#: The token exchange profile of ``dev``: users' tokens for the demo MCP server in, API tokens out.
DEMO_EXCHANGE_PROFILE = "demo-user"
DEMO_CLIENT_ID = "demo-client"
DEMO_AUDIENCE = "https://api.example.com/"
#: The demo MCP server's own identifier: the audience of the users' tokens ``dev`` prints.
DEMO_MCP_AUDIENCE = "https://mcp.example.com/"
DEMO_USER = "alice"
DEMO_SCOPE = "read:tools"


def demo_config(idp: DevIdP, secret: str, *, port: int, ops_port: int) -> Config:
    """The config `dev` runs: `demo` and the exchange profile `demo-user`, on the embedded IdP."""
    base = idp.base_url
    jwks_url = f"{base}/.well-known/jwks.json"
    profile = ProfileConfig(
        name=DEMO_PROFILE,
        token_url=f"{base}/oauth/token",
        issuer=idp.issuer,
        jwks_url=jwks_url,
        client_id=InlineSecret(DEMO_CLIENT_ID),
        client_secret=InlineSecret(secret),
        audience=DEMO_AUDIENCE,
        scope=DEMO_SCOPE,
        verify="jwks",
    )
    exchange = dataclasses.replace(
        profile,
        name=DEMO_EXCHANGE_PROFILE,
        grant="token_exchange",
        required=False,
        subject=SubjectConfig(issuer=idp.issuer, jwks_url=jwks_url, audience=DEMO_MCP_AUDIENCE),
    )
    return Config(
        profiles=MappingProxyType({DEMO_PROFILE: profile, DEMO_EXCHANGE_PROFILE: exchange}),
        server=ServerConfig(listen=f"127.0.0.1:{port}", ops_listen=f"127.0.0.1:{ops_port}"),
        source="dev",
    )


def curl_command(daemon: Daemon) -> str:
    """The exact command that fetches the demo token from this daemon."""
    address = daemon.addresses["token"]
    return f"curl -s -H 'Token-Sidecar: 1' http://{address}/v1/token/{DEMO_PROFILE}"


def exchange_command(daemon: Daemon, user_token: str) -> str:
    """The exact command that exchanges ``user_token`` for a per-user token of ``demo-user``."""
    address = daemon.addresses["token"]
    body = f'{{"subject_token": "{user_token}"}}'
    return (
        "curl -s -H 'Token-Sidecar: 1' -H 'Content-Type: application/json' "
        f"-d '{body}' http://{address}/v1/exchange/{DEMO_EXCHANGE_PROFILE}"
    )


def token_command(daemon: Daemon) -> str:
    """The ``token-sidecar token`` line that prints the demo token from this daemon."""
    return f"token-sidecar token {DEMO_PROFILE} --url http://{daemon.addresses['token']}"


def _announce(idp: DevIdP, user_token: str, daemon: Daemon) -> None:
    ops = daemon.addresses.get("ops", "")
    sys.stdout.write(
        "token-sidecar dev is running with profile 'demo' against an embedded IdP.\n"
        "Fetch a token:\n\n"
        f"  {curl_command(daemon)}\n\n"
        f"or, for shell scripts:\n\n  {token_command(daemon)}\n\n"
        f"Exchange a user's token (user '{DEMO_USER}', for {DEMO_MCP_AUDIENCE}) for a per-user\n"
        f"token of profile '{DEMO_EXCHANGE_PROFILE}':\n\n"
        f"  {exchange_command(daemon, user_token)}\n\n"
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
            grant_types=("client_credentials", TOKEN_EXCHANGE_GRANT),
            subject_audiences=(DEMO_MCP_AUDIENCE,),
        )
    )
    try:
        await idp.start(port=idp_port)
    except OSError as exc:
        sys.stderr.write(f"token-sidecar: dev IdP cannot listen: {exc.strerror} (try --idp-port)\n")
        return 1
    try:
        daemon = Daemon(demo_config(idp, secret, port=port, ops_port=ops_port))
        user_token = idp.issue_user_token(DEMO_USER, DEMO_MCP_AUDIENCE, expires_in=token_lifetime)
        await daemon.run(on_started=functools.partial(_announce, idp, user_token))
    except ListenError as exc:
        sys.stderr.write(f"token-sidecar: {exc} (try --port / --ops-port)\n")
        return 1
    finally:
        await idp.stop()
    return 0
