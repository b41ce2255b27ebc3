"""Fleet mode: where a profile's token is shared with other sidecars, and how one is refreshed.

Behind :class:`TokenCache` sit two interchangeable backends:
:class:`MemoryCache` (``backend = "memory"``: nothing is shared) and
``RedisCache`` (``backend = "redis"``). :class:`FleetRefresh` runs the one
fleet single-flight algorithm over either; :class:`TokenCodec` seals shared
values. :func:`make_cache` builds what ``[cache]`` asks for.

Modules: ``_cache`` (the interface, the memory backend, the shared records),
``_redis`` (the Redis backend), ``_access`` (how it reaches Redis: TLS, ACL
user, password file), ``_codec`` (encoding and encryption) and
``_single_flight`` (the algorithm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sidecar.clock import Clock
from sidecar.config import Config
from sidecar.fleet._cache import (
    CacheFailure,
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
    from sidecar.fleet._access import PasswordFile, RedisAccess, describe_failure
    from sidecar.fleet._redis import RedisCache

__all__ = [
    "LOCK_MARGIN",
    "CacheFailure",
    "CacheState",
    "FleetRefresh",
    "FleetRequest",
    "FleetResult",
    "MemoryCache",
    "PasswordFile",
    "RedisAccess",
    "RedisCache",
    "SharedFailure",
    "SharedToken",
    "Source",
    "TokenCache",
    "TokenCodec",
    "check_cache_files",
    "describe_failure",
    "identity_of",
    "load_key",
    "make_cache",
]


def __getattr__(name: str) -> Any:
    # The Redis names are loaded on first use, so the memory backend never imports redis.
    if name == "RedisCache":
        from sidecar.fleet._redis import RedisCache  # noqa: PLC0415

        return RedisCache
    if name in {"PasswordFile", "RedisAccess", "describe_failure"}:
        from sidecar.fleet import _access  # noqa: PLC0415

        return getattr(_access, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_cache(config: Config, clock: Clock, metrics: Metrics) -> TokenCache:
    """The token cache ``[cache]`` asks for.

    Every file the Redis backend needs (key, TLS files, password) is read
    here, at start: a bad one is a ConfigError (exit 2), never a runtime surprise.
    """
    cfg = config.cache
    if cfg.backend == "memory":
        return MemoryCache()
    from sidecar.fleet._access import RedisAccess  # noqa: PLC0415 - see __getattr__
    from sidecar.fleet._redis import RedisCache  # noqa: PLC0415

    key = load_key(cfg.key_file, source=config.source) if cfg.key_file is not None else None
    access = RedisAccess.from_config(cfg, source=config.source)
    return RedisCache(access, cfg.namespace, clock=clock, metrics=metrics, codec=TokenCodec(key))


def check_cache_files(config: Config) -> None:
    """Read the files fleet mode needs, as the daemon would at start (for ``check``).

    Raises:
        ConfigError: naming the ``[cache]`` key whose file is missing or unusable.
    """
    cfg = config.cache
    if cfg.backend != "redis":
        return
    from sidecar.fleet._access import RedisAccess  # noqa: PLC0415 - see __getattr__

    if cfg.key_file is not None:
        load_key(cfg.key_file, source=config.source)
    RedisAccess.from_config(cfg, source=config.source)
