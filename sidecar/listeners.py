"""Listeners: the HTTP edge of both ports, bounding what an idle, slow or hostile client can hold.

aiohttp's web server closes idle keep-alive connections (``keepalive_timeout``)
but has no deadline for a request's head, no cap on connections, and answers a
malformed request with a text page that echoes the request bytes after logging
them with a traceback. This module adds what is missing, in three small
subclasses wired in by :class:`LimitedRunner` (used instead of ``web.AppRunner``):

- :class:`LimitedServer` (a ``web.Server``) keeps one pool of connections per
  listener (TCP or Unix socket) in accept order. At ``max_connections`` it
  closes the oldest connection that has no request in progress (idle or
  half-sent head) to admit the new one, or failing that the oldest whose
  request body is still arriving (a trickled upload holds a slot only while
  there is no one else to serve); when every connection has a whole request
  in progress, the new one is closed.
- :class:`GuardedRequestHandler` (a ``RequestHandler``): a complete request
  line and headers must arrive within ``header_timeout`` of the accept, or of
  the first byte after a response. It also bounds the bytes a request head may
  take (:data:`MAX_HEAD_BYTES`), so many half-sent heads cannot exhaust memory.
  The deadlines live in one :class:`~sidecar.deadlines.Deadlines` per listener
  server: a dictionary in deadline order and one timer for the earliest, so a
  request costs two dictionary operations instead of arming and cancelling a timer.
  A malformed request gets a fixed JSON 400 and one throttled ``warning``
  without the raw bytes. A route may ask (:func:`cancel_on_disconnect`) that
  its handler be cancelled when the caller goes away, so a proxied request
  stops holding its upstream connection at once.
- :class:`ThrottledLog` writes an event at most once a second and reports how
  many it left out.

Time here is the event loop's own clock: these are network deadlines of the
real loop, as with aiohttp's keep-alive timer, not refresh policy.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from sidecar.deadlines import Deadlines

log = logging.getLogger("sidecar.listeners")

#: Largest request line plus headers a connection may send before its request starts.
MAX_HEAD_BYTES: Final = 16 * 1024
#: Descriptors kept out of the connection budget: IdP and Redis sockets, files, the loop.
RESERVED_DESCRIPTORS: Final = 64
#: Connections one accept burst may admit before closed ones release their descriptors.
ACCEPT_BURST: Final = 128

#: Builds the JSON answer to a request that failed below the app: (status) -> response.
ErrorAnswer = Callable[[int], web.StreamResponse]
Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]
#: Answers a request whose target the app's router cannot place.
AppHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ListenerLimits:
    """What one listener allows: connections, head deadline, keep-alive idle time."""

    max_connections: int = 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0

    def within_descriptors(self, soft_limit: int, listeners: int) -> ListenerLimits:
        """These limits, with ``max_connections`` lowered to fit ``soft_limit`` descriptors."""
        budget = (soft_limit - RESERVED_DESCRIPTORS) // max(1, listeners) - ACCEPT_BURST
        fitted = max(1, min(self.max_connections, budget))
        return ListenerLimits(fitted, self.header_timeout, self.keepalive_timeout)


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns ``(before, after)``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard in (resource.RLIM_INFINITY, soft):
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # a sandbox may refuse; the budget then uses the old limit
        return soft, soft
    return soft, hard


class ThrottledLog:
    """One log event at most once per ``interval`` seconds, with the count of those left out."""

    def __init__(
        self,
        logger: logging.Logger,
        event: str,
        *,
        level: int = logging.WARNING,
        interval: float = 1.0,
        now: Callable[[], float],
    ) -> None:
        self._logger = logger
        self._event = event
        self._level = level
        self._interval = interval
        self._now = now
        self._next_at = float("-inf")
        self._suppressed = 0

    def emit(self, fields: dict[str, Any], *, exc_info: BaseException | None = None) -> None:
        """Log ``fields`` now, or count the event when one was logged less than a second ago."""
        now = self._now()
        if now < self._next_at:
            self._suppressed += 1
            return
        self._next_at = now + self._interval
        extra = {**fields, "suppressed": self._suppressed}
        self._suppressed = 0
        self._logger.log(self._level, self._event, extra=extra, exc_info=exc_info)


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True, slots=True)
class Peer:
    """What the guards need of a connection's other end, read once when it connects.

    ``uid`` is the peer's user id on a Unix socket (``SO_PEERCRED``), ``None``
    over TCP or where the platform cannot tell.
    """

    unix: bool
    uid: int | None = None


def peer_of(transport: asyncio.BaseTransport | None) -> Peer | None:
    """The :class:`Peer` of ``transport``'s socket; ``None`` once the connection is gone."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return None
    if sock.family != socket.AF_UNIX:
        return Peer(unix=False)
    peercred = getattr(socket, "SO_PEERCRED", None)
    if peercred is None:
        return Peer(unix=True)
    try:
        _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, peercred, _UCRED.size))
    except OSError:
        return Peer(unix=True)
    return Peer(unix=True, uid=uid)


