"""Proxy mode: callers send their API requests through the sidecar, which attaches the token.

``ANY /v1/proxy/{upstream}/{path}`` on the token listeners forwards to the
configured ``base_url`` of ``upstream``; the caller never holds the token,
and a token can only ever reach a configured ``base_url``. The room holds
one concept per module:

- ``_route``: the handler, from the guards to the last body chunk; the 401 rule;
- ``_paths``: which paths are refused (``..``, encoded separators);
- ``_headers``: what crosses the sidecar each way;
- ``_replay``: which bodies are buffered and may be sent twice;
- ``_client``: one pooled client per upstream, TLS, timeouts, the error mapping;
- ``_addresses``: the connect-time refusal of private addresses (DNS rebinding);
- ``_upstreams``: the upstreams of a daemon, their counters, and reloads.
"""

from sidecar.proxy._addresses import AddressDeniedError, GuardedResolver
from sidecar.proxy._client import POOL_LIMIT, ResolverFactory, UpstreamClient
from sidecar.proxy._headers import RETRIED_HEADER, STALE_HEADER
from sidecar.proxy._paths import PREFIX
from sidecar.proxy._route import GUARDED_PROFILE, ProxyRoute, proxy_error_response
from sidecar.proxy._upstreams import Upstreams
from sidecar.responses import ERROR_HEADER

__all__ = [
    "ERROR_HEADER",
    "GUARDED_PROFILE",
    "POOL_LIMIT",
    "PREFIX",
    "RETRIED_HEADER",
    "STALE_HEADER",
    "AddressDeniedError",
    "GuardedResolver",
    "ProxyRoute",
    "ResolverFactory",
    "UpstreamClient",
    "Upstreams",
    "proxy_error_response",
]
