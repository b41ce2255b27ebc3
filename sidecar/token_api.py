"""The token API: GET /v1/token and invalidate, behind the guards that keep tokens local.

Every request first passes the guards (``Token-Sidecar: 1`` header, no proxy
headers, a loopback ``Host``, and for Unix-socket peers an allowed uid), so a
tool that fetches arbitrary URLs on behalf of a model can never read a token
(SSRF and DNS-rebinding defence). Errors of every kind are mapped to the JSON
error body of DESIGN.md at one boundary wrapped around each route; no error
body holds a token, a secret, or request input that is not a configured
profile name.

The hot path (a cached, servable token) is a dictionary lookup, a clock read
and one ``orjson.dumps``: it never waits and never talks to the IdP.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import math
import re
import socket
import struct
from typing import Final, Protocol

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError

from sidecar.config import PROFILE_NAME_PATTERN, ServerConfig
from sidecar.errors import ApiError, TokenUnavailableError, UnknownProfileError
from sidecar.proxy import GUARDED_PROFILE, ProxyRoute
from sidecar.refresher import ProfileRefresher
from sidecar.responses import bytes_response, error_response
from sidecar.service import TokenService
from sidecar.token import ServedToken, fingerprint

log = logging.getLogger("sidecar.api")

SERVICE: Final = web.AppKey("service", TokenService)
SERVER: Final = web.AppKey("server", ServerConfig)

#: The header every caller must send; browsers and URL fetchers do not.
GUARD_HEADER: Final = "Token-Sidecar"
#: Largest accepted invalidate body, in bytes.
MAX_BODY: Final = 16 * 1024

_PROXY_HEADERS = (hdrs.FORWARDED, hdrs.X_FORWARDED_FOR, hdrs.VIA)
_MIN_TTL = re.compile(r"[0-9]{1,9}(?:\.[0-9]{0,6})?")
_FINGERPRINT = re.compile(r"[0-9a-f]{12}")
_PROFILE_NAME = re.compile(PROFILE_NAME_PATTERN)
#: Per profile: (token, whole seconds left, stale) and the GET body encoded for them.
EncodedBodies = dict[str, tuple[tuple[object, int, bool], bytes]]
ENCODED: Final = web.AppKey("encoded", EncodedBodies)
# A Host header: a bracketed IPv6 literal or a name without colons, then an optional port.
_HOST = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]]+))(?::[0-9]{1,5})?")
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_KNOWN_PATHS = (
    (re.compile(r"/v1/token/[^/]+"), ("GET",)),
    (re.compile(r"/v1/token/[^/]+/invalidate"), ("POST",)),
)


class _PeerSocket(Protocol):
    """What the guards need of the transport's socket (``asyncio.trsock.TransportSocket``)."""

    @property
    def family(self) -> int: ...

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def make_token_app(service: TokenService, server: ServerConfig) -> web.Application:
    """Build the token API app (serve it on loopback TCP and/or a Unix socket).

    Args:
        service: the daemon's token service; profiles are looked up per request,
            so a config reload takes effect at once.
        server: the ``[server]`` config, for ``allow_uids``.

    Returns:
        The app, with ``GET /v1/token/{profile}``,
        ``POST /v1/token/{profile}/invalidate`` and ``ANY /v1/proxy/{upstream}/{path}``.
    """
    # The boundary wraps each route rather than running as a middleware: with
    # no middleware aiohttp skips its middleware chain, which measured 12 % more
    # throughput on the hot path (bench/hotpath_variants.py).
    app = web.Application()
    app[SERVICE] = service
    app[SERVER] = server
    app[ENCODED] = {}
    # No HEAD: asking for a token has effects (metrics, possibly a refresh).
    app.router.add_get("/v1/token/{profile}", _guarded(_get_token), allow_head=False)
    app.router.add_post("/v1/token/{profile}/invalidate", _guarded(_invalidate))
    app.router.add_route(
        "*", "/v1/proxy/{tail:.*}", ProxyRoute(service.upstreams, _check_guards).handle
    )
    app.router.add_route("*", "/{tail:.*}", _guarded(_unrouted))
    return app