# aiohttp's own steps, called directly on the two per-request paths (no super object each time).
_DATA_RECEIVED: Final = RequestHandler.data_received
_HANDLE_REQUEST: Final = RequestHandler._handle_request  # noqa: SLF001 - the step we extend
_RESUME_READING: Final = RequestHandler.resume_reading


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with a head deadline, a head size bound and a quiet 400.

    A connection is ``busy`` from the moment its request is handed to the app
    until the answer is written; otherwise it is waiting for a head (idle or
    half-sent) and may be closed to make room. A busy connection whose request
    body has not all arrived may be closed too, after those
    (:attr:`body_pending`). ``peer`` is read once, when the connection is
    made: the guards need it on every request.
    """

    def __init__(self, manager: LimitedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limited = manager
        self._deadlines = manager.head_deadlines
        self.busy = False
        self.peer: Peer | None = None
        self.cancel_on_disconnect = False
        self._request: BaseRequest | None = None
        self._head_bytes = 0
        self._head_pending = False
        self._head_complete = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peer = peer_of(transport)
        self._head_pending = True
        self._deadlines.start(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_pending:
            self._head_pending = False
            self._deadlines.stop(self)
        self._limited.forget(self)
        handler = self._task_handler if self.busy and self.cancel_on_disconnect else None
        super().connection_lost(exc)
        if handler is not None:
            handler.cancel()

    def resume_reading(self, resume_parser: bool = True) -> None:  # noqa: FBT002 - aiohttp's
        # aiohttp's request body calls this on every read that leaves its buffer
        # below the low-water mark, paused or not. With nothing paused (neither
        # the body's flow control nor the full message queue) it would only feed
        # the parser an empty chunk and find the transport reading: skip that on
        # the exchange's one read per request.
        # (``_buffer_paused`` is recent aiohttp's; without it, always resume.)
        if self._reading_paused or getattr(self, "_buffer_paused", True):
            _RESUME_READING(self, resume_parser)

    @property
    def body_pending(self) -> bool:
        """Whether the request in progress is still waiting for part of its body."""
        return self.busy and self._request is not None and not self._request.content.is_eof()

    def data_received(self, data: bytes) -> None:
        if self.busy or self._head_complete:
            _DATA_RECEIVED(self, data)  # a request body
            return
        heads = self._request_count
        _DATA_RECEIVED(self, data)
        if self._request_count != heads:
            # The head is whole (aiohttp counts parsed requests); what follows is
            # its body, which may arrive before the request's task starts. A head
            # that came whole in one read never needed a deadline.
            self._head_complete = True
            return
        # Part of a new request head: its deadline starts with the first of its bytes (now).
        if not self._head_pending:
            self._head_pending = True
            self._deadlines.start(self)
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self.force_close()

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: Handler,
    ) -> tuple[web.StreamResponse, bool]:
        # aiohttp's per-request step: a complete head arrived and goes to the app.
        self.busy = True
        self.cancel_on_disconnect = False
        self._request = request
        self._head_bytes = 0
        if self._head_pending:
            self._head_pending = False
            self._deadlines.stop(self)
        if not request.raw_path.startswith("/"):
            request_handler = self._limited.answering_unrouted(request_handler)
        try:
            return await _HANDLE_REQUEST(self, request, start_time, request_handler)
        finally:
            self.busy = False
            self._request = None
            self._head_complete = bool(self._messages)  # a pipelined request is queued

    def head_timed_out(self) -> None:
        """The head deadline passed: close, unless a request started meanwhile."""
        self._head_pending = False
        if not self.busy:
            self.force_close()

    def log_exception(self, *args: Any, **kwargs: Any) -> None:  # noqa: ARG002 - fixed text
        """aiohttp's own failures after an answer: the throttled crash log, not a flood."""
        exc = kwargs.get("exc_info")
        error = type(exc).__name__ if isinstance(exc, BaseException) else None
        self._limited.crash_log.emit(
            {"listener": self._limited.name, "error": error},
            exc_info=exc if isinstance(exc, BaseException) else None,
        )

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,  # noqa: ARG002 - aiohttp's text holds the raw request bytes
    ) -> web.StreamResponse:
        """A fixed JSON answer; one throttled log line with the error's class, never its text."""
        fields = {"listener": self._limited.name, "status": status, "error": type(exc).__name__}
        if status >= 500:  # a bug in a handler: keep the traceback
            self._limited.crash_log.emit(fields, exc_info=exc)
        else:
            self._limited.bad_request_log.emit(fields)
        if request.writer.output_size > 0:
            # Part of an answer went out already: the connection cannot carry another.
            raise ConnectionError("response already started")
        answer = self._limited.error_answer(status)
        answer.force_close()
        return answer


