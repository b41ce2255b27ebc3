"""The token API: GET /v1/token, invalidate and exchange, behind the guards that keep tokens local.

Every request first passes the guards (``Token-Sidecar: 1`` header, no proxy
headers, a loopback ``Host``, and for Unix-socket peers an allowed uid), so a
tool that fetches arbitrary URLs on behalf of a model can never read a token
(SSRF and DNS-rebinding defence). Errors of every kind are mapped to the JSON
error body of DESIGN.md at one boundary wrapped around each route; no error
body holds a token, a secret, or request input that is not a configured
profile name, and the guards' refusals name no profile at all.

The hot path (a cached, servable token) is a dictionary lookup, a clock read
and one ``orjson.dumps``: it never waits and never talks to the IdP.
``POST /v1/exchange/{profile}`` trades a user's token for a per-user token of
an exchange profile (:mod:`sidecar.exchange`); its answers and refusals have
the same shape, and a user's token is never part of any answer or log.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import math
import re
from typing import Final

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError
from multidict import istr

from sidecar.config import PROFILE_NAME_PATTERN, ProfileConfig, ServerConfig
from sidecar.errors import ApiError, ExchangeError, TokenUnavailableError, UnknownProfileError
from sidecar.exchange import ExchangeAnswer
from sidecar.idp import MAX_LIFETIME
from sidecar.listeners import GuardedRequestHandler, Peer, peer_of
from sidecar.proxy import GUARDED_PROFILE, ProxyRoute
from sidecar.refresher import ProfileRefresher
from sidecar.responses import JSON_NO_STORE, bytes_response, error_response, exchange_refusal
from sidecar.service import TokenService
from sidecar.token import ServedToken, fingerprint

log = logging.getLogger("sidecar.api")

#: The header every caller must send; browsers and URL fetchers do not.
GUARD_HEADER: Final = "Token-Sidecar"
_GUARD_HEADER: Final = istr(GUARD_HEADER)  # looked up on every request: case-folded once
#: Largest accepted invalidate body, in bytes.
MAX_BODY: Final = 16 * 1024
#: Largest accepted exchange body, in bytes: a user's token is a few KiB at most.
MAX_EXCHANGE_BODY: Final = 64 * 1024

_MIN_TTL = re.compile(r"[0-9]{1,9}(?:\.[0-9]{0,6})?")
_FINGERPRINT = re.compile(r"[0-9a-f]{12}")
_PROFILE_NAME = re.compile(PROFILE_NAME_PATTERN)
# A Host header: a bracketed IPv6 literal or a name without colons, then an optional port.
_HOST = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]]+))(?::[0-9]{1,5})?")
_KNOWN_PATHS = (
    (re.compile(r"/v1/token/[^/]+"), ("GET",)),
    (re.compile(r"/v1/token/[^/]+/invalidate"), ("POST",)),
    (re.compile(r"/v1/exchange/[^/]+"), ("POST",)),
)


def make_token_app(service: TokenService, server: ServerConfig) -> web.Application:
    """Build the token API app (serve it on loopback TCP and/or a Unix socket).

    Args:
        service: the daemon's token service; profiles are looked up per request,
            so a config reload takes effect at once.
        server: the ``[server]`` config, for ``allow_uids``.

    Returns:
        The app, with ``GET /v1/token/{profile}``,
        ``POST /v1/token/{profile}/invalidate``, ``POST /v1/exchange/{profile}``
        and ``ANY /v1/proxy/{upstream}/{path}``.
    """
    # Each route is a bound method with the service at hand, behind the guards
    # of TokenApi.guarded (GET runs them inline): no middleware, so aiohttp
    # skips its middleware chain, and no per-request app lookups on the hot
    # path (bench/profile_hotpath.py).
    api = TokenApi(service, server)
    app = web.Application()
    app[TOKEN_API] = api
    # No HEAD: asking for a token has effects (metrics, possibly a refresh).
    app.router.add_get("/v1/token/{profile}", api.get_token, allow_head=False)
    app.router.add_post("/v1/token/{profile}/invalidate", api.guarded(api.invalidate))
    app.router.add_post("/v1/exchange/{profile}", api.exchange)
    app.router.add_route(
        "*", "/v1/proxy/{tail:.*}", ProxyRoute(service.upstreams, api.check_guards).handle
    )
    app.router.add_route("*", "/{tail:.*}", api.guarded(_unrouted))
    return app


async def _unrouted(request: web.Request) -> web.StreamResponse:
    """Everything no endpoint took: 405 on a known path with another method, else 404."""
    for pattern, allowed in _KNOWN_PATHS:
        if pattern.fullmatch(request.path):
            raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound


async def answer_unrouted(request: web.Request) -> web.StreamResponse:
    """The guarded JSON answer to a target the router cannot place (``CONNECT``, ``OPTIONS *``)."""
    return await request.app[TOKEN_API].guarded(_unrouted)(request)


class TokenApi:
    """The token API's routes, guards and error mapping over one token service.

    Holds the per-profile cache of encoded GET bodies: while a profile's token,
    its whole seconds left and its stale flag stay the same, every caller gets
    the same bytes, so thousands of callers a second cost one encoding per second.
    """

    def __init__(self, service: TokenService, server: ServerConfig) -> None:
        self.service = service
        self.server = server
        self._count_request = service.metrics.count_request
        self._encoded: dict[str, tuple[ServedToken, bytes]] = {}

    def guarded(self, handler: Handler) -> Handler:
        """``handler`` behind the guards, every expected failure turned into a JSON error."""

        @functools.wraps(handler)
        async def boundary(request: web.Request) -> web.StreamResponse:
            try:
                self.check_guards(request)
                return await handler(request)
            except _EXPECTED as exc:
                return self._error_answer(exc)

        return boundary

    def _error_answer(self, exc: Exception) -> web.Response:
        """The JSON answer to an expected failure of a guarded route."""
        if isinstance(exc, ApiError):
            return error_response(exc)
        if isinstance(exc, UnknownProfileError):
            return error_response(_unknown_profile(exc.profile, self.service))
        if isinstance(exc, ExchangeError):
            return error_response(exchange_refusal(exc))
        if isinstance(exc, TokenUnavailableError):
            self.service.metrics.count_request(exc.profile, "unavailable")
            return error_response(
                ApiError(503, exc.code, str(exc), profile=exc.profile, retry_after=exc.retry_after)
            )
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allow = ", ".join(sorted(exc.allowed_methods))
            return error_response(
                ApiError(
                    405, "method_not_allowed", "method not allowed", headers={hdrs.ALLOW: allow}
                )
            )
        return error_response(ApiError(404, "not_found", "no such endpoint"))

    # -- the guards -----------------------------------------------------------

    def check_guards(self, request: web.Request) -> None:
        """Refuse anything that is not a deliberate call from a local process."""
        headers = request.headers
        if headers.getall(_GUARD_HEADER, None) != ["1"]:
            raise ApiError(400, "missing_header", f"the header '{GUARD_HEADER}: 1' is required")
        if (
            hdrs.FORWARDED in headers
            or hdrs.X_FORWARDED_FOR in headers
            or hdrs.VIA in headers
            or not request.raw_path.startswith("/")
        ):
            # An absolute-form target (GET http://host/...) is what proxies send;
            # RFC 9112 would have its host override Host, so refuse it outright.
            raise self._forbidden(request, "proxied requests are refused")
        peer = _peer(request)
        if peer is None:
            # The connection is gone, so nobody can read the answer; still fail closed.
            raise self._forbidden(request, "connection closed")
        hosts = headers.getall(hdrs.HOST, ())
        host = hosts[0] if hosts else None
        if len(hosts) > 1 or not (
            _host_allowed(host, peer.unix) or _is_listen_host(host, self.server)
        ):
            raise self._forbidden(request, "the Host header must name a loopback address")
        if peer.unix:
            self._check_peer(request, peer)

    def _check_peer(self, request: web.Request, peer: Peer) -> None:
        """Refuse a Unix-socket peer whose uid is not allowed (profile list, else server list)."""
        allowed = self._allowed_uids(request)
        if not allowed:
            return
        if peer.uid is None:
            raise self._forbidden(request, "peer credentials are not available")
        if peer.uid not in allowed:
            raise self._forbidden(request, "this user may not read tokens")

    def _allowed_uids(self, request: web.Request) -> tuple[int, ...]:
        """The profile's own list when it has one, else the server's (empty: no restriction).

        An empty per-profile list inherits rather than opens: copying the example
        config's ``allow_uids = []`` must not silently lift a server-wide list.
        """
        profile = self._known_profile(request)
        if profile is not None and profile.allow_uids:
            return profile.allow_uids
        return self.server.allow_uids

    def _known_profile(self, request: web.Request) -> ProfileConfig | None:
        """The profile named in the path (or acted for), of either kind, when it is configured."""
        name = request.match_info.get("profile") or request.get(GUARDED_PROFILE)
        if name is None:
            return None
        refresher = self.service.refreshers.get(name)
        if refresher is not None:
            return refresher.profile
        exchanger = self.service.exchanges.exchangers.get(name)
        return None if exchanger is None else exchanger.profile

    def _known_refresher(self, request: web.Request) -> ProfileRefresher | None:
        """The refresher of the profile named in the path (or acted for), when it is configured."""
        name = request.match_info.get("profile") or request.get(GUARDED_PROFILE)
        return None if name is None else self.service.refreshers.get(name)

    def _forbidden(self, request: web.Request, reason: str) -> ApiError:
        """A 403, counted as ``denied`` when the path names a configured profile.

        The answer itself names no profile: a refused caller learns nothing about
        which profiles exist (the metric and the log, read by operators, do).
        """
        refresher = self._known_refresher(request)
        name = refresher.name if refresher is not None else None
        if name is not None:
            self.service.metrics.count_request(name, "denied")
        log.info("request.denied", extra={"profile": name, "reason": reason})
        return ApiError(403, "forbidden", reason)

    # -- the routes -------------------------------------------------------------

    async def get_token(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/token/{profile}[?min_ttl=SECONDS]``, guards included.

        The hot path, so it runs the guards and maps errors itself rather than
        through :meth:`guarded`: one coroutine frame less per request.
        """
        try:
            self.check_guards(request)
            name = request.match_info["profile"]
            refresher = self.service.refreshers.get(name)
            if refresher is None:
                raise self._not_a_token_profile(name)
            min_ttl = _min_ttl(request, refresher) if request.query_string else None
            served = refresher.serve_now(min_ttl)
            if served is None:
                served = await refresher.get(min_ttl)
        except _EXPECTED as exc:
            return self._error_answer(exc)
        self._count_request(refresher.name, "stale" if served.stale else "served")
        cached = self._encoded.get(refresher.name)
        if cached is not None and cached[0] == served:
            return web.Response(body=cached[1], headers=JSON_NO_STORE)
        data = _token_body(refresher.name, served)
        self._encoded[refresher.name] = (served, data)
        return web.Response(body=data, headers=JSON_NO_STORE)

    async def invalidate(self, request: web.Request) -> web.Response:
        """``POST /v1/token/{profile}/invalidate``: drop the reported token if still current."""
        service = self.service
        name = request.match_info["profile"]
        refresher = service.refreshers.get(name)
        if refresher is None:
            raise self._not_a_token_profile(name)
        body = await _read_body(request, refresher.name, self.server.header_timeout)
        reported = _reported_fingerprint(body, refresher.name)
        result, served = await refresher.invalidate(reported)
        service.metrics.count_request(refresher.name, "stale" if served.stale else "served")
        return bytes_response(_token_body(refresher.name, served, result), status=200)

    async def exchange(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/exchange/{profile}``: a per-user token for the user's ``subject_token``.

        A cache hit is the hot path, so, like :meth:`get_token`, it runs the
        guards itself and awaits nothing once the body is in.
        """
        try:
            self.check_guards(request)
            name = request.match_info["profile"]
            exchanger = self.service.exchanges.exchangers.get(name)
            if exchanger is None:
                if name in self.service.refreshers:
                    raise _bad_request(
                        f"profile {name!r} is a client-credentials profile: GET /v1/token/{name}",
                        name,
                    )
                raise UnknownProfileError(name)
            body = await _read_body(
                request, name, self.server.header_timeout, limit=MAX_EXCHANGE_BODY
            )
            subject_token, scope, min_ttl, rejected = _exchange_request(body, name)
            if rejected is not None:
                # The caller's API refused this token: forget it, if it is still the one held.
                exchanger.drop(subject_token, scope, fingerprint=rejected)
            answer = exchanger.serve_now(subject_token, scope=scope, min_ttl=min_ttl)
            if answer is None:
                answer = await exchanger.exchange(subject_token, scope=scope, min_ttl=min_ttl)
        except _EXPECTED as exc:
            return self._error_answer(exc)
        return web.Response(body=_exchange_body(name, answer), headers=JSON_NO_STORE)

    def _not_a_token_profile(self, name: str) -> Exception:
        """400 for an exchange profile on a ``/v1/token`` path, else 404 unknown profile."""
        if name in self.service.exchanges.exchangers:
            return _bad_request(
                f"profile {name!r} exchanges users' tokens: POST /v1/exchange/{name}", name
            )
        return UnknownProfileError(name)


#: What a guarded route may raise on purpose; anything else is a bug (a 500).
_EXPECTED = (
    ApiError,
    UnknownProfileError,
    TokenUnavailableError,
    ExchangeError,
    web.HTTPMethodNotAllowed,
    web.HTTPNotFound,
)
TOKEN_API: Final = web.AppKey("token_api", TokenApi)


def _peer(request: web.Request) -> Peer | None:
    """The connection's peer: read once per connection by the listener, else now."""
    protocol = request.protocol
    if isinstance(protocol, GuardedRequestHandler):
        return protocol.peer
    return peer_of(request.transport)  # an app served without the listener, as in tests


def _unknown_profile(asked: str, service: TokenService) -> ApiError:
    """404 naming the profile asked for (only if it is a valid name) and the configured ones.

    Answered only after the guards passed: a caller that may read tokens may
    also know which profiles exist; the guard answers reveal nothing of them.
    """
    shown = f"{asked!r}" if _PROFILE_NAME.fullmatch(asked) else "(not a valid profile name)"
    configured = ", ".join(sorted([*service.refreshers, *service.exchanges.exchangers])) or "none"
    return ApiError(404, "unknown_profile", f"unknown profile {shown}; configured: {configured}")


# Callers send the same few Host values over and over; the bound keeps junk from piling up.
# Both arguments are positional: a cheaper cache key on the hot path.
@functools.lru_cache(maxsize=64)
def _host_allowed(host: str | None, unix: bool) -> bool:
    """Whether ``host`` is localhost or a loopback address (absent: only on the Unix socket)."""
    if host is None:
        return unix
    match = _HOST.fullmatch(host)
    if match is None:
        return False
    ipv6, name = match.group("ipv6"), match.group("name")
    try:
        if ipv6 is not None:
            return ipaddress.IPv6Address(ipv6).is_loopback
        if name.lower() == "localhost":
            return True
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:  # not an address at all, e.g. "127.0.0.1.nip.io"
        return False


def _is_listen_host(host: str | None, server: ServerConfig) -> bool:
    """With ``allow_non_loopback``, the configured listen address is a valid Host too."""
    if host is None or not server.allow_non_loopback or not server.listen:
        return False
    listen_host = server.listen.rpartition(":")[0]
    match = _HOST.fullmatch(host)
    if match is None:
        return False
    named = match.group("ipv6") or match.group("name")
    return f"[{named}]" == listen_host if match.group("ipv6") else named == listen_host


def _min_ttl(request: web.Request, refresher: ProfileRefresher) -> float | None:
    """The ``min_ttl`` query parameter: seconds, at most half the current token's lifetime."""
    values = request.query.getall("min_ttl", [])
    if not values:
        return None
    if len(values) > 1 or _MIN_TTL.fullmatch(values[0]) is None:
        raise _bad_request("min_ttl must be a non-negative number of seconds", refresher.name)
    min_ttl = float(values[0])
    token = refresher.token
    # Without a token the lifetime is unknown: the engine refuses what the IdP cannot give.
    if token is not None and min_ttl > token.lifetime / 2:
        limit = math.floor(token.lifetime / 2)
        raise _bad_request(
            f"min_ttl must not exceed half the token lifetime ({limit}s)", refresher.name
        )
    return min_ttl


async def _read_body(
    request: web.Request, profile: str, timeout: float, *, limit: int = MAX_BODY
) -> bytes:
    """The request body, refusing more than ``limit`` bytes without buffering them."""
    content = request.content
    try:
        if content.is_eof():
            # All of it arrived with the head (the usual small body): no wait, no timer.
            whole = content.read_nowait()
            if len(whole) > limit:
                raise _too_big(limit, profile)
            return whole
        length = request.content_length
        if length is not None and length > limit:
            raise _too_big(limit, profile)
        body = bytearray()
        # The body gets as long as a head: a half-sent body cannot hold the connection.
        async with asyncio.timeout(timeout):
            async for chunk in content.iter_any():
                body += chunk
                if len(body) > limit:
                    raise _too_big(limit, profile)
    except RequestPayloadError:  # a Content-Encoding that does not decode
        # Nothing more can be read from a broken payload: end it, so aiohttp does
        # not linger reading it after the answer (which would raise there).
        request.content.feed_eof()
        raise ApiError(
            400,
            "bad_request",
            "the body could not be decoded",
            profile=profile,
            headers={hdrs.CONNECTION: "close"},  # the connection cannot carry another request
        ) from None
    except TimeoutError:
        raise _bad_request("the body did not arrive in time", profile) from None
    return bytes(body)


def _too_big(limit: int, profile: str) -> ApiError:
    return _bad_request(f"the body must not exceed {limit} bytes", profile)


def _reported_fingerprint(body: bytes, profile: str) -> str:
    """The fingerprint named by ``{"access_token": ...}`` or ``{"fingerprint": ...}``."""
    shape = 'the body must be JSON {"access_token": "..."} or {"fingerprint": "..."}'
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad_request(shape, profile) from None
    if not isinstance(data, dict):
        raise _bad_request(shape, profile)
    given = [key for key in ("access_token", "fingerprint") if key in data]
    if len(given) != 1 or not isinstance(data[given[0]], str) or not data[given[0]]:
        raise _bad_request(shape, profile)
    value: str = data[given[0]]
    if given[0] == "access_token":
        return fingerprint(value)
    if _FINGERPRINT.fullmatch(value) is None:
        raise _bad_request("fingerprint must be 12 lowercase hex digits", profile)
    return value


def _token_body(profile: str, served: ServedToken, result: str | None = None) -> bytes:
    """The encoded 200 answer of both endpoints (invalidate adds its ``result``)."""
    token = served.token
    body = {
        "access_token": token.value,
        "token_type": "Bearer",
        "expires_in": served.expires_in,
        "expires_at": math.floor(token.expires_at_wall),
        "scope": token.scope,
        "profile": profile,
        "stale": served.stale,
    }
    if result is not None:
        body["result"] = result
    return orjson.dumps(body)


def _exchange_request(
    body: bytes, profile: str
) -> tuple[str, str | None, float | None, str | None]:
    """``subject_token``, ``scope``, ``min_ttl`` and ``rejected`` of an exchange body.

    Other keys are ignored. ``rejected`` is the fingerprint of a per-user
    token the caller's API answered 401: it is dropped before the exchange.
    """
    shape = (
        'the body must be JSON {"subject_token": "...", "scope": "...", "min_ttl": SECONDS} '
        "(scope and min_ttl optional)"
    )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _bad_request(shape, profile) from None
    if not isinstance(data, dict):
        raise _bad_request(shape, profile)
    subject_token = data.get("subject_token")
    if not isinstance(subject_token, str) or not subject_token:
        raise _bad_request("subject_token must be a non-empty string", profile)
    scope = data.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise _bad_request("scope must be a string", profile)
    min_ttl = data.get("min_ttl")
    if min_ttl is not None and (
        not isinstance(min_ttl, int | float)
        or isinstance(min_ttl, bool)
        or not 0 <= min_ttl <= MAX_LIFETIME
    ):
        raise _bad_request("min_ttl must be a number of seconds from 0 to one year", profile)
    rejected = data.get("rejected")
    if rejected is not None and not (
        isinstance(rejected, str) and _FINGERPRINT.fullmatch(rejected)
    ):
        raise _bad_request(
            "rejected must be a token fingerprint (12 lower-case hex digits)", profile
        )
    return subject_token, scope, None if min_ttl is None else float(min_ttl), rejected


def _exchange_body(profile: str, answer: ExchangeAnswer) -> bytes:
    """The encoded 200 answer of an exchange."""
    token = answer.token
    return orjson.dumps(
        {
            "access_token": token.value,
            "token_type": token.token_type,
            "issued_token_type": token.issued_token_type,
            "expires_in": answer.expires_in,
            "expires_at": math.floor(token.expires_at_wall),
            "scope": token.scope,
            "profile": profile,
            "cached": answer.cached,
        }
    )


def _bad_request(message: str, profile: str) -> ApiError:
    return ApiError(400, "bad_request", message, profile=profile)
