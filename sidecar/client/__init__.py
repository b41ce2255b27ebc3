"""The client library for MCP servers: fetch tokens from the sidecar and attach them.

:class:`TokenClient` talks to a running sidecar over loopback TCP or its Unix
socket and keeps each profile's token in-process until ``min_ttl`` before
expiry. :class:`SidecarAuth` (httpx, sync and async) and
:func:`sidecar_middleware` (aiohttp) attach ``Authorization: Bearer`` and,
when the API answers 401, report the token through ``invalidate`` and retry
the request once, never more, and never when its body cannot be replayed.
:class:`SidecarError` is the one error the library raises.

Defaults come from ``TOKEN_SIDECAR_URL``, ``TOKEN_SIDECAR_SOCKET`` and
``TOKEN_SIDECAR_PROFILE``, so the common case needs no code beyond
``TokenClient()``. The package imports nothing from the daemon: it depends on
aiohttp, and on httpx only for :class:`SidecarAuth`.
"""

from ._aiohttp import sidecar_middleware
from ._core import SidecarError, Token, TokenClient
from ._httpx import SidecarAuth

__all__ = [
    "SidecarAuth",
    "SidecarError",
    "Token",
    "TokenClient",
    "sidecar_middleware",
]