class LimitedServer(web.Server):
    """``web.Server`` with per-listener connection pools and guarded connections."""

    def __init__(
        self,
        handler: Handler,
        *,
        name: str,
        limits: ListenerLimits,
        error_answer: ErrorAnswer,
        unrouted: AppHandler | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self.name = name
        self.limits = limits
        self.error_answer = error_answer
        self._unrouted = unrouted
        self._handler_kwargs = {k: v for k, v in kwargs.items() if k not in _SERVER_ONLY}
        # One pool per listener (TCP, Unix socket), each in accept order.
        self._pools: dict[int, dict[GuardedRequestHandler, None]] = {}
        now = asyncio.get_running_loop().time
        self.head_deadlines: Deadlines[GuardedRequestHandler] = Deadlines(
            limits.header_timeout, GuardedRequestHandler.head_timed_out
        )
        self.bad_request_log = ThrottledLog(log, "http.bad_request", now=now)
        self.crash_log = ThrottledLog(log, "http.handler_failed", level=logging.ERROR, now=now)

    def __call__(self) -> GuardedRequestHandler:
        return GuardedRequestHandler(self, loop=asyncio.get_running_loop(), **self._handler_kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if not isinstance(handler, GuardedRequestHandler):  # pragma: no cover - built by __call__
            return
        sock = transport.get_extra_info("socket")
        pool = self._pools.setdefault(sock.family if sock is not None else socket.AF_INET, {})
        if len(pool) >= self.limits.max_connections and not self._evict_oldest_idle(pool):
            handler.force_close()  # every connection has a request in progress
            return
        pool[handler] = None

    async def shutdown(self, timeout: float | None = None) -> None:
        await super().shutdown(timeout)
        self.head_deadlines.close()

    def forget(self, handler: GuardedRequestHandler) -> None:
        """Drop a closed connection from its pool."""
        for pool in self._pools.values():
            pool.pop(handler, None)

    def open_connections(self) -> int:
        """Connections currently counted against the pools, for tests and status."""
        return sum(len(pool) for pool in self._pools.values())

    @staticmethod
    def _evict_oldest_idle(pool: dict[GuardedRequestHandler, None]) -> bool:
        """Close the oldest connection waiting for a head, else for a request body."""
        for waiting in (_waits_for_head, _waits_for_body):
            for oldest in pool:
                if waiting(oldest):
                    del pool[oldest]
                    oldest.force_close()
                    return True
        return False

    def answering_unrouted(self, handler: Handler) -> Handler:
        """``handler``, with the JSON answer for a target the router cannot place.

        Used for targets that are not origin-form (CONNECT's authority,
        ``OPTIONS *``, an absolute URL): for those the router raises before any
        route runs, and aiohttp would answer with a text page.
        """
        unrouted = self._unrouted
        if unrouted is None:
            return handler

        async def answer(request: BaseRequest) -> web.StreamResponse:
            try:
                return await handler(request)
            except web.HTTPException:
                if not isinstance(request, web.Request):  # pragma: no cover - the app's requests
                    raise
                return await unrouted(request)

        return answer


def _waits_for_head(handler: GuardedRequestHandler) -> bool:
    return not handler.busy


def _waits_for_body(handler: GuardedRequestHandler) -> bool:
    return handler.body_pending


def cancel_on_disconnect(request: web.BaseRequest) -> None:
    """Cancel ``request``'s handler if its caller goes away before the answer is done.

    For handlers that hold something on the caller's behalf (a proxied
    request's upstream connection); not for ones that wait on work shared
    with other callers, which a cancellation could cut short for all of them.
    """
    protocol = request.protocol
    if isinstance(protocol, GuardedRequestHandler):
        protocol.cancel_on_disconnect = True


# web.Server's own arguments; everything else is passed on to each RequestHandler.
_SERVER_ONLY = frozenset({"request_factory", "handler_cancellation", "loop"})


class LimitedRunner(web.AppRunner):
    """``web.AppRunner`` serving its app through a :class:`LimitedServer`."""

    def __init__(
        self,
        app: web.Application,
        *,
        name: str,
        limits: ListenerLimits,
        error_answer: ErrorAnswer,
        unrouted: AppHandler | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("max_headers", 32)
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self._limited_args: dict[str, Any] = {
            "name": name,
            "limits": limits,
            "error_answer": error_answer,
            "unrouted": unrouted,
            "keepalive_timeout": limits.keepalive_timeout,
            **{k: v for k, v in kwargs.items() if k not in _RUNNER_ONLY},
        }

    async def _make_server(self) -> web.Server:
        # The app's own server runs the app's startup and freezes it; this one
        # takes its handler and request factory and serves them with limits.
        plain = await super()._make_server()
        return LimitedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            **self._limited_args,
        )


# web.AppRunner's own arguments.
_RUNNER_ONLY = frozenset({"shutdown_timeout", "handle_signals"})
