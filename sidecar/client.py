"""Client library for MCP servers: fetch tokens from the sidecar and attach them.

:class:`TokenClient` talks to a running sidecar over loopback TCP or its Unix
socket, keeps each profile's token in-process until ``min_ttl`` before expiry
(so a tool call normally costs no request at all) and makes at most one
request per profile at a time. :class:`SidecarAuth` (httpx, sync and async)
and :func:`sidecar_middleware` (aiohttp) attach ``Authorization: Bearer`` and,
when the API answers 401, report the token through ``invalidate`` and retry
the request once, never more, and never when its body cannot be replayed.

Defaults come from ``TOKEN_SIDECAR_URL``, ``TOKEN_SIDECAR_SOCKET`` and
``TOKEN_SIDECAR_PROFILE``, so the common case needs no code beyond
``TokenClient()``.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncGenerator, Generator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp
import orjson
from aiohttp import hdrs

from sidecar import errors
from sidecar.clock import Clock, SystemClock
from sidecar.token import fingerprint

try:
    import httpx
except ImportError:  # pragma: no cover - httpx is the optional extra token-sidecar[httpx]
    httpx = None  # type: ignore[assignment]

DEFAULT_URL = "http://127.0.0.1:8700"
GUARD_HEADERS: Mapping[str, str] = {"Token-Sidecar": "1"}


class SidecarError(errors.TokenSidecarError):
    """The sidecar could not hand out a token; ``code`` is its error code.

    ``code`` is one of the token API codes (``token_unavailable``,
    ``misconfigured``, ``unknown_profile``, ...) or ``unreachable`` when the
    sidecar itself could not be reached; ``status`` is the HTTP status (0 when
    unreachable); ``retry_after`` is the sidecar's hint in seconds, if any.
    """

    def __init__(
        self, code: str, message: str, *, status: int = 0, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.retryable = code in {"token_unavailable", "unreachable"}


@dataclass(frozen=True, repr=False)
class Token:
    """A token as the sidecar handed it out; the value never shows in a repr."""

    access_token: str
    expires_at: float  # UNIX time
    stale: bool
    profile: str
    scope: str | None = None
    token_type: str = "Bearer"  # noqa: S105 - a token type, not a password

    @property
    def fingerprint(self) -> str:
        """The first 12 hex digits of SHA-256 of the token: how to name it in logs."""
        return fingerprint(self.access_token)

    def __repr__(self) -> str:
        return (
            f"Token(profile={self.profile!r}, fingerprint={self.fingerprint!r}, "
            f"expires_at={self.expires_at:.0f}, stale={self.stale}, access_token=[secure])"
        )

    __str__ = __repr__


def parse_answer(status: int, body: bytes, headers: Mapping[str, str]) -> Token:
    """Turn one token API answer into a :class:`Token` or raise :class:`SidecarError`."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise SidecarError(
            "bad_answer", f"unexpected answer from the sidecar ({status})", status=status
        )
    if status != 200:
        retry = headers.get("Retry-After")
        raise SidecarError(
            str(payload.get("error", "error")),
            str(payload.get("message", "")),
            status=status,
            retry_after=float(retry) if retry and retry.isdigit() else None,
        )
    try:
        return Token(
            access_token=str(payload["access_token"]),
            expires_at=float(payload["expires_at"]),
            stale=bool(payload["stale"]),
            profile=str(payload["profile"]),
            scope=payload.get("scope"),
        )
    except (KeyError, TypeError, ValueError):
        raise SidecarError("bad_answer", "token answer is missing fields", status=status) from None


@dataclass(frozen=True)
class Endpoint:
    """Where the sidecar is: a base URL, or a Unix socket (then the URL host is localhost)."""

    url: str
    socket: str | None

    @classmethod
    def resolve(
        cls, url: str | None, socket: str | None, environ: Mapping[str, str] | None = None
    ) -> Endpoint:
        env = os.environ if environ is None else environ
        if url is None and socket is None:
            url = env.get("TOKEN_SIDECAR_URL") or None
            socket = None if url else (env.get("TOKEN_SIDECAR_SOCKET") or None)
        if socket is not None and url is None:
            return cls("http://localhost", socket)
        return cls((url or DEFAULT_URL).rstrip("/"), None)

    def token_url(self, profile: str) -> str:
        return f"{self.url}/v1/token/{profile}"


