"""Fleet mode: where a profile's token is shared with other sidecars, and how one is refreshed.

Behind :class:`TokenCache` sit two interchangeable backends:
:class:`MemoryCache` (``backend = "memory"``: nothing is shared) and
``RedisCache`` (``backend = "redis"``). :class:`FleetRefresh` runs the one
fleet single-flight algorithm over either; :class:`TokenCodec` seals shared
values. :func:`make_cache` builds what ``[cache]`` asks for.

Modules: ``_cache`` (the interface, the memory backend, the shared records),
``_redis`` (the Redis backend), ``_codec`` (encoding and encryption) and
``_single_flight`` (the algorithm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.clock import Clock
from sidecar.config import Config
from sidecar.fleet._cache import (
    CacheState,
    MemoryCache,
    SharedFailure,
    SharedToken,
    TokenCache,
    identity_of,
)
from sidecar.fleet._codec import TokenCodec, load_key
from sidecar.fleet._single_flight import (
    LOCK_MARGIN,
    FleetRefresh,
    FleetRequest,
    FleetResult,
    Source,
)
from sidecar.metrics import Metrics

if TYPE_CHECKING:
    from sidecar.fleet._redis import RedisCache

__all__ = [
    "LOCK_MARGIN",
    "CacheState",
    "FleetRefresh",
    "FleetRequest",
    "FleetResult",
    "MemoryCache",
    "RedisCache",
    "SharedFailure",
    "SharedToken",
    "Source",
    "TokenCache",
    "TokenCodec",
    "identity_of",
    "load_key",
    "make_cache",
]


def __getattr__(name: str) -> Any:
    # RedisCache is loaded on first use, so the memory backend never imports redis.
    if name == "RedisCache":
        from sidecar.fleet._redis import RedisCache  # noqa: PLC0415

        return RedisCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_cache(config: Config, clock: Clock, metrics: Metrics) -> TokenCache:
    """The token cache ``[cache]`` asks for; a bad key file is a ConfigError here, at start."""
    cfg = config.cache
    if cfg.backend == "memory":
        return MemoryCache()
    from sidecar.fleet._redis import RedisCache  # noqa: PLC0415 - see __getattr__

    key = load_key(cfg.key_file, source=config.source) if cfg.key_file is not None else None
    return RedisCache(cfg.url, cfg.namespace, clock=clock, metrics=metrics, codec=TokenCodec(key))
