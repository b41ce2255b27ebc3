"""npm's oidc-provider on loopback for the interop tests, and its token-exchange grant.

oidc-provider (a certified OpenID Connect implementation nobody on this project
wrote) runs as a Node subprocess from ``interop/oidc/server.js``, installed by
``scripts/install-tools`` from the committed lock file. :class:`OIDCProvider`
starts one from a JSON config; :func:`start_exchange_idp` starts one with the
RFC 8693 grant registered and one client per authentication method, and hands
back an :class:`ExchangeIdP`: what a test (or a sidecar profile) needs to
exchange users' tokens against it.

Without Node or the installed provider :func:`require_node` skips locally with
the reason; under ``CI=true`` it fails instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
OIDC_DIR = ROOT / "interop" / "oidc"
READY_TIMEOUT = 15.0
MIN_NODE = (20, 19)

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")


def node_problem() -> str | None:
    """Why the interop tests cannot run here, or None when they can."""
    node = shutil.which("node")
    if node is None:
        return "node is not installed (scripts/install-tools installs Debian's nodejs)"
    version = subprocess.run(  # noqa: S603 - a fixed argv, no shell
        [node, "--version"], capture_output=True, text=True, check=False, timeout=10
    ).stdout.strip()
    try:
        major, minor = (int(part) for part in version.lstrip("v").split(".")[:2])
    except ValueError:
        return f"cannot read the node version from {version!r}"
    if (major, minor) < MIN_NODE:
        return f"node {version} is too old for oidc-provider 9 (needs >= 20.19)"
    if not (OIDC_DIR / "node_modules" / "oidc-provider" / "package.json").is_file():
        return "oidc-provider is not installed: run scripts/install-tools (npm ci in interop/oidc)"
    return None


def require_node() -> None:
    """Skip the calling test without Node and oidc-provider; fail instead under ``CI=true``."""
    problem = node_problem()
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"interop tests must run in CI: {problem}")
    pytest.skip(problem)


def rsa_client_key(directory: Path, kid: str) -> tuple[Path, dict[str, Any]]:
    """A fresh RSA key for private_key_jwt: its PEM file (0600) and its public JWK."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = directory / f"{kid}.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem.chmod(0o600)
    public = orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update(kid=kid, alg="RS256", use="sig")
    return pem, public


