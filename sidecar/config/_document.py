"""The config document: a TOML file, its top-level keys and the ``[server]`` table.

:func:`load_config` reads and parses a TOML file; :func:`config_from_mapping`
is where parsed TOML (or an equivalent dict from the environment) becomes a
:class:`~sidecar.config.Config`. The ``[profiles.NAME]`` tables are read by
:mod:`sidecar.config._profile`, ``[cache]`` by :mod:`sidecar.config._cache`,
single values by :mod:`sidecar.config._reader`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from sidecar.config._cache import read_cache
from sidecar.config._keys import CACHE_KEYS, DOCUMENT_KEYS, OCTAL_MODE_PATTERN, SERVER_KEYS
from sidecar.config._model import Config, ServerConfig, is_loopback_host
from sidecar.config._profile import read_profiles
from sidecar.config._reader import Table, read_address
from sidecar.config._upstream import read_upstreams
from sidecar.errors import ConfigError
from sidecar.files import CONFIG_LIMIT, read_small_text

_SOCKET_MODE = re.compile(OCTAL_MODE_PATTERN)


# --------------------------------------------------------------------------- sections


def _server(t: Table) -> ServerConfig:
    allow_non_loopback = t.boolean("allow_non_loopback", default=False)
    listen, host = read_address(t, "listen", default=ServerConfig.listen)
    if listen is not None and not allow_non_loopback and not is_loopback_host(host):
        raise t.error(
            "listen",
            "the token API must listen on loopback; "
            "set server.allow_non_loopback = true to override",
        )
    socket = t.path_value("socket")
    if listen is None and socket is None:
        raise t.error("listen", "the token API needs a TCP listener or a Unix socket; both are off")
    ops_listen, _ = read_address(t, "ops_listen", default=ServerConfig.ops_listen)
    return ServerConfig(
        listen=listen,
        socket=socket,
        socket_mode=_socket_mode(t),
        allow_uids=t.uids("allow_uids") or (),
        ops_listen=ops_listen,
        allow_non_loopback=allow_non_loopback,
        access_log=t.boolean("access_log", default=ServerConfig.access_log),
        max_connections=t.integer(
            "max_connections", default=ServerConfig.max_connections, minimum=1
        ),
        header_timeout=t.duration("header_timeout", default=ServerConfig.header_timeout),
        keepalive_timeout=t.duration("keepalive_timeout", default=ServerConfig.keepalive_timeout),
    )


def _socket_mode(t: Table) -> int:
    value = t.raw("socket_mode", "")
    if value == "":
        return ServerConfig.socket_mode
    # A TOML integer is refused on purpose: `socket_mode = 660` would be decimal.
    if not isinstance(value, str) or not _SOCKET_MODE.fullmatch(value):
        raise t.error("socket_mode", 'expected a string of octal digits, like "0660"')
    return int(value, 8)


def config_from_mapping(data: Mapping[str, Any], *, source: str) -> Config:
    """Validate parsed TOML (or an equivalent dict) into a :class:`Config`.

    Raises:
        ConfigError: naming ``source``, the key path and the problem.
    """
    root = Table(data, source=source, path="", allowed=DOCUMENT_KEYS.names)
    profiles = read_profiles(root)
    config = Config(
        profiles=profiles,
        server=_server(root.table("server", SERVER_KEYS.names)),
        cache=read_cache(root.table("cache", CACHE_KEYS.names)),
        source=source,
        upstreams=read_upstreams(root, profiles),
    )
    _require_trust(config)
    return config


def _require_trust(config: Config) -> None:
    """Fleet mode trusts nothing in Redis it cannot verify: a key_file, or JWKS on every profile."""
    if config.cache.backend != "redis" or config.cache.key_file is not None:
        return
    for name, profile in config.profiles.items():
        # Per-user tokens stay in this sidecar's memory: nothing of theirs is shared.
        if not profile.verified and not profile.exchanges:
            raise ConfigError(
                config.source,
                f"profiles.{name}.verify",
                'fleet mode (cache.backend = "redis") without cache.key_file needs '
                'verify = "jwks" (set jwks_url or auth0_domain), or set cache.key_file',
            )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file.

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or invalid.
    """
    source = str(path)
    try:
        text = read_small_text(path, CONFIG_LIMIT)
    except FileNotFoundError as exc:
        raise ConfigError(source, "", "no such file") from exc
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", "not valid UTF-8") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message carries the line and column, never the offending text.
        raise ConfigError(source, "", f"invalid TOML: {exc}") from exc
    return config_from_mapping(data, source=source)
