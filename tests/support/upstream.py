"""The proxy tests' world: a protected test API behind the proxy, and TLS material for it.

:class:`TestAPI` is a real aiohttp resource server on loopback. It validates
the dev IdP's JWTs (signature, ``aud``, ``iss``, ``exp``), records every
request it received (method, raw target, headers, body size) and serves the
routes the proxy tests need: an echo, a streamed upload and download, an SSE
stream paced by the test, a redirect, slow headers and a reset mid-body.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from multidict import CIMultiDictProxy

from sidecar.devidp import DevIdP
from sidecar.listeners import LimitedRunner, ListenerLimits
from sidecar.responses import edge_error_response


@dataclass
class Received:
    """One request as the test API saw it."""

    method: str
    target: str  # the raw path and query, exactly as sent
    headers: CIMultiDictProxy[str]
    body_size: int = 0
    body_sha256: str = ""

    @property
    def token(self) -> str:
        """The bearer token sent, in Authorization or in the X-Api-Token alternative."""
        value = self.headers.get("Authorization") or self.headers.get("X-Api-Token") or ""
        return value.removeprefix("Bearer ")


@dataclass
class SSEGate:
    """Paces the SSE route: each event is written only when the test lets it go."""

    go: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    written: list[float] = field(default_factory=list)


class TestAPI:
    """A resource server for the dev IdP's tokens; 401 unless a current JWT is presented."""

    __test__ = False  # not a pytest test class

    def __init__(self, idp: DevIdP, audience: str) -> None:
        self.idp = idp
        self.audience = audience
        self.received: list[Received] = []
        #: Tokens answered 401 although valid (the API "revoked" them).
        self.rejected: set[str] = set()
        self.always_401 = False
        #: Answer every request with this status (after recording it).
        self.always_status: int | None = None
        #: Requests to /park wait here after recording, until the test sets it.
        self.release = asyncio.Event()
        self.parked = asyncio.Event()
        self.sse = SSEGate()
        self.hold_headers = asyncio.Event()
        self.redirect_to = "http://127.0.0.1:9/elsewhere"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/park/{tail:.*}", self._park)
        app.router.add_post("/upload", self._upload)
        app.router.add_get("/download", self._download)
        app.router.add_get("/events", self._events)
        app.router.add_get("/redirect", self._redirect)
        app.router.add_get("/slow", self._slow)
        app.router.add_get("/reset", self._reset)
        app.router.add_get("/answer-headers", self._answer_headers)
        app.router.add_get("/switch", self._switch)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        return app

    # -- the checks every route makes --------------------------------------------

    def _authorized(self, token: str) -> bool:
        if self.always_401 or token in self.rejected:
            return False
        try:
            self.idp.verify_token(token, self.audience)
        except jwt.PyJWTError:
            return False
        return True

    async def _record(self, request: web.Request, *, read: bool = True) -> Received | web.Response:
        seen = Received(request.method, request.raw_path, request.headers)
        self.received.append(seen)
        if read:
            digest = hashlib.sha256()
            async for chunk in request.content.iter_any():
                seen.body_size += len(chunk)
                digest.update(chunk)
            seen.body_sha256 = digest.hexdigest()
        if self.always_status is not None:
            return web.Response(status=self.always_status)
        if not self._authorized(seen.token):
            return web.Response(
                status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
            )
        return seen

    # -- routes -------------------------------------------------------------------

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request, read=False)
        if isinstance(seen, web.Response):
            return seen
        body = await request.read()
        seen.body_size = len(body)
        return web.json_response(
            {
                "method": request.method,
                "target": request.raw_path,
                "content_type": request.headers.get("Content-Type"),
                "body": body.decode(errors="replace"),
            }
        )

    async def _park(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        self.parked.set()
        await self.release.wait()
        if isinstance(seen, web.Response):
            return seen
        if not self._authorized(seen.token):  # judged again: the token may be revoked by now
            return web.Response(status=401)
        return web.json_response({"ok": True})

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        if isinstance(seen, web.Response):
            return seen
        return web.json_response({"size": seen.body_size, "sha256": seen.body_sha256})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        if isinstance(seen, web.Response):
            return seen
        size, chunk = int(request.query["size"]), b"0123456789abcdef" * 4096
        answer = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        answer.content_length = size
        await answer.prepare(request)
        sent = 0
        while sent < size:
            part = chunk[: size - sent]
            await answer.write(part)
            sent += len(part)
        await answer.write_eof()
        return answer

    async def _events(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        if isinstance(seen, web.Response):
            return seen
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionResetError):  # the proxy went away first
            while (event := await self.sse.go.get()) != "end":
                self.sse.written.append(loop.time())
                await answer.write(f"data: {event}\n\n".encode())
            await answer.write_eof()
        return answer

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        if isinstance(seen, web.Response):
            return seen
        return web.Response(status=302, headers={"Location": self.redirect_to})

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        await self.hold_headers.wait()
        return web.Response(text="late")

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        if isinstance(seen, web.Response):
            return seen
        answer = web.StreamResponse()
        answer.content_length = 1000
        await answer.prepare(request)
        await answer.write(b"x" * 100)
        assert request.transport is not None
        request.transport.abort()
        return answer

    async def _switch(self, request: web.Request) -> web.StreamResponse:
        """Switch protocols although nobody asked, then say nothing more."""
        await self._record(request)
        answer = web.StreamResponse(
            status=101, headers={"Upgrade": "websocket", "Connection": "Upgrade"}
        )
        await answer.prepare(request)
        await self.release.wait()
        return answer

    async def _answer_headers(self, request: web.Request) -> web.StreamResponse:
        seen = await self._record(request)
        if isinstance(seen, web.Response):
            return seen
        return web.Response(
            text="ok",
            headers={
                "Token-Sidecar-Error": "forged",
                "Token-Sidecar-Retried": "1",
                "X-Kept": "yes",
                "Connection": "X-Dropped",
                "X-Dropped": "no",
                "Set-Cookie": "a=1",
            },
        )


# -- serving --------------------------------------------------------------------


async def serve(
    app: web.Application,
    runners: list[web.AppRunner],
    *,
    tls: ssl.SSLContext | None = None,
    **runner_args: Any,
) -> int:
    """Serve ``app`` on an ephemeral loopback port; the runner joins ``runners``."""
    runner = web.AppRunner(app, **runner_args)
    await runner.setup()
    runners.append(runner)
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    return int(runner.addresses[0][1])


async def serve_token_app(app: web.Application, runners: list[web.AppRunner]) -> int:
    """Serve the token app as the daemon does (guarded listener, bodies as sent); its port."""
    runner = LimitedRunner(
        app,
        name="token",
        limits=ListenerLimits(),
        error_answer=edge_error_response,
        auto_decompress=False,
    )
    await runner.setup()
    runners.append(runner)
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return int(runner.addresses[0][1])


@contextlib.asynccontextmanager
async def runners() -> AsyncIterator[list[web.AppRunner]]:
    """A list of runners, all cleaned up on exit."""
    made: list[web.AppRunner] = []
    try:
        yield made
    finally:
        for runner in reversed(made):
            await runner.cleanup()


class StaticResolver(AbstractResolver):
    """A resolver that answers from a fixed table: a test's DNS (rebinding included)."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(
        self,
        host: str,
        port: int = 0,
        family: socket.AddressFamily = socket.AF_INET,  # noqa: ARG002 - IPv4 answers only
    ) -> list[ResolveResult]:
        address = self.table.get(host)
        if address is None:
            raise OSError(f"{host} is not in the test's table")
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


# -- TLS material -----------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """A test CA, a server certificate for 127.0.0.1 signed by it, and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, require_client: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if require_client:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self.ca)
        return context


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    ip: str | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = issuer if issuer is not None else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


def make_tls_files(directory: Path) -> TLSFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, in ``directory``."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("token-sidecar test CA", ca_key, None, ca=True)
    issuer = (ca_cert.subject, ca_key)
    files = TLSFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for cert_path, key_path, subject, ip in (
        (files.server_cert, files.server_key, "127.0.0.1", "127.0.0.1"),
        (files.client_cert, files.client_key, "sidecar", None),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(subject, key, issuer, ip=ip)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_key_pem(key))
    return files
