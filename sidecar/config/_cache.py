"""The ``[cache]`` table: the backend, the Redis URL, and how to reach a managed Redis.

The table's keys are declared in :mod:`sidecar.config._keys` (``CACHE_KEYS``).
Rules checked here, from the table alone (files are read later, when a
Redis backend is built: :mod:`sidecar.fleet`):

- ``url`` is a ``redis://``, ``rediss://`` or ``unix://`` URL; its query may
  not turn TLS certificate checks off (``ssl_cert_reqs``, ``ssl_check_hostname``);
- ``ssl_ca_file``, ``ssl_certfile`` and ``ssl_keyfile`` need a ``rediss://``
  URL, and the certificate and its key come together;
- a password is given once: in the URL or in ``password_file``, never both;
  a user name likewise: in the URL or in ``username``; a user name without
  any password is refused (Redis would answer every command ``NOAUTH``).

Messages never echo the URL (it may hold a password) or a file's content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import cast, get_args
from urllib.parse import parse_qs, urlsplit

from sidecar.config._keys import NAMESPACE_PATTERN, REDIS_TLS_KEYS
from sidecar.config._model import CacheBackend, CacheConfig
from sidecar.config._reader import Table

_BACKENDS: tuple[str, ...] = get_args(CacheBackend)
_SCHEMES = ("redis", "rediss", "unix")
_NAMESPACE = re.compile(NAMESPACE_PATTERN)
#: Query values redis-py reads as "do not check the server's certificate".
_NO_VERIFY = {
    "ssl_cert_reqs": {"none", "optional"},
    "ssl_check_hostname": {"0", "f", "false", "n", "no"},
}


@dataclass(frozen=True)
class UrlCredentials:
    """What a Redis URL says about authentication (user info or ``?username=&password=``)."""

    username: str | None
    has_password: bool


def url_credentials(url: str) -> UrlCredentials:
    """The user name and whether there is a password in ``url``, parsed the way redis-py does."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    username = parts.username or next(iter(query.get("username", ())), None)
    return UrlCredentials(
        username=username or None,
        has_password=bool(parts.password) or bool(query.get("password")),
    )


def read_cache(t: Table) -> CacheConfig:
    """The ``[cache]`` table, validated (see the module docstring)."""
    backend = t.choice("backend", _BACKENDS, default=CacheConfig.backend)
    url = _url(t)
    namespace = t.string("namespace") or CacheConfig.namespace
    if not _NAMESPACE.fullmatch(namespace):
        raise t.error("namespace", "may contain only letters, digits and _ . : -")
    key_file = t.path_value("key_file")
    config = CacheConfig(
        backend=cast("CacheBackend", backend),
        url=url,
        namespace=namespace,
        key_file=key_file,
        persist_file=_persist_file(t, key_file),
        username=t.string("username"),
        password_file=t.path_value("password_file"),
        ssl_ca_file=t.path_value("ssl_ca_file"),
        ssl_certfile=t.path_value("ssl_certfile"),
        ssl_keyfile=t.path_value("ssl_keyfile"),
    )
    _check_tls(t, config)
    _check_credentials(t, config)
    return config


def _persist_file(t: Table, key_file: Path | None) -> Path | None:
    """The cold-start file: sealed with ``key_file``, in a directory that exists.

    The directory is checked here, at start, because the file is first written
    minutes later (after the first refresh): a typo must not wait that long.
    The file itself need not exist (the first start has none).
    """
    path = t.path_value("persist_file")
    if path is None:
        return None
    if key_file is None:
        raise t.error(
            "persist_file", "needs cache.key_file: tokens are written to the file only encrypted"
        )
    if path == key_file:
        raise t.error("persist_file", "must not be the same file as cache.key_file")
    directory = path.parent
    try:
        if not directory.exists():
            raise t.error("persist_file", f"directory {directory} does not exist")
        if not directory.is_dir():
            raise t.error("persist_file", f"{directory} is not a directory")
        if path.is_dir():
            raise t.error("persist_file", f"{path} is a directory; name a file in it")
    except OSError as exc:  # a directory we may not even look into
        raise t.error("persist_file", f"cannot check {directory}: {exc.strerror}") from None
    return path


def _url(t: Table) -> str:
    url = t.string("url") or CacheConfig.url
    expected = "expected a redis://, rediss:// or unix:// URL"
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed IPv6 literal
        raise t.error("url", expected) from None
    if parts.scheme not in _SCHEMES or not url.startswith(f"{parts.scheme}://"):
        raise t.error("url", expected)
    query = parse_qs(parts.query)
    for name, refused in _NO_VERIFY.items():
        if any(value.lower() in refused for value in query.get(name, ())):
            raise t.error(
                "url",
                f"{name} in the query turns TLS certificate checks off; "
                "trust a private CA with cache.ssl_ca_file instead",
            )
    return url


def _check_tls(t: Table, config: CacheConfig) -> None:
    if not config.url.startswith("rediss://"):
        for key in REDIS_TLS_KEYS:
            if getattr(config, key) is not None:
                raise t.error(key, "TLS files need a rediss:// URL (cache.url is not TLS)")
    if (config.ssl_certfile is None) != (config.ssl_keyfile is None):
        missing = "ssl_keyfile" if config.ssl_keyfile is None else "ssl_certfile"
        raise t.error(missing, "set ssl_certfile and ssl_keyfile together (a client certificate)")


def _check_credentials(t: Table, config: CacheConfig) -> None:
    in_url = url_credentials(config.url)
    if config.password_file is not None and in_url.has_password:
        raise t.error(
            "password_file",
            "cache.url carries a password too; keep the password in one place "
            "(remove it from the URL)",
        )
    if config.username is not None and in_url.username is not None:
        raise t.error("username", "cache.url names a user too; keep the user name in one place")
    if config.username is not None and not (config.password_file or in_url.has_password):
        raise t.error("username", "a Redis user needs a password: set cache.password_file")
