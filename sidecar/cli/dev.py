"""``token-sidecar dev``: the development IdP and a sidecar wired to it, or the IdP alone.

Needs no config and no network. Plain ``dev`` runs the embedded
Auth0-compatible :mod:`sidecar.devidp` on an ephemeral loopback port, with a
generated client secret that exists only in this process, and a sidecar wired
to it: besides the ``demo`` profile (client credentials) it runs
``demo-user``, a token exchange profile, and prints a user's token the dev
IdP issued, ready to exchange. ``dev --idp-only`` runs the IdP alone on a
fixed port with a fixed client id and a secret in a file, and writes (and
prints) a config that points ``serve`` at it, so ``serve``, ``check --probe``,
SIGHUP and secret rotation can be tried without an IdP tenant.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from sidecar.config import Config, InlineSecret, ProfileConfig, ServerConfig, SubjectConfig
from sidecar.config.schema import schema_text
from sidecar.daemon import Daemon
from sidecar.devidp import TOKEN_EXCHANGE_GRANT, DevClient, DevIdP
from sidecar.errors import ListenError
from sidecar.files import SECRET_LIMIT, read_small_text

DEMO_PROFILE = "demo"
#: The token exchange profile of ``dev``: users' tokens for the demo MCP server in, API tokens out.
DEMO_EXCHANGE_PROFILE = "demo-user"
DEMO_CLIENT_ID = "demo-client"
DEMO_AUDIENCE = "https://api.example.com/"
#: The demo MCP server's own identifier: the audience of the users' tokens ``dev`` prints.
DEMO_MCP_AUDIENCE = "https://mcp.example.com/"
DEMO_USER = "alice"
DEMO_SCOPE = "read:tools"
DEMO_GRANTED_SCOPES = ("read:tools", "write:tools")


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
            audiences={DEMO_AUDIENCE: DEMO_GRANTED_SCOPES},
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


# --------------------------------------------------------------------------- dev --idp-only


@dataclass(frozen=True)
class IdPOnlyFiles:
    """The files ``dev --idp-only`` keeps in its directory: what a ``serve`` config needs."""

    directory: Path

    @property
    def secret(self) -> Path:
        """The client secret: the IdP accepts what this file holds at each request."""
        return self.directory / "client_secret"

    @property
    def config(self) -> Path:
        """A config that points ``serve`` at the IdP."""
        return self.directory / "config.toml"

    @property
    def schema(self) -> Path:
        """The config's JSON Schema, named by its ``#:schema`` line for editors."""
        return self.directory / "config.schema.json"

    def ensure_secret(self) -> None:
        """Keep the secret the file holds (a restart changes nothing), else write a new one.

        Raises:
            OSError: the file cannot be read or written, or is a symbolic link.
        """
        try:
            if read_small_text(self.secret, SECRET_LIMIT, follow_symlinks=False).strip():
                _make_private(self.secret)
                return
        except FileNotFoundError:
            pass
        except UnicodeDecodeError:
            pass  # not a secret we wrote: replace it
        write_private(self.secret, secrets.token_urlsafe(32) + "\n", mode=0o600)


def _make_private(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def write_private(path: Path, text: str, *, mode: int) -> None:
    """Write ``text`` to ``path`` with ``mode`` whatever the umask; never through a symlink.

    Raises:
        OSError: it cannot be written; ``ELOOP`` when ``path`` is a symbolic link.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), mode)
        out.write(text)


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return f"{exc.filename} is a symbolic link; remove it or choose another --dir"
    return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc.strerror or exc)


def _toml_string(value: str) -> str:
    # A JSON string without ASCII escaping is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=False)


def idp_only_config(idp: DevIdP, files: IdPOnlyFiles, *, port: int, ops_port: int) -> str:
    """The TOML config that points ``serve`` at ``idp`` with the client of ``files``."""
    base = idp.base_url
    return (
        "#:schema ./config.schema.json\n"
        "# Written by `token-sidecar dev --idp-only`: a profile against its development IdP.\n"
        "[server]\n"
        f'listen = "127.0.0.1:{port}"\n'
        f'ops_listen = "127.0.0.1:{ops_port}"\n'
        "\n"
        f"[profiles.{DEMO_PROFILE}]\n"
        f'token_url = "{base}/oauth/token"\n'
        f'issuer = "{idp.issuer}"\n'
        f'jwks_url = "{base}/.well-known/jwks.json"\n'
        f'client_id = "{DEMO_CLIENT_ID}"\n'
        f"client_secret_file = {_toml_string(str(files.secret))}\n"
        f'audience = "{DEMO_AUDIENCE}"\n'
        f'scope = "{DEMO_SCOPE}"\n'
    )


def _announce_idp_only(idp: DevIdP, files: IdPOnlyFiles, config: str, port: int) -> None:
    path = files.config
    sys.stdout.write(
        f"token-sidecar dev --idp-only: a development IdP at {idp.issuer}\n"
        f"Client id: {DEMO_CLIENT_ID}   Client secret: in {files.secret}\n"
        f"Audience: {DEMO_AUDIENCE}   Scopes granted: {' '.join(DEMO_GRANTED_SCOPES)}\n"
        f"\nA config for serve, written to {path}:\n\n{config}\n"
        "Try it:\n\n"
        f"  token-sidecar check --config {path} --probe\n"
        f"  token-sidecar serve --config {path}\n"
        f"  token-sidecar token {DEMO_PROFILE} --url http://127.0.0.1:{port}\n\n"
        "Edit the config and send serve a SIGHUP to reload it. Rotate the secret by writing\n"
        f"a new one to {files.secret}: the IdP accepts only what the file holds, and serve\n"
        "re-reads it within 10 s.\n"
        "Stop with Ctrl-C.\n"
    )
    sys.stdout.flush()


async def run_idp_only(
    *, idp_port: int, port: int, ops_port: int, token_lifetime: int, directory: Path | None
) -> int:
    """Run the development IdP alone until SIGINT/SIGTERM; write its client's files first."""
    created = directory is None
    folder = Path(tempfile.mkdtemp(prefix="token-sidecar-dev-")) if directory is None else directory
    try:
        folder.mkdir(parents=True, exist_ok=True)
        files = IdPOnlyFiles(folder.resolve())
        files.ensure_secret()
    except OSError as exc:
        sys.stderr.write(f"token-sidecar: cannot write to {folder}: {_why(exc)}\n")
        return 2
    idp = DevIdP(audience=DEMO_AUDIENCE, token_lifetime=token_lifetime)
    idp.add_client(
        DevClient(
            client_id=DEMO_CLIENT_ID,
            audiences={DEMO_AUDIENCE: DEMO_GRANTED_SCOPES},
            secret_file=files.secret,
        )
    )
    try:
        await idp.start(port=idp_port)
    except OSError as exc:
        sys.stderr.write(f"token-sidecar: dev IdP cannot listen: {exc.strerror} (try --idp-port)\n")
        return 1
    try:
        config = idp_only_config(idp, files, port=port, ops_port=ops_port)
        try:
            write_private(files.config, config, mode=0o644)
            write_private(files.schema, schema_text(), mode=0o644)
        except OSError as exc:
            sys.stderr.write(f"token-sidecar: cannot write to {folder}: {_why(exc)}\n")
            return 2
        _announce_idp_only(idp, files, config, port)
        await _until_stopped()
    finally:
        await idp.stop()
        if created:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


async def _until_stopped() -> None:
    """Return at SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