class OIDCProvider:
    """``node interop/oidc/server.js`` on 127.0.0.1, with its discovery document."""

    def __init__(self, config_path: Path, port: int) -> None:
        self.config_path = config_path
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = bytearray()
        self.discovery: dict[str, Any] = {}
        self.ready: dict[str, Any] = {}
        self._stderr_task: asyncio.Task[None] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return str(self.discovery["issuer"])

    @property
    def token_url(self) -> str:
        return str(self.discovery["token_endpoint"])

    @property
    def jwks_url(self) -> str:
        return str(self.discovery["jwks_uri"])

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            "server.js",
            str(self.config_path),
            cwd=OIDC_DIR,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_ENV": "test"},
        )
        self._stderr_task = asyncio.create_task(self._drain_stderr())
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), READY_TIMEOUT)
        assert line, f"oidc-provider exited: {self.stderr.decode(errors='replace')[-2000:]}"
        self.ready = orjson.loads(line)
        assert self.ready["event"] == "ready"
        async with http.get(f"{self.base}/.well-known/openid-configuration") as resp:
            assert resp.status == 200
            self.discovery = await resp.json()

    async def _drain_stderr(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.extend(line)

    async def rotate(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """Make the next signing key active and retire the old one (gone from the JWKS)."""
        async with http.post(f"{self.base}/__admin/rotate") as resp:
            assert resp.status == 200
            result: dict[str, Any] = await resp.json()
            return result

    async def jwks(self, http: aiohttp.ClientSession) -> jwt.PyJWKSet:
        async with http.get(self.jwks_url) as resp:
            return jwt.PyJWKSet.from_dict(await resp.json())

    async def user_token(self, http: aiohttp.ClientSession, **request: Any) -> dict[str, Any]:
        """``POST /__admin/user-token``: a user's at+jwt signed with the active key."""
        async with http.post(f"{self.base}/__admin/user-token", json=request) as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == 200, body
            return body

    async def grant_counts(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """Token requests since start: ``{grant_type: {"success": n, "errors": {error: n}}}``."""
        async with http.get(f"{self.base}/__admin/grants") as resp:
            assert resp.status == 200
            counts: dict[str, Any] = await resp.json()
            return counts

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._stderr_task is not None:
            await self._stderr_task


# -- token exchange -------------------------------------------------------------

#: The API the exchanged tokens are for (RFC 8693 ``audience``, or RFC 8707 ``resource``).
UPSTREAM = "https://upstream.example.com/"
UPSTREAM_SCOPE = "read:things write:things"
#: Exchanged tokens live a day: longer than any subject token, as Auth0's can.
UPSTREAM_TTL = 86400
#: The MCP server's own identifier: the ``aud`` of the users' tokens it receives.
MCP_AUDIENCE = "https://mcp.example.com/"
#: The client a user signed in to (``client_id`` of the minted user tokens).
USER_APP = "mcp-client"

_EXCHANGE_SECRETS = {
    "client_secret_basic": "xbasic-secret-LEAKCANARY-7d3e91c0a5b8f26e",
    "client_secret_post": "xpost-secret-LEAKCANARY-2c8a4f6e0b1d9e73",
}
_EXCHANGE_CLIENT_IDS = {
    "client_secret_basic": "exchange-basic",
    "client_secret_post": "exchange-post",
    "private_key_jwt": "exchange-pkjwt",
}


@dataclass(frozen=True)
class ExchangeClient:
    """One registered client of the exchange IdP and how it authenticates."""

    auth_method: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    private_key_file: Path | None = None
    private_key_kid: str | None = None

    def sidecar_fields(self) -> dict[str, str]:
        """This client's keys of a sidecar ``[profiles.NAME]`` table, as TOML values."""
        fields = {"client_id": f'"{self.client_id}"', "client_auth": f'"{self.auth_method}"'}
        if self.auth_method == "private_key_jwt":
            fields["private_key_file"] = f'"{self.private_key_file}"'
            fields["private_key_kid"] = f'"{self.private_key_kid}"'
            fields["assertion_alg"] = '"RS256"'
        else:
            fields["client_secret"] = f'"{self.client_secret}"'
        return fields

    def authenticate(
        self, form: Mapping[str, str], token_url: str
    ) -> tuple[dict[str, str], dict[str, str]]:
        """``form`` with this client's authentication added, and the request's headers."""
        body = dict(form)
        headers: dict[str, str] = {}
        if self.auth_method == "client_secret_basic":
            pair = f"{self.client_id}:{self.client_secret}".encode()
            headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
        elif self.auth_method == "client_secret_post":
            body.update(client_id=self.client_id, client_secret=str(self.client_secret))
        else:
            assert self.private_key_file is not None
            now = int(time.time())
            assertion = jwt.encode(
                {
                    "iss": self.client_id,
                    "sub": self.client_id,
                    "aud": token_url,
                    "jti": str(uuid.uuid4()),
                    "iat": now,
                    "exp": now + 60,
                },
                self.private_key_file.read_bytes(),
                algorithm="RS256",
                headers={"kid": str(self.private_key_kid)},
            )
            body.update(
                client_id=self.client_id,
                client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                client_assertion=assertion,
            )
        return body, headers


def exchange_profile_toml(
    name: str,
    *,
    client: ExchangeClient,
    token_url: str,
    issuer: str,
    jwks_url: str,
    audience: str = UPSTREAM,
    scope: str = "read:things",
    subject_audience: str = MCP_AUDIENCE,
    subject_verify: str = "jwks",
) -> str:
    """A ``grant = "token_exchange"`` profile for the sidecar, as DESIGN.md spells it.

    The subject check uses the same IdP's issuer and JWKS: the users' tokens
    come from the same provider as the exchanged ones. ``subject_verify =
    "none"`` leaves the judgement to the IdP (only a JWT's ``exp`` is read).
    """
    keys = {
        "grant": '"token_exchange"',
        "token_url": f'"{token_url}"',
        "issuer": f'"{issuer}"',
        "jwks_url": f'"{jwks_url}"',
        **client.sidecar_fields(),
        "audience": f'"{audience}"',
        "scope": f'"{scope}"',
        "subject_token_type": f'"{ACCESS_TOKEN_TYPE}"',
        "timeout": '"3s"',
    }
    subject = {"verify": f'"{subject_verify}"'}
    if subject_verify == "jwks":  # the other keys are config errors when nothing checks them
        subject.update(
            issuer=f'"{issuer}"', jwks_url=f'"{jwks_url}"', audience=f'"{subject_audience}"'
        )
    lines = [f"[profiles.{name}]", *(f"{k} = {v}" for k, v in keys.items()), ""]
    lines += [f"[profiles.{name}.subject]", *(f"{k} = {v}" for k, v in subject.items())]
    return "\n".join(lines) + "\n"


@dataclass
class ExchangeIdP:
    """oidc-provider with the token-exchange grant, its clients and a user-token mint.

    ``clients`` holds one client per authentication method (keys of
    :data:`AUTH_METHODS`), each allowed ``client_credentials`` and the
    exchange. Every secret, minted user token and issued token is passed to
    ``on_secret`` (the leak registry), so log scans look for them.
    """

    provider: OIDCProvider
    http: aiohttp.ClientSession
    clients: Mapping[str, ExchangeClient]
    on_secret: Callable[[str], None]
    audience: str = UPSTREAM
    scope: str = UPSTREAM_SCOPE
    subject_audience: str = MCP_AUDIENCE

    @property
    def token_url(self) -> str:
        return self.provider.token_url

    @property
    def issuer(self) -> str:
        return self.provider.issuer

    @property
    def jwks_url(self) -> str:
        return self.provider.jwks_url

    async def user_token(
        self,
        sub: str,
        *,
        audience: str | None = None,
        ttl: int = 300,
        scope: str | None = None,
        act: Mapping[str, Any] | None = None,
    ) -> str:
        """The access token user ``sub`` holds for the MCP server (``aud`` = ``subject_audience``).

        A negative ``ttl`` mints a token that has already expired.
        """
        request: dict[str, Any] = {
            "sub": sub,
            "audience": audience or self.subject_audience,
            "ttl": ttl,
            "client_id": USER_APP,
        }
        if scope is not None:
            request["scope"] = scope
        if act is not None:
            request["act"] = dict(act)
        token = str((await self.provider.user_token(self.http, **request))["access_token"])
        self.on_secret(token)
        return token

    def exchange_form(self, subject_token: str, /, **fields: str | None) -> dict[str, str]:
        """An RFC 8693 form for ``audience``; ``fields`` add or replace keys, None removes one."""
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "audience": self.audience,
        }
        for key, value in fields.items():
            if value is None:
                form.pop(key, None)
            else:
                form[key] = value
        return form

    async def post_token(
        self, auth_method: str, form: Mapping[str, str]
    ) -> tuple[int, dict[str, Any]]:
        """POST ``form`` to the token endpoint as the client of ``auth_method``."""
        data, headers = self.clients[auth_method].authenticate(form, self.token_url)
        async with self.http.post(self.token_url, data=data, headers=headers) as resp:
            body: dict[str, Any] = await resp.json()
            status = resp.status
        if "access_token" in body:
            self.on_secret(str(body["access_token"]))
        return status, body

    def sidecar_profile(self, name: str, auth_method: str, **overrides: str) -> str:
        """A ``grant = "token_exchange"`` sidecar profile against this IdP."""
        return exchange_profile_toml(
            name,
            client=self.clients[auth_method],
            token_url=self.token_url,
            issuer=self.issuer,
            jwks_url=self.jwks_url,
            audience=overrides.get("audience", self.audience),
            scope=overrides.get("scope", "read:things"),
            subject_audience=overrides.get("subject_audience", self.subject_audience),
            subject_verify=overrides.get("subject_verify", "jwks"),
        )


@asynccontextmanager
async def start_exchange_idp(
    http: aiohttp.ClientSession, directory: Path, *, on_secret: Callable[[str], None]
) -> AsyncIterator[ExchangeIdP]:
    """Start oidc-provider with the exchange grant and a client per auth method; stop it after."""
    pem, public_jwk = rsa_client_key(directory, "exchange-client-key-1")
    clients = {
        method: ExchangeClient(
            auth_method=method,
            client_id=_EXCHANGE_CLIENT_IDS[method],
            client_secret=_EXCHANGE_SECRETS.get(method),
            private_key_file=pem if method == "private_key_jwt" else None,
            private_key_kid=public_jwk["kid"] if method == "private_key_jwt" else None,
        )
        for method in AUTH_METHODS
    }
    registrations: list[dict[str, Any]] = []
    for client in clients.values():
        registration: dict[str, Any] = {
            "client_id": client.client_id,
            "token_endpoint_auth_method": client.auth_method,
            "grant_types": ["client_credentials", TOKEN_EXCHANGE_GRANT],
            "scope": UPSTREAM_SCOPE,
        }
        if client.client_secret is not None:
            registration["client_secret"] = client.client_secret
            on_secret(client.client_secret)
        else:
            registration["token_endpoint_auth_signing_alg"] = "RS256"
            registration["jwks"] = {"keys": [public_jwk]}
        registrations.append(registration)
    port = free_port()
    config = {
        "port": port,
        "resources": {UPSTREAM: {"scope": UPSTREAM_SCOPE, "ttl": UPSTREAM_TTL}},
        "exchange": {"subject_audiences": [MCP_AUDIENCE]},
        "clients": registrations,
    }
    path = directory / "oidc-exchange.json"
    path.write_bytes(orjson.dumps(config))
    provider = OIDCProvider(path, port)
    try:
        await provider.start(http)
        yield ExchangeIdP(provider=provider, http=http, clients=clients, on_secret=on_secret)
    finally:
        await provider.stop()
