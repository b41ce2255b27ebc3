"""token_sidecar_client: fetch tokens from token-sidecar and attach them to requests.

:class:`TokenClient` talks to a running sidecar over loopback TCP or its Unix
socket and keeps each profile's token in-process until ``min_ttl`` before
expiry, for async and sync code alike. :class:`SidecarAuth` (httpx2 and httpx,
sync and async) and :func:`sidecar_middleware` (aiohttp) attach
``Authorization: Bearer`` to the requests for one origin and, when that origin
answers 401, report the token through ``invalidate`` and retry the request
once, only with a different token, and never when its body cannot be
replayed. :class:`SidecarError` is the one error the library raises.

Defaults come from ``TOKEN_SIDECAR_URL``, ``TOKEN_SIDECAR_SOCKET`` and
``TOKEN_SIDECAR_PROFILE``, so the common case needs no code beyond
``TokenClient()``. The package depends on aiohttp alone; httpx2 and httpx are
used when installed (the extras ``[httpx2]`` and ``[httpx]``).
"""

from ._aiohttp import sidecar_middleware
from ._core import SidecarError, Token, TokenClient
from ._httpx import SidecarAuth
from ._version import __version__

__all__ = [
    "SidecarAuth",
    "SidecarError",
    "Token",
    "TokenClient",
    "__version__",
    "sidecar_middleware",
]
