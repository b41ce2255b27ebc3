"""The blocking transport of the token client: one persistent ``http.client`` connection.

The standard library is enough for the few small requests a thread makes to
the sidecar, and it keeps the blocking path free of any HTTP library the
caller may or may not have installed. :class:`UnixHTTPConnection` is
``http.client.HTTPConnection`` over a Unix socket.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import urlsplit

#: What a request on a :class:`BlockingConnection` raises when the sidecar
#: cannot be reached or breaks the connection (timeouts are ``OSError`` too).
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)

# A kept-alive connection the sidecar has closed in the meantime fails like
# this on its next request, which the sidecar therefore never received.
_STALE_ERRORS = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class UnixHTTPConnection(http.client.HTTPConnection):
    """An ``HTTPConnection`` to a Unix socket; the ``Host`` header says ``localhost``."""

    def __init__(self, path: str, *, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Answer(NamedTuple):
    """One HTTP answer, read to the end."""

    status: int
    body: bytes
    retry_after: str | None


class BlockingConnection:
    """One kept-alive connection to the sidecar, opened on first use.

    Not thread-safe: the owner sends one request at a time (``TokenClient``
    holds a lock around each). Any failure closes the connection, so the next
    request starts on a fresh one.
    """

    def __init__(
        self, url: str, socket_path: str | None, *, timeout: float, headers: Mapping[str, str]
    ) -> None:
        self._url = urlsplit(url)
        self._socket_path = socket_path
        self._timeout = timeout
        self._headers = dict(headers)
        self._conn: http.client.HTTPConnection | None = None

    @property
    def is_open(self) -> bool:
        """Whether a connection is held (it may still have been closed by the peer)."""
        return self._conn is not None

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """Send one request and read the whole answer.

        A request that fails on a reused connection the peer had already
        closed is sent once more on a new one.

        Raises:
            OSError: the sidecar cannot be reached, or the request timed out.
            http.client.HTTPException: the connection broke mid-answer.
        """
        split = urlsplit(url)
        target = f"{split.path}?{split.query}" if split.query else split.path
        send = {**self._headers, **(headers or {})}
        reused = self._conn is not None
        try:
            return self._exchange(method, target, body, send)
        except _STALE_ERRORS:
            if not reused:
                raise
        return self._exchange(method, target, body, send)

    def _exchange(
        self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Answer:
        conn = self._conn if self._conn is not None else self._open()
        try:
            conn.request(method, target, body=body, headers=dict(headers))
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            self.close()
            raise
        if response.will_close:
            self.close()
        return Answer(response.status, data, response.getheader("Retry-After"))

    def _open(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._socket_path is not None:
            conn = UnixHTTPConnection(self._socket_path, timeout=self._timeout)
        elif self._url.scheme == "https":
            conn = http.client.HTTPSConnection(
                self._url.hostname or "", self._url.port, timeout=self._timeout
            )
        else:
            conn = http.client.HTTPConnection(
                self._url.hostname or "", self._url.port, timeout=self._timeout
            )
        self._conn = conn
        return conn

    def close(self) -> None:
        """Close the connection, if one is open; the next request opens a new one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
