"""The token client: TokenClient, Token and SidecarError.

:class:`TokenClient` talks to a running sidecar over loopback TCP or its Unix
socket, keeps each profile's token in-process until ``min_ttl`` before expiry
(so a tool call normally costs no request at all) and makes at most one
request per profile at a time. It has an async path (aiohttp) and a blocking
path (the standard library's ``http.client``, for sync code and threads
without the client's event loop); both share one token cache, one timeout,
one way of reading the sidecar's answer and one mapping of failures to
:class:`SidecarError`.

:meth:`TokenClient.exchange` trades a user's token for a per-user token of
an exchange profile, with its own small cache (``_exchange.py``): keyed by a
hash of the user's token, LRU-bounded, one request per user at a time.

What the HTTP-library adapters do with a token (which origin gets it, when a
401 earns a retry) is written once, in ``_origin.py`` and ``_retry.py``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import quote

import aiohttp

from ._blocking import TRANSPORT_ERRORS, BlockingConnection
from ._exchange import DEFAULT_MAX_ENTRIES, SubjectTokens, subject_key

DEFAULT_URL = "http://127.0.0.1:8700"
GUARD_HEADERS: Mapping[str, str] = {"Token-Sidecar": "1"}
JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}


def fingerprint(value: str) -> str:
    """The first 12 hex digits of SHA-256: how a token is named anywhere visible."""
    return hashlib.sha256(value.encode()).hexdigest()[:12]


class WallClock(Protocol):
    """What the client needs of a clock: UNIX time, to compare with ``expires_at``."""

    def time(self) -> float: ...


class _SystemClock:
    def time(self) -> float:
        return time.time()


class SidecarError(Exception):
    """The sidecar could not hand out a token; ``code`` is its error code.

    ``code`` is one of the token API codes (``token_unavailable``,
    ``misconfigured``, ``unknown_profile``, ...), of the exchange endpoint
    (``invalid_subject``, ``subject_rejected``, ``exchange_denied``, with
    the IdP's words in ``idp``), ``missing_subject`` when an adapter was
    given no user's token, or ``unreachable`` when the
    sidecar itself could not be reached; ``status`` is the HTTP status (0 when
    unreachable); ``retry_after`` is the sidecar's hint in seconds, if any.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 0,
        retry_after: float | None = None,
        idp: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        #: The IdP's ``error``, ``error_description`` and ``claims`` of a refused exchange.
        self.idp = dict(idp) if idp else None
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


def bearer(token: Token) -> str:
    """The ``Authorization`` header value for ``token``."""
    return f"Bearer {token.access_token}"


def _payload(status: int, body: bytes, retry_after: str | None) -> dict[str, object]:
    """The JSON object of a 200 answer; :class:`SidecarError` for anything else."""
    try:
        payload = json.loads(body)
    except ValueError:  # JSONDecodeError, or bytes that are not text at all
        payload = None
    if not isinstance(payload, dict):
        raise SidecarError(
            "bad_answer", f"unexpected answer from the sidecar ({status})", status=status
        )
    if status != 200:
        idp = payload.get("idp")
        raise SidecarError(
            str(payload.get("error", "error")),
            str(payload.get("message", "")),
            status=status,
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
            idp={str(k): str(v) for k, v in idp.items()} if isinstance(idp, dict) else None,
        )
    return payload


def parse_answer(status: int, body: bytes, retry_after: str | None) -> Token:
    """Turn one token API answer into a :class:`Token` or raise :class:`SidecarError`."""
    payload = _payload(status, body, retry_after)
    try:
        return Token(
            access_token=str(payload["access_token"]),
            expires_at=float(payload["expires_at"]),  # type: ignore[arg-type]
            stale=bool(payload["stale"]),
            profile=str(payload["profile"]),
            scope=payload.get("scope"),  # type: ignore[arg-type]
        )
    except (KeyError, TypeError, ValueError):
        raise SidecarError("bad_answer", "token answer is missing fields", status=status) from None


def parse_exchange_answer(status: int, body: bytes, retry_after: str | None) -> Token:
    """Turn one ``POST /v1/exchange`` answer into a :class:`Token` or raise :class:`SidecarError`.

    A per-user token is never stale (the sidecar has no fallback for them).
    """
    payload = _payload(status, body, retry_after)
    try:
        return Token(
            access_token=str(payload["access_token"]),
            expires_at=float(payload["expires_at"]),  # type: ignore[arg-type]
            stale=False,
            profile=str(payload["profile"]),
            scope=payload.get("scope"),  # type: ignore[arg-type]
            token_type=str(payload.get("token_type") or "Bearer"),
        )
    except (KeyError, TypeError, ValueError):
        raise SidecarError(
            "bad_answer", "exchange answer is missing fields", status=status
        ) from None


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

    @property
    def where(self) -> str:
        """The socket path or base URL, as error messages name the sidecar."""
        return self.socket or self.url

    def token_url(self, profile: str, min_ttl: float = 0) -> str:
        """``GET`` URL of ``profile``'s token, asking for ``min_ttl`` seconds of life if > 0."""
        url = f"{self.url}/v1/token/{quote(profile, safe='')}"
        return f"{url}?min_ttl={int(min_ttl)}" if min_ttl > 0 else url

    def invalidate_url(self, profile: str) -> str:
        """``POST`` URL that reports ``profile``'s token as rejected downstream."""
        return f"{self.token_url(profile)}/invalidate"

    def exchange_url(self, profile: str) -> str:
        """``POST`` URL that exchanges a user's token for one of ``profile``."""
        return f"{self.url}/v1/exchange/{quote(profile, safe='')}"


def _invalidate_body(token: Token) -> bytes:
    return json.dumps({"fingerprint": token.fingerprint}).encode()


def _exchange_body(
    subject_token: str, scope: str | None, min_ttl: float, rejected: Token | None = None
) -> bytes:
    body: dict[str, object] = {"subject_token": subject_token, "min_ttl": min_ttl}
    if scope is not None:
        body["scope"] = scope
    if rejected is not None:
        body["rejected"] = rejected.fingerprint
    return json.dumps(body).encode()


class TokenClient:
    """Fetches tokens from the sidecar and reuses them in-process until ``min_ttl``.

    Invariants: at most one request per profile in flight on the event loop,
    and one blocking request at a time across threads; a cached token is
    handed out only while it has more than ``min_ttl`` seconds left. The async
    and blocking paths share the cache.

    Close it when done: ``async with TokenClient() as tokens:`` (or
    :meth:`aclose`) from async code, ``with TokenClient() as tokens:`` (or
    :meth:`close`) from code that only calls the ``*_sync`` methods.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        socket: str | None = None,
        profile: str | None = None,
        min_ttl: float = 30,
        timeout: float = 15.0,
        clock: WallClock | None = None,
        environ: Mapping[str, str] | None = None,
        max_exchanged: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        env = os.environ if environ is None else environ
        self.endpoint = Endpoint.resolve(url, socket, env)
        self.profile = profile or env.get("TOKEN_SIDECAR_PROFILE") or None
        self.min_ttl = min_ttl
        # One value for both paths: aiohttp's total per request; http.client's
        # per connect, send and read (it has no total).
        self._timeout = timeout
        self._clock: WallClock = clock if clock is not None else _SystemClock()
        self._session: aiohttp.ClientSession | None = None
        self._cache: dict[str, Token] = {}
        self._inflight: dict[str, asyncio.Future[Token]] = {}
        # Per-user tokens (exchange): keyed by a hash of the user's token, never by it.
        self._exchanged = SubjectTokens(max_exchanged)
        self._exchanging: dict[bytes, asyncio.Future[Token]] = {}
        # The blocking path: one persistent connection, one request at a time.
        self._sync_lock = threading.Lock()
        self._connection = BlockingConnection(
            self.endpoint.url, self.endpoint.socket, timeout=timeout, headers=GUARD_HEADERS
        )

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
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers=GUARD_HEADERS,
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
        pending = asyncio.ensure_future(self._request("GET", self.endpoint.token_url(name, need)))
        self._inflight[name] = pending
        pending.add_done_callback(functools.partial(self._forget_inflight, name))
        return await asyncio.shield(pending)

    def _forget_inflight(self, profile: str, done: asyncio.Future[Token]) -> None:
        if self._inflight.get(profile) is done:
            del self._inflight[profile]

    async def invalidate(self, token: Token, profile: str | None = None) -> Token:
        """Report ``token`` as rejected downstream; returns the sidecar's current token."""
        name = profile or token.profile
        self._cache.pop(name, None)
        return await self._request(
            "POST", self.endpoint.invalidate_url(name), _invalidate_body(token)
        )

    async def _request(
        self, method: str, url: str, body: bytes | None = None, *, exchange: bool = False
    ) -> Token:
        """One request; a profile's token is kept in the cache, a per-user one is not."""
        session = self._session_for_loop()
        headers = JSON_HEADERS if body is not None else None
        parse = parse_exchange_answer if exchange else parse_answer
        try:
            async with session.request(method, url, data=body, headers=headers) as resp:
                data = await resp.read()
                token = parse(resp.status, data, resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._unreachable() from exc
        return token if exchange else self._keep(token)

    # -- per-user tokens (token exchange) --------------------------------------------

    def cached_exchange(
        self,
        subject_token: str,
        profile: str | None = None,
        *,
        scope: str | None = None,
        min_ttl: float | None = None,
    ) -> Token | None:
        """The in-process per-user token of this user, if it has more than ``min_ttl`` left."""
        return self._held(subject_key(self._profile(profile), scope, subject_token), min_ttl)

    def _held(self, key: bytes, min_ttl: float | None) -> Token | None:
        token = self._exchanged.get(key)
        return token if self.usable(token, min_ttl) else None

    async def exchange(
        self,
        subject_token: str,
        profile: str | None = None,
        *,
        scope: str | None = None,
        min_ttl: float | None = None,
    ) -> Token:
        """A token of the exchange ``profile`` issued to the user of ``subject_token``.

        Cached in-process per user (by a hash of ``subject_token``) until
        ``min_ttl`` before it expires; one request per user at a time.

        Args:
            subject_token: the user's token, as the MCP server received it
                (without ``Bearer ``).
            profile: an exchange profile; default: the client's.
            scope: a narrower scope than the profile's.
            min_ttl: seconds the token must still live; default: the client's.

        Raises:
            SidecarError: ``invalid_subject``, ``subject_rejected``,
                ``exchange_denied`` (``idp`` holds the IdP's words),
                ``token_unavailable``, ``unreachable``, ...
        """
        name = self._profile(profile)
        need = self.min_ttl if min_ttl is None else min_ttl
        key = subject_key(name, scope, subject_token)
        token = self._held(key, need)
        if token is not None:
            return token
        pending = self._exchanging.get(key)
        if pending is not None:
            token = await asyncio.shield(pending)
            if self.usable(token, need):
                return token
        body = _exchange_body(subject_token, scope, need)
        return await self._exchange_once(key, name, body)

    async def invalidate_exchange(
        self,
        token: Token,
        subject_token: str,
        profile: str | None = None,
        *,
        scope: str | None = None,
    ) -> Token:
        """Report a per-user ``token`` rejected downstream; returns the user's next token.

        The token is dropped here and, while it is still the one held, at the
        sidecar, which then exchanges the user's token anew.
        """
        name = profile or token.profile
        key = subject_key(name, scope, subject_token)
        self._exchanged.drop(key, token)
        body = _exchange_body(subject_token, scope, self.min_ttl, rejected=token)
        return await self._exchange_once(key, name, body)

    async def _exchange_once(self, key: bytes, profile: str, body: bytes) -> Token:
        pending = asyncio.ensure_future(
            self._request("POST", self.endpoint.exchange_url(profile), body, exchange=True)
        )
        self._exchanging[key] = pending
        pending.add_done_callback(functools.partial(self._landed, key))
        return await asyncio.shield(pending)

    def _landed(self, key: bytes, done: asyncio.Future[Token]) -> None:
        if self._exchanging.get(key) is done:
            del self._exchanging[key]
        if not done.cancelled() and done.exception() is None:
            self._exchanged.put(key, done.result())

    def exchange_sync(
        self,
        subject_token: str,
        profile: str | None = None,
        *,
        scope: str | None = None,
        min_ttl: float | None = None,
    ) -> Token:
        """Blocking :meth:`exchange`, for a thread that does not run the client's loop."""
        name = self._profile(profile)
        need = self.min_ttl if min_ttl is None else min_ttl
        key = subject_key(name, scope, subject_token)
        token = self._held(key, need)
        if token is not None:
            return token
        with self._sync_lock:
            token = self._held(key, need)  # another thread may have fetched it meanwhile
            if token is not None:
                return token
            body = _exchange_body(subject_token, scope, need)
            token = self._request_sync(
                "POST", self.endpoint.exchange_url(name), body, exchange=True
            )
        self._exchanged.put(key, token)
        return token

    def invalidate_exchange_sync(
        self,
        token: Token,
        subject_token: str,
        profile: str | None = None,
        *,
        scope: str | None = None,
    ) -> Token:
        """Blocking :meth:`invalidate_exchange`."""
        name = profile or token.profile
        key = subject_key(name, scope, subject_token)
        self._exchanged.drop(key, token)
        body = _exchange_body(subject_token, scope, self.min_ttl, rejected=token)
        with self._sync_lock:
            fresh = self._request_sync(
                "POST", self.endpoint.exchange_url(name), body, exchange=True
            )
        self._exchanged.put(key, fresh)
        return fresh

    def get_token_sync(self, profile: str | None = None, *, min_ttl: float | None = None) -> Token:
        """Blocking :meth:`get_token`, for a thread that does not run the client's loop."""
        name = self._profile(profile)
        need = self.min_ttl if min_ttl is None else min_ttl
        token = self.cached(name, min_ttl=need)
        if token is not None:
            return token
        with self._sync_lock:
            # Another thread may have fetched it while this one waited for the lock.
            token = self.cached(name, min_ttl=need)
            if token is not None:
                return token
            return self._request_sync("GET", self.endpoint.token_url(name, need))

    def invalidate_sync(self, token: Token, profile: str | None = None) -> Token:
        """Blocking :meth:`invalidate`, for a thread that does not run the client's loop."""
        name = profile or token.profile
        self._cache.pop(name, None)
        with self._sync_lock:
            return self._request_sync(
                "POST", self.endpoint.invalidate_url(name), _invalidate_body(token)
            )

    def _request_sync(
        self, method: str, url: str, body: bytes | None = None, *, exchange: bool = False
    ) -> Token:
        headers = JSON_HEADERS if body is not None else None
        try:
            answer = self._connection.request(method, url, body, headers)
        except TRANSPORT_ERRORS as exc:
            raise self._unreachable() from exc
        if exchange:
            return parse_exchange_answer(answer.status, answer.body, answer.retry_after)
        return self._keep(parse_answer(answer.status, answer.body, answer.retry_after))

    def _unreachable(self) -> SidecarError:
        return SidecarError("unreachable", f"cannot reach the sidecar at {self.endpoint.where}")

    def _keep(self, token: Token) -> Token:
        self._cache[token.profile] = token
        return token

    async def aclose(self) -> None:
        """Close the connections; cached tokens are forgotten."""
        self._cache.clear()
        self._exchanged.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._connection.is_open:
            # Off the loop: a blocking request in flight holds the lock until it ends.
            await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._sync_lock:
            self._connection.close()

    def close(self) -> None:
        """Close the blocking connection, for a client used only from sync code.

        Raises:
            RuntimeError: the async path opened a session; close it with :meth:`aclose`.
        """
        if self._session is not None and not self._session.closed:
            raise RuntimeError("TokenClient was used from async code: close it with aclose()")
        self._cache.clear()
        self._exchanged.clear()
        self._close_sync()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
        return (
            f"TokenClient({self.endpoint.where!r}, profile={self.profile!r}, "
            f"min_ttl={self.min_ttl})"
        )
