"""Origin pinning: the one origin (scheme, host, port) an adapter attaches the token to.

An MCP tool often fetches more than its own API: a URL from a prompt, a
redirect target, a link in an answer. If every request of the session carried
the token, any of those would hand it to a stranger. So each adapter pins an
origin, as aiohttp's ``DigestAuthMiddleware`` pins its credentials: the one it
was given, else the first request's, never reset. A request to any other
origin passes through untouched: no token, and no retry after its 401.
"""

from __future__ import annotations

import threading
from typing import NamedTuple
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class OriginKey(NamedTuple):
    """Scheme, host and port of a URL, the way browsers compare origins."""

    scheme: str
    host: str
    port: int | None

    @classmethod
    def of(cls, url: str) -> OriginKey:
        """The origin of an absolute URL; the default port of its scheme is spelt out.

        Raises:
            ValueError: ``url`` has no scheme or no host.
        """
        split = urlsplit(url)
        scheme = split.scheme.lower()
        host = (split.hostname or "").lower()
        if not scheme or not host:
            raise ValueError(f"not an absolute URL with a host: {url!r}")
        return cls(scheme, host, split.port or _DEFAULT_PORTS.get(scheme))


class Origin:
    """The pinned origin of one adapter: given, or taken from the first request.

    Invariant: once pinned, the origin never changes, so a token attached once
    to ``https://api.example.com`` is attached to nothing else for the life of
    the adapter. Pinning is thread-safe (sync httpx clients may be shared by
    threads).
    """

    def __init__(self, origin: str | None = None) -> None:
        self._pinned = None if origin is None else OriginKey.of(origin)
        self._lock = threading.Lock()

    def admits(self, url: str) -> bool:
        """Whether a request to ``url`` gets the token; the first call pins if nothing is."""
        key = OriginKey.of(url)
        with self._lock:
            if self._pinned is None:
                self._pinned = key
            return key == self._pinned

    @property
    def pinned(self) -> str | None:
        """The pinned origin as ``scheme://host:port``, or None before the first request."""
        if self._pinned is None:
            return None
        scheme, host, port = self._pinned
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}:{port}" if port is not None else f"{scheme}://{shown}"

    def __repr__(self) -> str:
        return f"Origin({self.pinned!r})"
