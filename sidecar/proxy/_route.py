"""The proxy route: ``ANY /v1/proxy/{upstream}/{path}``, from guards to the last body chunk.

A request passes the token API's guards, names a configured upstream and a
path that stays inside its ``base_url``; then it gets a servable token (fail
closed: no token, no request), goes out with the token in place of any
credential the caller sent, and its answer streams back chunk by chunk.
After an upstream 401 the replay rule of :mod:`sidecar.proxy._replay`
decides whether it goes out once more. Every answer the sidecar makes itself
carries ``Token-Sidecar-Error`` and DESIGN's JSON error body.

An upstream with ``exchange = "PROFILE"`` carries per-user tokens: the
caller names its user with ``Token-Sidecar-Subject`` (the user's token,
never forwarded: the header rules strip every ``Token-Sidecar*``), and the
request goes out with that user's exchanged token from the
:class:`~sidecar.exchange.ExchangeService` (its cache, single flight and
negative cache apply). Its 401 rule drops that user's cached token and
exchanges once more.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from sidecar.config import UPSTREAM_NAME_PATTERN, UpstreamConfig
from sidecar.deadlines import Deadlines, MovingTimeout
from sidecar.errors import ApiError, ExchangeError, TokenUnavailableError, UnknownProfileError
from sidecar.listeners import cancel_on_disconnect
from sidecar.logs import ACCESS_UPSTREAM
from sidecar.proxy._client import UpstreamClient
from sidecar.proxy._headers import (
    RETRIED_HEADER,
    STALE_HEADER,
    dropped_from_answer,
    upstream_headers,
)
from sidecar.proxy._paths import PathRefusedError, check_path, split_target
from sidecar.proxy._replay import NO_BODY, RequestBody, read_body, retry_result
from sidecar.proxy._upstreams import UpstreamInstruments, Upstreams
from sidecar.responses import ERROR_HEADER, error_response, exchange_refusal
from sidecar.token import ServedToken

#: The token API's guards: raise ApiError to refuse a request.
Guard = Callable[[web.Request], None]
#: Where a route that acts for a profile leaves its name for the guards (``allow_uids``).
GUARDED_PROFILE: Final = web.RequestKey("guarded_profile", str)
#: TRACE would echo the injected credential back to the caller.
_REFUSED_METHODS: Final = frozenset({hdrs.METH_TRACE, hdrs.METH_CONNECT})
_ALLOWED_METHODS: Final = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
_UPSTREAM_NAME = re.compile(UPSTREAM_NAME_PATTERN)
#: The request header that carries the user's token to an ``exchange`` upstream.
SUBJECT_HEADER: Final = "Token-Sidecar-Subject"
_BEARER = "bearer"


class Credential(Protocol):
    """What a request goes out with: a profile's token, or a user's exchanged token."""

    @property
    def value(self) -> str: ...
    @property
    def token_type(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...


class Sending(NamedTuple):
    """The credential a request is sent with, and whether it is a stale one."""

    token: Credential
    stale: bool


def proxy_error_response(exc: ApiError) -> web.Response:
    """DESIGN's JSON error body, marked as the sidecar's own answer."""
    response = error_response(exc)
    response.headers[ERROR_HEADER] = exc.code
    return response


class ProxyRoute:
    """The handler of ``/v1/proxy/{tail}``; holds the daemon's :class:`Upstreams`."""

    def __init__(self, upstreams: Upstreams, guard: Guard) -> None:
        self._upstreams = upstreams
        self._guard = guard

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        name, tail = split_target(request.raw_path)
        client = self._upstreams.client(name)
        instruments = self._upstreams.instruments(name) if client is not None else None
        if client is not None:
            request[ACCESS_UPSTREAM] = name
            request[GUARDED_PROFILE] = client.config.profile
        try:
            self._guard(request)
            if client is None or instruments is None:
                raise self._unknown(name)
            target = _admitted(request.method, tail, client.config)
            return await self._forward(request, client, instruments, target, started)
        except ApiError as exc:
            return self._refused(exc, instruments)
        except ExchangeError as exc:
            return self._refused(exchange_refusal(exc), instruments)
        except TokenUnavailableError as exc:
            return self._refused(
                ApiError(503, exc.code, str(exc), profile=exc.profile, retry_after=exc.retry_after),
                instruments,
            )
        except UnknownProfileError as exc:  # a reload removed the profile a moment ago
            return self._refused(
                ApiError(
                    503,
                    "token_unavailable",
                    "the upstream's profile is being reloaded",
                    profile=exc.profile,
                    retry_after=1.0,
                ),
                instruments,
            )

    def _unknown(self, name: str) -> ApiError:
        shown = f"{name!r}" if _UPSTREAM_NAME.fullmatch(name) else "(not a valid upstream name)"
        configured = ", ".join(self._upstreams.names) or "none"
        return ApiError(
            404, "unknown_upstream", f"unknown upstream {shown}; configured: {configured}"
        )

    @staticmethod
    def _refused(exc: ApiError, instruments: UpstreamInstruments | None) -> web.Response:
        if instruments is not None:
            instruments.refused(exc)
        return proxy_error_response(exc)

    async def _forward(
        self,
        request: web.Request,
        client: UpstreamClient,
        instruments: UpstreamInstruments,
        target: str,
        started: float,
    ) -> web.StreamResponse:
        config = client.config
        subject = _subject(request, config) if config.exchange else None
        first = await self._credential(config, subject)
        # From here on the request holds upstream resources: a caller that goes
        # away cancels it rather than leaving it to run until a timeout.
        cancel_on_disconnect(request)
        body = await _caller_body(request, config) if request.body_exists else NO_BODY
        headers = upstream_headers(request.headers, config)
        method = request.method
        instruments.started()
        upstream: aiohttp.ClientResponse | None = None
        try:
            with client.in_use():
                sending = first
                upstream = await client.send(method, target, _with(headers, config, sending), body)
                retried = False
                if upstream.status == 401 and config.retry_on_401:
                    if subject is None:
                        again = await self._after_401(config, instruments, sending.token, body)
                    else:
                        again = await self._after_401_for_user(
                            config, instruments, sending.token, subject, body
                        )
                    if again is not None:
                        upstream.release()  # its connection goes back to the pool
                        client.finish(upstream)
                        sending, retried = again, True
                        upstream = await client.send(
                            method, target, _with(headers, config, sending), body
                        )
                if upstream.status == 101:
                    raise ApiError(
                        502,
                        "upstream_unreachable",
                        f"upstream {config.name!r} switched protocols, which is not proxied",
                        profile=config.profile,
                    )
                instruments.answered(upstream.status, time.monotonic() - started)
                return await _stream_back(
                    request,
                    upstream,
                    client.idle_deadlines,
                    instruments,
                    stale=sending.stale,
                    retried=retried,
                )
        finally:
            if upstream is not None:
                client.finish(upstream)
            instruments.finished()

    async def _credential(self, config: UpstreamConfig, subject: str | None) -> Sending:
        """The profile's servable token, or (``exchange`` upstreams) the user's exchanged one.

        Raises:
            TokenUnavailableError, ExchangeError: no token: the request is not sent.
        """
        if subject is None:
            refresher = self._upstreams.refresher_for(config.profile)
            served = refresher.serve_now() or await refresher.get()
            return Sending(served.token, served.stale)
        answer = await self._upstreams.exchanges.exchange(config.profile, subject)
        return Sending(answer.token, stale=False)

    async def _after_401(
        self,
        config: UpstreamConfig,
        instruments: UpstreamInstruments,
        sent: Credential,
        body: RequestBody,
    ) -> Sending | None:
        """The token to send once more after a 401 for ``sent``, or None: pass the 401 back.

        A rejected current token is reported (the throttled, single-flight
        invalidate path); a token another request already had replaced is not
        reported again, and the current one is used.
        """
        refresher = self._upstreams.refresher_for(config.profile)
        current = refresher.token
        offered: ServedToken | None = None
        try:
            if current is not None and current.fingerprint == sent.fingerprint:
                if body.replayable:
                    _, offered = await refresher.invalidate(sent.fingerprint)
                else:
                    refresher.report(sent.fingerprint)  # the next caller gets a new token
            elif body.replayable:
                offered = refresher.serve_now() or await refresher.get()
        except TokenUnavailableError:
            offered = None
        result = retry_result(
            replayable=body.replayable,
            sent=sent.fingerprint,
            offered=offered.token.fingerprint if offered is not None else None,
        )
        instruments.retry(result, sent.fingerprint)
        if result != "retried" or offered is None:
            return None
        return Sending(offered.token, offered.stale)

    async def _after_401_for_user(
        self,
        config: UpstreamConfig,
        instruments: UpstreamInstruments,
        sent: Credential,
        subject: str,
        body: RequestBody,
    ) -> Sending | None:
        """The 401 rule of an ``exchange`` upstream: drop the user's token, exchange once more.

        The user's cached token is dropped only while it is still the one
        sent (a concurrent request may already have replaced it); then, for a
        replayable body, the user's token is exchanged again (or the newer
        one served) and the request goes out once more. A refused exchange
        passes the upstream's 401 back.
        """
        exchanges = self._upstreams.exchanges
        exchanges.drop(config.profile, subject, fingerprint=sent.fingerprint)
        offered: Credential | None = None
        if body.replayable:
            try:
                offered = (await exchanges.exchange(config.profile, subject)).token
            except ExchangeError:
                offered = None
        result = retry_result(
            replayable=body.replayable,
            sent=sent.fingerprint,
            offered=offered.fingerprint if offered is not None else None,
        )
        instruments.retry(result, sent.fingerprint)
        if result != "retried" or offered is None:
            return None
        return Sending(offered, stale=False)


