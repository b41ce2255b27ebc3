"""UpstreamClient: one pooled HTTP client per upstream, and the one place its errors are mapped.

Each upstream gets its own ``ClientSession`` on a bounded connector: TLS with
the system store plus ``ca_file`` (and an optional client certificate), the
connect-time address check of :class:`~sidecar.proxy._addresses.GuardedResolver`
unless ``allow_private``, no cookies, no proxy from the environment, no
redirects followed and no decompression (bodies pass through as sent).

Timeouts: ``connect_timeout`` covers DNS, the wait for a pooled connection,
TCP and TLS; ``response_timeout`` runs from the end of the request body until
the status line and headers; while a request body streams, no chunk may take
longer than ``idle_timeout``. One :class:`~sidecar.deadlines.MovingTimeout`
per request is moved along as the request advances (:class:`ResponseDeadline`),
on the client's own :class:`~sidecar.deadlines.Deadlines` of each length; the client's
connector tells it when the connection is ready, the moment the request line
and headers go out. Reading the answer is bounded per chunk by the caller of
:meth:`UpstreamClient.send`.

:func:`upstream_errors` turns every aiohttp, TLS and timeout failure into the
:class:`~sidecar.errors.ApiError` of DESIGN (502 ``upstream_unreachable``,
``upstream_tls``, ``upstream_denied``; 504 ``upstream_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from multidict import CIMultiDict
from yarl import URL

from sidecar.config import UpstreamConfig
from sidecar.deadlines import Deadlines, MovingTimeout, timeouts
from sidecar.errors import ApiError
from sidecar.files import TLS_FILE_LIMIT, check_small_file
from sidecar.proxy._addresses import AddressDeniedError, GuardedResolver
from sidecar.proxy._replay import RequestBody

#: Connections one upstream may hold open (streams included); more callers wait their turn.
POOL_LIMIT: Final = 256
#: Headers aiohttp would invent; a proxy sends only what the caller sent.
_NO_AUTO_HEADERS: Final = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})

ResolverFactory = Callable[[], AbstractResolver]


class ResponseDeadline(MovingTimeout):
    """The deadline of one upstream request, moved along as it advances.

    Before the request is written only ``connect_timeout`` applies (aiohttp's);
    while a body streams each chunk allows ``idle_timeout`` more; once the body
    is complete, ``response_timeout`` runs until the answer's headers. It is
    the timeout of the block that waits for those headers: a body still going
    out after that block no longer moves it.
    """

    __slots__ = ("_idle", "_response", "_streamed", "phase")

    def __init__(
        self,
        idle: Deadlines[MovingTimeout],
        response: Deadlines[MovingTimeout],
        *,
        streamed: bool,
    ) -> None:
        MovingTimeout.__init__(self)  # one per request: no super object
        self._idle = idle
        self._response = response
        self._streamed = streamed
        #: What was being waited for: "connect", "request_body" or "response".
        self.phase = "connect"

    def connected(self) -> None:
        """The connection is ready: the request line and headers go out now."""
        if self._streamed:
            self.chunk_moved()
        else:
            self.body_sent()

    def chunk_moved(self) -> None:
        self.phase = "request_body"
        self.restart(self._idle)

    def body_sent(self) -> None:
        self.phase = "response"
        self.restart(self._response)


async def _moving(chunks: AsyncIterator[bytes], deadline: ResponseDeadline) -> AsyncIterator[bytes]:
    """``chunks``, telling ``deadline`` of each one and of the end of the body."""
    async for chunk in chunks:
        deadline.chunk_moved()
        yield chunk
    deadline.body_sent()


#: The deadline of the upstream request the current task is sending, for the connector.
_SENDING: ContextVar[ResponseDeadline | None] = ContextVar("sending", default=None)


class _Connector(aiohttp.TCPConnector):
    """A TCPConnector that tells the request being sent when its connection is ready.

    aiohttp writes the request line and headers right after :meth:`connect`
    returns, with nothing awaited in between: the same moment a trace
    config's ``on_request_headers_sent`` reports, without the trace objects
    aiohttp builds for every request when a trace config is set.
    """

    async def connect(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> Connection:
        connection = await aiohttp.TCPConnector.connect(self, req, traces, timeout)
        deadline = _SENDING.get()
        if deadline is not None:
            deadline.connected()
        return connection


class Usage:
    """How many requests a client has in progress (``with usage:`` counts one); a wait for none."""

    __slots__ = ("_none_left", "count")

    def __init__(self) -> None:
        self.count = 0
        self._none_left: asyncio.Event | None = None  # made by the first none_left()

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *_exc: object) -> None:
        self.count -= 1
        if self.count == 0 and self._none_left is not None:
            self._none_left.set()

    async def none_left(self) -> None:
        """Return once no request is in progress (at once when none is)."""
        while self.count:
            if self._none_left is None or self._none_left.is_set():
                self._none_left = asyncio.Event()  # shared by every waiter until it is set
            await self._none_left.wait()


class UpstreamClient:
    """The pooled client of one upstream config; built lazily, closed once drained.

    Invariant: the session exists only between the first request and
    :meth:`aclose`; :meth:`in_use` spans every request, streams included, so
    :meth:`aclose_when_idle` never cuts a request short.
    """

    def __init__(self, config: UpstreamConfig, *, resolver: ResolverFactory | None = None) -> None:
        self.config = config
        self._resolver = resolver if resolver is not None else aiohttp.DefaultResolver
        self._session: aiohttp.ClientSession | None = None
        # Answers being read: closing the session does not end their reads, closing them does.
        # The route hands each back with finish().
        self._answers: set[aiohttp.ClientResponse] = set()
        self._closed = False
        #: The deadlines of answer chunks (read by the route) and of the request's own steps.
        self.idle_deadlines = timeouts(config.idle_timeout)
        self._response_deadlines = timeouts(config.response_timeout)
        self._usage = Usage()

    @property
    def active(self) -> int:
        """Requests in progress through this client."""
        return self._usage.count

    def in_use(self) -> Usage:
        """``with client.in_use():`` counts one request (and its answer's stream) against it."""
        return self._usage

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ApiError(
                502,
                "upstream_unreachable",
                "the upstream's client is closed",
                profile=self.config.profile,
            )
        if self._session is None:
            try:
                tls = (
                    tls_context(self.config) if self.config.base_url.startswith("https:") else None
                )
            except (OSError, ssl.SSLError) as exc:  # a ca_file or client certificate
                raise ApiError(
                    502,
                    "upstream_tls",
                    f"TLS files of upstream {self.config.name!r} cannot be used: {_reason(exc)}",
                    profile=self.config.profile,
                ) from exc
            resolver = self._resolver()
            connector = _Connector(
                limit=POOL_LIMIT,
                ssl=tls if tls is not None else True,
                resolver=resolver if self.config.allow_private else GuardedResolver(resolver),
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
                skip_auto_headers=_NO_AUTO_HEADERS,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.config.connect_timeout,
                    sock_connect=self.config.connect_timeout,
                ),
            )
        return self._session

    async def send(
        self, method: str, target: str, headers: CIMultiDict[str], body: RequestBody
    ) -> aiohttp.ClientResponse:
        """Send one request to ``base_url + "/" + target`` (path and query, as written).

        Raises:
            ApiError: the upstream could not be reached or did not answer in time.
        """
        session = self._open()
        url = URL(f"{self.config.base_url}/{target}", encoded=True)
        data = body.data
        deadline = ResponseDeadline(
            self.idle_deadlines,
            self._response_deadlines,
            streamed=not isinstance(data, bytes | None),
        )
        if not isinstance(data, bytes | None):
            data = _moving(data, deadline)
        try:
            with deadline:
                sending = _SENDING.set(deadline)
                try:
                    answer = await session.request(
                        method, url, headers=headers, data=data, allow_redirects=False
                    )
                finally:
                    _SENDING.reset(sending)
            self._answers.add(answer)
        except Exception:
            # The error boundary, entered only on the way out of a failure.
            with upstream_errors(self.config, deadline):
                raise
        return answer

    @property
    def answers(self) -> int:
        """Answers handed out by :meth:`send` and not yet given back to :meth:`finish`."""
        return len(self._answers)

    def finish(self, answer: aiohttp.ClientResponse) -> None:
        """Done with ``answer``: its connection is closed unless it was released to the pool."""
        self._answers.discard(answer)
        if not answer.closed:  # cancelled or failed: not pooled again
            answer.close()

    async def aclose_when_idle(self) -> None:
        """Close once every request in progress has finished (a reload retired this client)."""
        await self._usage.none_left()
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pool now; requests still running fail, open answers (streams) end."""
        self._closed = True
        for answer in list(self._answers):
            answer.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        self.idle_deadlines.close()
        self._response_deadlines.close()

    def __repr__(self) -> str:
        return f"UpstreamClient(name={self.config.name!r}, active={self.active})"


def tls_context(upstream: UpstreamConfig) -> ssl.SSLContext:
    """The system trust store plus ``ca_file``, and the client certificate when configured.

    Raises:
        OSError, ssl.SSLError: a file cannot be read or is not a certificate or key.
    """
    for path in (upstream.ca_file, upstream.client_cert_file, upstream.client_key_file):
        if path is not None:
            check_small_file(path, TLS_FILE_LIMIT)  # OpenSSL would block on a FIFO
    context = ssl.create_default_context()
    if upstream.ca_file is not None:
        context.load_verify_locations(cafile=upstream.ca_file)
    if upstream.client_cert_file is not None and upstream.client_key_file is not None:
        context.load_cert_chain(upstream.client_cert_file, upstream.client_key_file)
    return context


@contextlib.contextmanager
def upstream_errors(upstream: UpstreamConfig, deadline: ResponseDeadline | None) -> Iterator[None]:
    """Map every failure of reaching ``upstream`` to DESIGN's 502/504 answers (one boundary).

    Each answer names the upstream's profile, whose token the request carried.
    """
    name, profile = upstream.name, upstream.profile
    try:
        yield
    except ApiError:
        raise
    except aiohttp.ClientSSLError as exc:
        raise ApiError(
            502,
            "upstream_tls",
            f"TLS with upstream {name!r} failed: {_reason(exc)}",
            profile=profile,
        ) from exc
    except aiohttp.ClientConnectorDNSError as exc:
        if isinstance(exc.os_error, AddressDeniedError):
            raise ApiError(
                502,
                "upstream_denied",
                f"upstream {name!r}: {exc.os_error}; set allow_private = true if it belongs there",
                profile=profile,
            ) from exc
        raise _unreachable(upstream, f"cannot resolve {exc.host}") from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise _unreachable(
            upstream,
            f"no connection within connect_timeout ({upstream.connect_timeout:g}s; "
            f"at most {POOL_LIMIT} connections per upstream, the rest wait for one)",
        ) from exc
    except TimeoutError as exc:
        if deadline is not None and deadline.phase == "request_body":
            raise ApiError(
                504,
                "upstream_timeout",
                f"upstream {name!r}: the request body made no progress "
                f"for idle_timeout ({upstream.idle_timeout:g}s)",
                profile=profile,
            ) from exc
        raise ApiError(
            504,
            "upstream_timeout",
            f"upstream {name!r} sent no status line within "
            f"response_timeout ({upstream.response_timeout:g}s)",
            profile=profile,
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        raise _unreachable(upstream, f"cannot connect: {_reason(exc.os_error)}") from exc
    except aiohttp.ClientError as exc:
        raise _unreachable(upstream, f"the connection failed: {type(exc).__name__}") from exc


def _unreachable(upstream: UpstreamConfig, detail: str) -> ApiError:
    return ApiError(
        502,
        "upstream_unreachable",
        f"upstream {upstream.name!r}: {detail}",
        profile=upstream.profile,
    )


def _reason(exc: BaseException) -> str:
    """A short, fixed-vocabulary reason: the OS or TLS error text, never request data."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
        message = getattr(cause, "verify_message", None)
        return str(message) if message else type(cause).__name__
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__
