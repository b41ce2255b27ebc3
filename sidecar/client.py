"""The client library, under the daemon's name: the same objects as ``token_sidecar_client``.

The client is its own small distribution, ``token-sidecar-client`` (built from
``client/`` in this repository); the daemon's distribution carries the same
package, because ``token-sidecar token`` is built on it. Import from either
name: ``sidecar.client.TokenClient is token_sidecar_client.TokenClient``.
"""

from token_sidecar_client import SidecarAuth, SidecarError, Token, TokenClient, sidecar_middleware

__all__ = [
    "SidecarAuth",
    "SidecarError",
    "Token",
    "TokenClient",
    "sidecar_middleware",
]