def _guarded(handler: Handler) -> Handler:
    """``handler`` behind the guards and the error mapping of :func:`_boundary`."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        return await _boundary(request, handler)

    return guarded


async def _unrouted(request: web.Request) -> web.StreamResponse:
    """Everything no endpoint took: 405 on a known path with another method, else 404."""
    for pattern, allowed in _KNOWN_PATHS:
        if pattern.fullmatch(request.path):
            raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound


async def answer_unrouted(request: web.Request) -> web.StreamResponse:
    """The guarded JSON answer to a target the router cannot place (``CONNECT``, ``OPTIONS *``)."""
    return await _boundary(request, _unrouted)


# -- the boundary: guards and error mapping ----------------------------------


async def _boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the guards, then the handler; turn every expected failure into a JSON error."""
    try:
        _check_guards(request)
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except UnknownProfileError as exc:
        return error_response(_unknown_profile(exc.profile, request.app[SERVICE]))
    except TokenUnavailableError as exc:
        request.app[SERVICE].metrics.count_request(exc.profile, "unavailable")
        return error_response(
            ApiError(503, exc.code, str(exc), profile=exc.profile, retry_after=exc.retry_after)
        )
    except web.HTTPMethodNotAllowed as exc:
        allow = ", ".join(sorted(exc.allowed_methods))
        return error_response(
            ApiError(405, "method_not_allowed", "method not allowed", headers={hdrs.ALLOW: allow})
        )
    except web.HTTPNotFound:
        return error_response(ApiError(404, "not_found", "no such endpoint"))


def _unknown_profile(asked: str, service: TokenService) -> ApiError:
    """404 naming the profile asked for (only if it is a valid name) and the configured ones.

    Answered only after the guards passed: a caller that may read tokens may
    also know which profiles exist; the guard answers reveal nothing of them.
    """
    shown = f"{asked!r}" if _PROFILE_NAME.fullmatch(asked) else "(not a valid profile name)"
    configured = ", ".join(sorted(service.refreshers)) or "none"
    return ApiError(404, "unknown_profile", f"unknown profile {shown}; configured: {configured}")


def _check_guards(request: web.Request) -> None:
    """Refuse anything that is not a deliberate call from a local process."""
    if request.headers.getall(GUARD_HEADER, []) != ["1"]:
        refresher = _known_refresher(request)
        raise ApiError(
            400,
            "missing_header",
            f"the header '{GUARD_HEADER}: 1' is required",
            profile=refresher.name if refresher is not None else None,
        )
    if any(name in request.headers for name in _PROXY_HEADERS) or not request.raw_path.startswith(
        "/"
    ):
        # An absolute-form target (GET http://host/...) is what proxies send;
        # RFC 9112 would have its host override Host, so refuse it outright.
        raise _forbidden(request, "proxied requests are refused")
    sock = _socket(request)
    unix = sock.family == socket.AF_UNIX
    hosts = request.headers.getall(hdrs.HOST, [])
    host = hosts[0] if len(hosts) == 1 else None
    if len(hosts) > 1 or not (
        _host_allowed(host, unix=unix) or _is_listen_host(host, request.app[SERVER])
    ):
        raise _forbidden(request, "the Host header must name a loopback address")
    if unix:
        _check_peer(request, sock)


def _socket(request: web.Request) -> _PeerSocket:
    transport = request.transport
    sock: _PeerSocket | None = transport.get_extra_info("socket") if transport else None
    if sock is None:
        # The connection is gone, so nobody can read the answer; still fail closed.
        raise _forbidden(request, "connection closed")
    return sock


# Callers send the same few Host values over and over; the bound keeps junk from piling up.
@functools.lru_cache(maxsize=64)
def _host_allowed(host: str | None, *, unix: bool) -> bool:
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


def _check_peer(request: web.Request, sock: _PeerSocket) -> None:
    """Refuse a Unix-socket peer whose uid is not allowed (profile list, else server list)."""
    allowed = _allowed_uids(request)
    if not allowed:
        return
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        raise _forbidden(request, "peer credentials are not available on this platform")
    try:
        _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, peercred, _UCRED.size))
    except OSError:
        raise _forbidden(request, "peer credentials are not available") from None
    if uid not in allowed:
        raise _forbidden(request, "this user may not read tokens")