def _subject(request: web.Request, config: UpstreamConfig) -> str:
    """The user's token from ``Token-Sidecar-Subject`` (a ``Bearer`` prefix is allowed)."""
    values = request.headers.getall(SUBJECT_HEADER, ())
    if len(values) > 1:
        raise ApiError(
            400,
            "bad_request",
            f"send one {SUBJECT_HEADER} header, not {len(values)}",
            profile=config.profile,
        )
    value = values[0].strip() if values else ""
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == _BEARER:
        value = rest.strip()
    if not value:
        raise ApiError(
            400,
            "missing_subject",
            f"upstream {config.name!r} sends per-user tokens: "
            f"the header {SUBJECT_HEADER} must carry the user's token",
            profile=config.profile,
        )
    return value


def _admitted(method: str, tail: str, config: UpstreamConfig) -> str:
    """The target (path and query) to send, once the method and the path are allowed."""
    if method in _REFUSED_METHODS:
        raise ApiError(
            405,
            "method_not_allowed",
            f"{method} is not proxied",
            profile=config.profile,
            headers={hdrs.ALLOW: _ALLOWED_METHODS},
        )
    try:
        return check_path(tail)
    except PathRefusedError as exc:
        raise ApiError(400, "bad_request", str(exc), profile=config.profile) from None


