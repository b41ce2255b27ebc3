"""token-sidecar: keeps OAuth 2.0 client-credentials tokens warm for local callers."""

from sidecar._version import __version__

__all__ = ["__version__"]
