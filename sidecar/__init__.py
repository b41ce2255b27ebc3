"""token-sidecar: keeps OAuth 2.0 client-credentials tokens warm for local callers.

The public Python surface is the client library for MCP servers; the daemon
itself is used through the ``token-sidecar`` command.
"""

from sidecar._version import __version__
from sidecar.client import SidecarAuth, SidecarError, Token, TokenClient, sidecar_middleware

__all__ = [
    "SidecarAuth",
    "SidecarError",
    "Token",
    "TokenClient",
    "__version__",
    "sidecar_middleware",
]