async def _caller_body(request: web.Request, config: UpstreamConfig) -> RequestBody:
    try:
        return await read_body(
            request.content,
            exists=request.body_exists,
            length=request.content_length,
            limit=config.retry_body_limit if config.retry_on_401 else 0,
            idle_timeout=config.idle_timeout,
        )
    except TimeoutError:
        raise ApiError(
            400,
            "bad_request",
            f"the request body did not arrive within idle_timeout ({config.idle_timeout:g}s)",
            profile=config.profile,
        ) from None


def _with(headers: CIMultiDict[str], config: UpstreamConfig, sending: Sending) -> CIMultiDict[str]:
    """``headers`` carrying ``sending``'s token: the credential header is replaced, never added.

    aiohttp copies the headers it is given, so one dictionary serves a retry too.
    """
    token = sending.token
    headers[config.header] = f"{token.token_type} {token.value}"
    return headers


def _answer_to(
    upstream: aiohttp.ClientResponse, *, stale: bool, retried: bool
) -> web.StreamResponse:
    """The caller's answer: the upstream's status and headers, less those that stay behind."""
    answer = web.StreamResponse(
        status=upstream.status, reason=upstream.reason, headers=upstream.headers
    )
    for name in dropped_from_answer(upstream.headers):
        answer.headers.popall(name, None)
    if stale:
        answer.headers[STALE_HEADER] = "1"
    if retried:
        answer.headers[RETRIED_HEADER] = "1"
    return answer


async def _stream_back(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    idle: Deadlines[MovingTimeout],
    instruments: UpstreamInstruments,
    *,
    stale: bool,
    retried: bool,
) -> web.StreamResponse:
    """Pass the upstream's answer on, each chunk as it arrives; cut the connection if it breaks."""
    answer = _answer_to(upstream, stale=stale, retried=retried)
    broke: str | None = None
    try:
        await answer.prepare(request)
        content = upstream.content
        with MovingTimeout() as timeout:
            # at_eof: the whole body has been passed on (no read just to learn that).
            while not content.at_eof():
                timeout.restart(idle)
                try:
                    chunk = await content.readany()
                except aiohttp.ClientError as exc:
                    broke = f"the upstream's body broke off ({type(exc).__name__})"
                    break
                if not chunk:
                    break
                await answer.write(chunk)
    except TimeoutError:
        broke = f"no body data within idle_timeout ({idle.seconds:g}s)"
    except ConnectionError:  # the caller went away: nobody is left to answer
        upstream.close()
        return answer
    if broke is not None:
        instruments.broke_off(broke)
        upstream.close()
        # The caller must see an incomplete body, not a complete short one:
        # close without the final chunk (or short of Content-Length).
        if request.transport is not None:
            request.transport.close()
        return answer
    upstream.release()
    await answer.write_eof()
    return answer