class TokenClient:
    """Fetches tokens from the sidecar and reuses them in-process until ``min_ttl``.

    Invariants: at most one request per profile in flight; a cached token is
    handed out only while it has more than ``min_ttl`` seconds left.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        socket: str | None = None,
        profile: str | None = None,
        min_ttl: float = 30,
        timeout: float = 15.0,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.endpoint = Endpoint.resolve(url, socket, env)
        self.profile = profile or env.get("TOKEN_SIDECAR_PROFILE") or None
        self.min_ttl = min_ttl
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock if clock is not None else SystemClock()
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[str, Token] = {}
        self._inflight: dict[str, asyncio.Future[Token]] = {}

    def _profile(self, profile: str | None) -> str:
        name = profile or self.profile
        if not name:
            raise SidecarError("bad_request", "no profile: pass one or set TOKEN_SIDECAR_PROFILE")
        return name

    def _session_for_loop(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = (
                aiohttp.UnixConnector(path=self.endpoint.socket) if self.endpoint.socket else None
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, headers=GUARD_HEADERS
            )
        return self._session

    def usable(self, token: Token | None, min_ttl: float | None = None) -> bool:
        """Whether ``token`` still has more than ``min_ttl`` (default: the client's) left."""
        need = self.min_ttl if min_ttl is None else min_ttl
        return token is not None and token.expires_at - self._clock.time() > need

    def resolve_profile(self, profile: str | None) -> str:
        """The profile to use: the given one, else the client's default."""
        return self._profile(profile)

    def cached(self, profile: str | None = None, *, min_ttl: float | None = None) -> Token | None:
        """The in-process token if it still has more than ``min_ttl`` left, else None."""
        token = self._cache.get(self._profile(profile))
        return token if self.usable(token, min_ttl) else None

    async def get_token(self, profile: str | None = None, *, min_ttl: float | None = None) -> Token:
        """A token with more than ``min_ttl`` seconds left (cached, or fetched once)."""
        name = self._profile(profile)
        token = self.cached(name, min_ttl=min_ttl)
        if token is not None:
            return token
        need = self.min_ttl if min_ttl is None else min_ttl
        pending = self._inflight.get(name)
        if pending is not None:
            # Join the request in flight; it may have asked for less life than we need.
            token = await asyncio.shield(pending)
            if self.usable(token, need):
                return token
        pending = asyncio.ensure_future(self._fetch(name, need))
        self._inflight[name] = pending
        pending.add_done_callback(functools.partial(self._forget_inflight, name))
        return await asyncio.shield(pending)

    def _forget_inflight(self, profile: str, done: asyncio.Future[Token]) -> None:
        if self._inflight.get(profile) is done:
            del self._inflight[profile]

    async def _fetch(self, profile: str, min_ttl: float) -> Token:
        params = {"min_ttl": str(int(min_ttl))} if min_ttl > 0 else None
        return await self._request("GET", self.endpoint.token_url(profile), params=params)

    async def invalidate(self, token: Token, profile: str | None = None) -> Token:
        """Report ``token`` as rejected downstream; returns the sidecar's current token."""
        name = profile or token.profile
        self._cache.pop(name, None)
        return await self._request(
            "POST",
            self.endpoint.token_url(name) + "/invalidate",
            json={"fingerprint": token.fingerprint},
        )

    async def _request(self, method: str, url: str, **kwargs: Any) -> Token:
        session = self._session_for_loop()
        try:
            async with session.request(method, url, **kwargs) as resp:
                body = await resp.read()
                token = parse_answer(resp.status, body, resp.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            where = self.endpoint.socket or self.endpoint.url
            raise SidecarError("unreachable", f"cannot reach the sidecar at {where}") from exc
        self._cache[token.profile] = token
        return token

    async def aclose(self) -> None:
        """Close the connection pool; cached tokens are forgotten."""
        self._cache.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        where = self.endpoint.socket or self.endpoint.url
        return f"TokenClient({where!r}, profile={self.profile!r}, min_ttl={self.min_ttl})"


def bearer(token: Token) -> str:
    return f"Bearer {token.access_token}"


def sidecar_middleware(
    client: TokenClient, profile: str | None = None
) -> aiohttp.ClientMiddlewareType:
    """An aiohttp client middleware: Bearer token, and one retry after a 401."""

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        token = await client.get_token(profile)
        request.headers[hdrs.AUTHORIZATION] = bearer(token)
        response = await handler(request)
        if response.status != 401 or not _aiohttp_replayable(request):
            return response
        response.release()
        token = await client.invalidate(token, profile)
        request.headers[hdrs.AUTHORIZATION] = bearer(token)
        return await handler(request)

    return middleware


def _aiohttp_replayable(request: aiohttp.ClientRequest) -> bool:
    body = request.body
    return not getattr(body, "consumed", False)


if httpx is not None:

    class SidecarAuth(httpx.Auth):
        """An ``httpx.Auth`` for sync and async clients: Bearer token, one retry after a 401.

        The async flow shares ``client``'s cache. The sync flow (a thread without
        the client's event loop) asks the sidecar through a small blocking httpx
        client of its own, with the same reuse-until-``min_ttl`` rule.
        """

        def __init__(self, client: TokenClient, profile: str | None = None) -> None:
            self._client = client
            self._profile = profile
            self._sync_token: Token | None = None

        async def async_auth_flow(
            self, request: httpx.Request
        ) -> AsyncGenerator[httpx.Request, httpx.Response]:
            token = await self._client.get_token(self._profile)
            request.headers["Authorization"] = bearer(token)
            response = yield request
            if response.status_code == 401 and _httpx_replayable(request):
                token = await self._client.invalidate(token, self._profile)
                request.headers["Authorization"] = bearer(token)
                yield request

        def sync_auth_flow(
            self, request: httpx.Request
        ) -> Generator[httpx.Request, httpx.Response]:
            token = self._sync_token
            if token is None or not self._client.usable(token):
                params = {"min_ttl": str(int(self._client.min_ttl))}
                token = self._sync_request("GET", "", params=params)
            request.headers["Authorization"] = bearer(token)
            response = yield request
            if response.status_code == 401 and _httpx_replayable(request):
                payload = {"fingerprint": token.fingerprint}
                token = self._sync_request("POST", "/invalidate", json=payload)
                request.headers["Authorization"] = bearer(token)
                yield request

        def _sync_request(self, method: str, suffix: str, **kwargs: Any) -> Token:
            endpoint = self._client.endpoint
            url = endpoint.token_url(self._client.resolve_profile(self._profile)) + suffix
            transport = httpx.HTTPTransport(uds=endpoint.socket) if endpoint.socket else None
            try:
                with httpx.Client(
                    transport=transport, headers=dict(GUARD_HEADERS), timeout=15
                ) as http:
                    resp = http.request(method, url, **kwargs)
            except httpx.HTTPError as exc:
                where = endpoint.socket or endpoint.url
                raise SidecarError("unreachable", f"cannot reach the sidecar at {where}") from exc
            self._sync_token = parse_answer(resp.status_code, resp.content, resp.headers)
            return self._sync_token

        def __repr__(self) -> str:
            return f"SidecarAuth({self._client!r}, profile={self._profile!r})"

else:  # pragma: no cover - exercised only without the httpx extra

    class SidecarAuth:  # type: ignore[no-redef,unreachable]
        """Placeholder that explains how to get the real one."""

        def __init__(self, *_args: object, **_kwargs: object) -> None:
            raise ImportError("SidecarAuth needs httpx: pip install 'token-sidecar[httpx]'")


def _httpx_replayable(request: httpx.Request) -> bool:
    """Whether the request body can be sent again (bytes, not a one-shot stream)."""
    return isinstance(request.stream, httpx.ByteStream)


__all__ = [
    "SidecarAuth",
    "SidecarError",
    "Token",
    "TokenClient",
    "parse_answer",
    "sidecar_middleware",
]