def _allowed_uids(request: web.Request) -> tuple[int, ...]:
    """The profile's own list when it has one, else the server's (empty: no restriction).

    An empty per-profile list inherits rather than opens: copying the example
    config's ``allow_uids = []`` must not silently lift a server-wide list.
    """
    refresher = _known_refresher(request)
    if refresher is not None and refresher.profile.allow_uids:
        return refresher.profile.allow_uids
    return request.app[SERVER].allow_uids


def _known_refresher(request: web.Request) -> ProfileRefresher | None:
    """The refresher of the profile named in the path (or acted for), when it is configured."""
    name = request.match_info.get("profile") or request.get(GUARDED_PROFILE)
    if name is None:
        return None
    try:
        return request.app[SERVICE].refresher_for(name)
    except UnknownProfileError:
        return None


def _forbidden(request: web.Request, reason: str) -> ApiError:
    """A 403, counted as ``denied`` when the path names a configured profile."""
    refresher = _known_refresher(request)
    name = refresher.name if refresher is not None else None
    if name is not None:
        request.app[SERVICE].metrics.count_request(name, "denied")
    log.info("request.denied", extra={"profile": name, "reason": reason})
    return ApiError(403, "forbidden", reason, profile=name)


# -- handlers ---------------------------------------------------------------


async def _get_token(request: web.Request) -> web.Response:
    """``GET /v1/token/{profile}[?min_ttl=SECONDS]``."""
    service = request.app[SERVICE]
    refresher = service.refresher_for(request.match_info["profile"])
    min_ttl = _min_ttl(request, refresher)
    served = refresher.serve_now(min_ttl)
    if served is None:
        served = await refresher.get(min_ttl)
    return _token_response(service, refresher.name, served, encoded=request.app[ENCODED])


async def _invalidate(request: web.Request) -> web.Response:
    """``POST /v1/token/{profile}/invalidate``: drop the reported token if still current."""
    service = request.app[SERVICE]
    refresher = service.refresher_for(request.match_info["profile"])
    reported = _reported_fingerprint(await _read_body(request, refresher.name), refresher.name)
    result, served = await refresher.invalidate(reported)
    return _token_response(service, refresher.name, served, result=result)


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


async def _read_body(request: web.Request, profile: str) -> bytes:
    """The request body, refusing more than :data:`MAX_BODY` bytes without buffering them."""
    too_big = _bad_request(f"the body must not exceed {MAX_BODY} bytes", profile)
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise too_big
    body = bytearray()
    try:
        # The body gets as long as a head: a half-sent body cannot hold the connection.
        async with asyncio.timeout(request.app[SERVER].header_timeout):
            async for chunk in request.content.iter_any():
                body += chunk
                if len(body) > MAX_BODY:
                    raise too_big
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


def _token_response(
    service: TokenService,
    profile: str,
    served: ServedToken,
    *,
    result: str | None = None,
    encoded: EncodedBodies | None = None,
) -> web.Response:
    """The 200 answer of both endpoints (invalidate adds its ``result``); counts it.

    The encoded body of a GET is kept per profile and reused while the token,
    its whole seconds left and its stale flag are the same: thousands of
    callers a second then cost one encoding per second.
    """
    token = served.token
    service.metrics.count_request(profile, "stale" if served.stale else "served")
    expires_in = token.expires_in(service.clock.monotonic())
    key = (token, expires_in, served.stale)
    if encoded is not None:
        cached = encoded.get(profile)
        if cached is not None and cached[0] == key:
            return bytes_response(cached[1], status=200)
    body = {
        "access_token": token.value,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "expires_at": math.floor(token.expires_at_wall),
        "scope": token.scope,
        "profile": profile,
        "stale": served.stale,
    }
    if result is not None:
        body["result"] = result
    data = orjson.dumps(body)
    if encoded is not None:
        encoded[profile] = (key, data)
    return bytes_response(data, status=200)


def _bad_request(message: str, profile: str) -> ApiError:
    return ApiError(400, "bad_request", message, profile=profile)
