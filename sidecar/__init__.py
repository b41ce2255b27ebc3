"""token-sidecar: keeps OAuth 2.0 client-credentials tokens warm for local callers.

The public Python surface is the client library for MCP servers; the daemon
itself is used through the ``token-sidecar`` command. The client names load on
first use, so the command starts (and installs its signal handlers) before any
heavy import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sidecar._version import __version__

if TYPE_CHECKING:
    from sidecar.client import SidecarAuth, SidecarError, Token, TokenClient, sidecar_middleware

__all__ = [
    "SidecarAuth",
    "SidecarError",
    "Token",
    "TokenClient",
    "__version__",
    "sidecar_middleware",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("sidecar.client"), name)
    raise AttributeError(f"module 'sidecar' has no attribute {name!r}")
