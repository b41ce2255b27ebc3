"""Loading and validating configuration: TOML or environment in, a frozen Config out.

Every rule of DESIGN.md "Config" is enforced here and nowhere else, so the
rest of the sidecar can trust :class:`~sidecar.config.Config` blindly. Each
failure is a :class:`~sidecar.errors.ConfigError` that names the source, the
dotted key path (``profiles.go-api.client_auth``) and the problem; messages
never echo the value of a credential.

Credential files need not exist yet: they are read at run time, because
Kubernetes may mount a Secret after the sidecar starts.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, cast, get_args
from urllib.parse import urlsplit, urlunsplit

from sidecar.config import (
    PROFILE_NAME_PATTERN,
    BackoffConfig,
    BreakerConfig,
    CacheBackend,
    CacheConfig,
    ClientAuth,
    Config,
    ProfileConfig,
    RefreshBefore,
    SecretRef,
    ServerConfig,
    Verify,
)
from sidecar.errors import ConfigError

__all__ = [
    "config_from_env",
    "config_from_mapping",
    "format_duration",
    "load_config",
    "parse_duration",
    "redacted",
    "resolve_config",
]

_TOP_KEYS = ("server", "cache", "profiles")
_SERVER_KEYS = (
    "listen",
    "socket",
    "socket_mode",
    "allow_uids",
    "ops_listen",
    "allow_non_loopback",
    "access_log",
)
_CACHE_KEYS = ("backend", "url", "namespace", "key_file")
_BACKOFF_KEYS = ("base", "cap")
_BREAKER_KEYS = ("failures", "reset")
_ASSERTION_KEYS = ("private_key_file", "private_key_kid", "assertion_alg", "assertion_audience")
_PROFILE_KEYS = (
    *("auth0_domain", "token_url", "issuer", "jwks_url"),
    *("client_id", "client_id_file", "client_id_env"),
    *("client_secret", "client_secret_file", "client_secret_env", "client_auth"),
    *_ASSERTION_KEYS,
    *("audience", "resource", "scope", "extra_params", "required"),
    *("refresh_before", "min_ttl", "wait_timeout", "verify", "allow_uids"),
    *("connect_timeout", "timeout", "backoff", "breaker"),
)
# Form fields the sidecar sends itself; letting extra_params override them
# would silently change the grant or leak a second credential.
_RESERVED_PARAMS = frozenset(
    {
        "grant_type",
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "audience",
        "resource",
        "scope",
    }
)
_CLIENT_AUTHS: tuple[str, ...] = get_args(ClientAuth)
_VERIFY_MODES: tuple[str, ...] = get_args(Verify)
_CACHE_BACKENDS: tuple[str, ...] = get_args(CacheBackend)
_ASSERTION_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")

_PROFILE_NAME = re.compile(PROFILE_NAME_PATTERN)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.:-]+")
_SOCKET_MODE = re.compile(r"[0-7]{3,4}")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_REDACTED = "[redacted]"


class _InvalidValueError(Exception):
    """A value-level problem, raised by pure parsers and given its key by the caller."""


# --------------------------------------------------------------------------- durations


def parse_duration(value: object, *, source: str, key: str, allow_zero: bool = False) -> float:
    """Parse ``"30s"``, ``"5m"``, ``"1h30m"``, ``"500ms"``, ``"2d"`` or a number of seconds.

    Args:
        value: the raw config value.
        source: where it came from, for the error message.
        key: its key path, for the error message.
        allow_zero: accept ``0``; negative durations are always refused.

    Returns:
        The duration in seconds.

    Raises:
        ConfigError: the value is not a duration, or is negative (or zero).
    """
    try:
        seconds = _duration_seconds(value)
    except _InvalidValueError as exc:
        raise ConfigError(source, key, str(exc)) from None
    if seconds < 0:
        raise ConfigError(source, key, "must not be negative")
    if seconds == 0 and not allow_zero:
        raise ConfigError(source, key, "must be above zero")
    return seconds


def _duration_seconds(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise _InvalidValueError("must be a finite number of seconds")
        return float(value)
    if isinstance(value, str):
        body = value.removeprefix("-")
        if _DURATION.fullmatch(body):
            total = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(body))
            return -total if body != value else total
        shown = f"got {value!r}"
    else:
        shown = f"got a {_toml_type(value)}"
    raise _InvalidValueError(
        f'expected a duration such as "30s", "5m", "1h30m", "500ms" or a number of seconds; {shown}'
    )


def format_duration(seconds: float) -> str:
    """Render seconds the way the config writes them (``90`` -> ``"1m30s"``); round-trips."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    if rest or not parts:
        parts.append(f"{rest}s")
    return "".join(parts)


# --------------------------------------------------------------------------- the reader


class _Table:
    """One TOML table under validation: knows its key path and refuses unknown keys.

    Unknown keys are reported before anything else, so a typo such as
    ``client_secert_file`` is named as a typo, not as a missing secret.
    """

    def __init__(
        self, data: Mapping[str, Any], *, source: str, path: str, allowed: Collection[str]
    ) -> None:
        self._data = data
        self.source = source
        self.path = path
        for name in data:
            if name not in allowed:
                raise self.error(name, _unknown_key_problem(name, allowed))

    def key(self, name: str) -> str:
        """The dotted key path of ``name`` in this table."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def has(self, name: str) -> bool:
        return name in self._data

    def raw(self, name: str, default: object = None) -> object:
        return self._data.get(name, default)

    def string(self, name: str) -> str | None:
        """A non-blank string, or None when absent. Never echoes the value."""
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.error(name, "expected a string")
        if not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def choice(self, name: str, choices: tuple[str, ...], *, default: str) -> str:
        value = self.string(name)
        if value is None:
            return default
        if value not in choices:
            expected = ", ".join(repr(c) for c in choices)
            raise self.error(name, f"expected one of {expected}; got {value!r}")
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self._data.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "expected a boolean (true or false)")
        return value

    def integer(self, name: str, *, default: int, minimum: int) -> int:
        value = self._data.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(name, "expected an integer")
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}")
        return value

    def duration(self, name: str, *, default: float) -> float:
        if name not in self._data:
            return default
        return parse_duration(self._data[name], source=self.source, key=self.key(name))

    def path_value(self, name: str) -> Path | None:
        value = self.string(name)
        return None if value is None else Path(value)

    def env_name(self, name: str) -> str | None:
        value = self.string(name)
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise self.error(name, "expected an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
        return value

    def uids(self, name: str) -> tuple[int, ...] | None:
        value = self._data.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(_is_uid(uid) for uid in value):
            raise self.error(name, "expected a list of user ids (non-negative integers)")
        return tuple(value)

    def mapping(self, name: str) -> Mapping[str, Any]:
        value = self._data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, "expected a table")
        return cast("Mapping[str, Any]", value)

    def table(self, name: str, allowed: Collection[str]) -> _Table:
        return _Table(self.mapping(name), source=self.source, path=self.key(name), allowed=allowed)


def _unknown_key_problem(name: str, allowed: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(allowed), n=1)
    return f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"


def _is_uid(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _toml_type(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "list"}
    return "table" if isinstance(value, dict) else names.get(type(value), type(value).__name__)


def _one_of(t: _Table, names: tuple[str, ...]) -> str | None:
    """The one key of ``names`` that is set, or None; refuses two."""
    given = [name for name in names if t.has(name)]
    if len(given) > 1:
        choices = ", ".join(names)
        raise t.error(given[1], f"conflicts with {given[0]}; set only one of {choices}")
    return given[0] if given else None


# --------------------------------------------------------------------------- addresses


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_url(t: _Table, name: str, clear_text_risk: str) -> str | None:
    """An absolute http(s) URL; plain http only for loopback hosts."""
    value = t.string(name)
    if value is None:
        return None
    absolute = "expected an absolute http(s) URL"
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:  # a malformed port or IPv6 literal
        raise t.error(name, absolute) from None
    if host is None or parts.scheme not in {"http", "https"}:
        raise t.error(name, absolute)
    if parts.scheme == "http" and not _is_loopback(host):
        raise t.error(name, f"plain http {clear_text_risk}; use https")
    return value


def _split_host_port(value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    if not colon or not host:
        raise _InvalidValueError('expected "HOST:PORT", like "127.0.0.1:8700"')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _InvalidValueError("expected an IPv6 address inside the brackets") from None
    elif ":" in host:
        raise _InvalidValueError('write an IPv6 address in brackets, like "[::1]:8700"')
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise _InvalidValueError("expected a port number from 0 to 65535")
    return host, int(port)


def _address(t: _Table, name: str, *, default: str | None) -> tuple[str | None, str]:
    """``(value, host)`` of a ``HOST:PORT`` key; the empty string disables it (None)."""
    value = t.raw(name, default)  # not string(): "" is meaningful here
    if value is None or value == "":
        return None, ""
    if not isinstance(value, str):
        raise t.error(name, "expected a string")
    try:
        host, _ = _split_host_port(value)
    except _InvalidValueError as exc:
        raise t.error(name, str(exc)) from None
    return value, host


# --------------------------------------------------------------------------- sections


def _server(t: _Table) -> ServerConfig:
    allow_non_loopback = t.boolean("allow_non_loopback", default=False)
    listen, host = _address(t, "listen", default=ServerConfig.listen)
    if listen is not None and not allow_non_loopback and not _is_loopback(host):
        raise t.error(
            "listen",
            "the token API must listen on loopback; "
            "set server.allow_non_loopback = true to override",
        )
    socket = t.path_value("socket")
    if listen is None and socket is None:
        raise t.error("listen", "the token API needs a TCP listener or a Unix socket; both are off")
    ops_listen, _ = _address(t, "ops_listen", default=ServerConfig.ops_listen)
    return ServerConfig(
        listen=listen,
        socket=socket,
        socket_mode=_socket_mode(t),
        allow_uids=t.uids("allow_uids") or (),
        ops_listen=ops_listen,
        allow_non_loopback=allow_non_loopback,
        access_log=t.boolean("access_log", default=ServerConfig.access_log),
    )


def _socket_mode(t: _Table) -> int:
    value = t.raw("socket_mode", "")
    if value == "":
        return ServerConfig.socket_mode
    # A TOML integer is refused on purpose: `socket_mode = 660` would be decimal.
    if not isinstance(value, str) or not _SOCKET_MODE.fullmatch(value) or int(value, 8) > 0o777:
        raise t.error("socket_mode", 'expected a string of octal digits, like "0660"')
    return int(value, 8)


def _cache(t: _Table) -> CacheConfig:
    backend = t.choice("backend", _CACHE_BACKENDS, default=CacheConfig.backend)
    url = t.string("url") or CacheConfig.url
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise t.error("url", "expected a redis://, rediss:// or unix:// URL")
    namespace = t.string("namespace") or CacheConfig.namespace
    if not _NAMESPACE.fullmatch(namespace):
        raise t.error("namespace", "may contain only letters, digits and _ . : -")
    return CacheConfig(
        backend=cast("CacheBackend", backend),
        url=url,
        namespace=namespace,
        key_file=t.path_value("key_file"),
    )


def _profiles(root: _Table) -> MappingProxyType[str, ProfileConfig]:
    raw = root.mapping("profiles")
    if not raw:
        raise root.error(
            "profiles", "at least one profile is required: add a [profiles.NAME] table"
        )
    profiles = {}
    for name, body in raw.items():
        if not _PROFILE_NAME.fullmatch(name):
            raise root.error(
                f"profiles.{name}",
                f"invalid profile name: it must match {PROFILE_NAME_PATTERN} "
                "(lowercase letters, digits, '-' and '_', at most 63 characters)",
            )
        if not isinstance(body, dict):
            raise root.error(f"profiles.{name}", "expected a table")
        profile = _Table(body, source=root.source, path=f"profiles.{name}", allowed=_PROFILE_KEYS)
        profiles[name] = _profile(name, profile)
    return MappingProxyType(profiles)


# --------------------------------------------------------------------------- profiles

_SECRET_KEYS = ("client_secret", "client_secret_file", "client_secret_env")
_AUTH0_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


class _Endpoint(NamedTuple):
    token_url: str
    issuer: str | None
    jwks_url: str | None


class _ClientAuthentication(NamedTuple):
    client_id: SecretRef
    client_secret: SecretRef | None
    method: ClientAuth
    private_key_file: Path | None
    private_key_kid: str | None
    assertion_alg: str
    assertion_audience: str | None


def _profile(name: str, t: _Table) -> ProfileConfig:
    endpoint = _endpoint(t)
    auth = _client_authentication(t)
    min_ttl = t.duration("min_ttl", default=ProfileConfig.min_ttl)
    connect_timeout, timeout = _timeouts(t)
    return ProfileConfig(
        name=name,
        token_url=endpoint.token_url,
        issuer=endpoint.issuer,
        jwks_url=endpoint.jwks_url,
        client_id=auth.client_id,
        client_secret=auth.client_secret,
        client_auth=auth.method,
        private_key_file=auth.private_key_file,
        private_key_kid=auth.private_key_kid,
        assertion_alg=auth.assertion_alg,
        assertion_audience=auth.assertion_audience,
        audience=t.string("audience"),
        resource=t.string("resource"),
        scope=t.string("scope"),
        extra_params=_extra_params(t),
        required=t.boolean("required", default=ProfileConfig.required),
        refresh_before=_refresh_before(t, min_ttl),
        min_ttl=min_ttl,
        wait_timeout=t.duration("wait_timeout", default=ProfileConfig.wait_timeout),
        verify=_verify(t, endpoint.jwks_url),
        allow_uids=t.uids("allow_uids"),
        connect_timeout=connect_timeout,
        timeout=timeout,
        backoff=_backoff(t.table("backoff", _BACKOFF_KEYS)),
        breaker=_breaker(t.table("breaker", _BREAKER_KEYS)),
    )


def _endpoint(t: _Table) -> _Endpoint:
    """Where tokens come from; ``auth0_domain`` fills in what is not set explicitly."""
    _one_of(t, ("auth0_domain", "token_url"))
    issuer = t.string("issuer")
    jwks_url = _http_url(t, "jwks_url", "lets anyone on the path swap the signing keys")
    domain = t.string("auth0_domain")
    if domain is not None:
        if not _AUTH0_DOMAIN.fullmatch(domain):
            raise t.error(
                "auth0_domain",
                'expected a bare host name like "example.us.auth0.com" (no scheme, no path)',
            )
        return _Endpoint(
            token_url=f"https://{domain}/oauth/token",
            issuer=issuer or f"https://{domain}/",
            jwks_url=jwks_url or f"https://{domain}/.well-known/jwks.json",
        )
    token_url = _http_url(t, "token_url", "sends the client secret in clear")
    if token_url is None:
        raise t.error("token_url", "required: set auth0_domain or token_url")
    return _Endpoint(token_url, issuer, jwks_url)


def _credential(t: _Table, base: str) -> SecretRef | None:
    """``base`` inline, ``base_file`` or ``base_env``: at most one of them."""
    which = _one_of(t, (base, f"{base}_file", f"{base}_env"))
    if which == base:
        return SecretRef(value=t.string(which))
    if which == f"{base}_file":
        return SecretRef(file=t.path_value(which))
    if which == f"{base}_env":
        return SecretRef(env=t.env_name(which))
    return None


def _client_authentication(t: _Table) -> _ClientAuthentication:
    client_id = _credential(t, "client_id")
    if client_id is None:
        raise t.error("client_id", "required: set one of client_id, client_id_file, client_id_env")
    secret = _credential(t, "client_secret")
    method = t.choice("client_auth", _CLIENT_AUTHS, default=ProfileConfig.client_auth)
    if method == "private_key_jwt":
        if secret is not None:
            raise t.error(
                next(name for name in _SECRET_KEYS if t.has(name)),
                "client_auth = 'private_key_jwt' authenticates with a signed assertion; "
                "remove the client secret: never send two client authentication methods",
            )
        if not t.has("private_key_file"):
            raise t.error("private_key_file", "required by client_auth = 'private_key_jwt'")
    else:
        for name in _ASSERTION_KEYS:
            if t.has(name):
                raise t.error(name, "only used with client_auth = 'private_key_jwt'")
        if secret is None:
            raise t.error(
                "client_secret",
                f"client_auth = {method!r} needs a client secret: "
                "set client_secret_file, client_secret_env or client_secret",
            )
    return _ClientAuthentication(
        client_id=client_id,
        client_secret=secret,
        method=cast("ClientAuth", method),
        private_key_file=t.path_value("private_key_file"),
        private_key_kid=t.string("private_key_kid"),
        assertion_alg=t.choice(
            "assertion_alg", _ASSERTION_ALGS, default=ProfileConfig.assertion_alg
        ),
        assertion_audience=t.string("assertion_audience"),
    )


def _extra_params(t: _Table) -> MappingProxyType[str, str]:
    params = dict(t.mapping("extra_params"))
    for name, value in params.items():
        if name in _RESERVED_PARAMS:
            raise t.error(f"extra_params.{name}", "the sidecar sets this field itself")
        if not isinstance(value, str):
            raise t.error(f"extra_params.{name}", "expected a string")
    return MappingProxyType(params)


def _refresh_before(t: _Table, min_ttl: float) -> RefreshBefore:
    value = t.raw("refresh_before")
    if value is None:
        return RefreshBefore()
    if isinstance(value, str) and value.endswith("%"):
        match = _PERCENT.fullmatch(value)
        percent = float(match.group(1)) if match else 0.0
        if not 0 < percent < 100:
            raise t.error(
                "refresh_before",
                f'expected a percentage between 0% and 100%, like "20%"; got {value!r}',
            )
        return RefreshBefore(seconds=None, share=percent / 100)
    seconds = t.duration("refresh_before", default=0.0)
    if seconds <= min_ttl:
        raise t.error(
            "refresh_before",
            f"refresh_before ({format_duration(seconds)}) must be above min_ttl "
            f"({format_duration(min_ttl)}): there would be no window to refresh in",
        )
    return RefreshBefore(seconds=seconds, share=None)


def _verify(t: _Table, jwks_url: str | None) -> Verify | None:
    if not t.has("verify"):
        return None  # automatic, decided per token
    mode = t.choice("verify", _VERIFY_MODES, default="")
    if mode == "jwks" and jwks_url is None:
        raise t.error("verify", "verify = 'jwks' needs a JWKS URL: set jwks_url or auth0_domain")
    return cast("Verify", mode)


def _timeouts(t: _Table) -> tuple[float, float]:
    total = t.duration("timeout", default=ProfileConfig.timeout)
    # The default connect timeout shrinks with a short total one; only an
    # explicit connect_timeout above timeout is a mistake worth refusing.
    connect = t.duration("connect_timeout", default=min(ProfileConfig.connect_timeout, total))
    if connect > total:
        raise t.error(
            "connect_timeout",
            f"connect_timeout ({format_duration(connect)}) must not exceed "
            f"timeout ({format_duration(total)})",
        )
    return connect, total


def _backoff(t: _Table) -> BackoffConfig:
    base = t.duration("base", default=BackoffConfig.base)
    cap = t.duration("cap", default=BackoffConfig.cap)
    if base > cap:
        raise t.error(
            "base", f"base ({format_duration(base)}) must not exceed cap ({format_duration(cap)})"
        )
    return BackoffConfig(base=base, cap=cap)


def _breaker(t: _Table) -> BreakerConfig:
    return BreakerConfig(
        failures=t.integer("failures", default=BreakerConfig.failures, minimum=1),
        reset=t.duration("reset", default=BreakerConfig.reset),
    )


# --------------------------------------------------------------------------- sources


def config_from_mapping(data: Mapping[str, Any], *, source: str) -> Config:
    """Validate parsed TOML (or an equivalent dict) into a :class:`Config`.

    Raises:
        ConfigError: naming ``source``, the key path and the problem.
    """
    root = _Table(data, source=source, path="", allowed=_TOP_KEYS)
    return Config(
        profiles=_profiles(root),
        server=_server(root.table("server", _SERVER_KEYS)),
        cache=_cache(root.table("cache", _CACHE_KEYS)),
        source=source,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file.

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or invalid.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
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


_ENV_SOURCE = "environment"
_ENV_CONFIG = "TOKEN_SIDECAR_CONFIG"
_ENV_DOMAIN = "TOKEN_SIDECAR_AUTH0_DOMAIN"
_ENV_TOKEN_URL = "TOKEN_SIDECAR_TOKEN_URL"  # noqa: S105 - a variable name, not a token
_ENV_CLIENT_ID = "TOKEN_SIDECAR_CLIENT_ID"
_ENV_SECRET = "TOKEN_SIDECAR_CLIENT_SECRET"  # noqa: S105 - a variable name, not a secret
_ENV_SECRET_FILE = "TOKEN_SIDECAR_CLIENT_SECRET_FILE"  # noqa: S105 - a variable name
# Key path in the equivalent TOML -> the variable that sets it.
_ENV_KEYS = {
    "profiles.default.auth0_domain": _ENV_DOMAIN,
    "profiles.default.token_url": _ENV_TOKEN_URL,
    "profiles.default.client_id": _ENV_CLIENT_ID,
    "profiles.default.client_secret_file": _ENV_SECRET_FILE,
    "profiles.default.audience": "TOKEN_SIDECAR_AUDIENCE",
    "profiles.default.scope": "TOKEN_SIDECAR_SCOPE",
    "server.listen": "TOKEN_SIDECAR_LISTEN",
    "server.socket": "TOKEN_SIDECAR_SOCKET",
    "server.ops_listen": "TOKEN_SIDECAR_OPS_LISTEN",
}


def config_from_env(environ: Mapping[str, str]) -> Config | None:
    """The single profile ``default`` defined by ``TOKEN_SIDECAR_*`` variables, for Fly.io.

    The client secret stays in the environment: the profile refers to
    ``TOKEN_SIDECAR_CLIENT_SECRET`` by name and never holds its value.

    Returns:
        None when neither ``TOKEN_SIDECAR_AUTH0_DOMAIN`` nor ``TOKEN_SIDECAR_TOKEN_URL`` is set.

    Raises:
        ConfigError: with source ``environment`` and the variable name as key.
    """
    if _ENV_DOMAIN not in environ and _ENV_TOKEN_URL not in environ:
        return None
    _check_env_credentials(environ)
    data: dict[str, Any] = {}
    for key_path, variable in _ENV_KEYS.items():
        if variable in environ:
            *tables, name = key_path.split(".")
            node = data
            for table in tables:
                node = node.setdefault(table, {})
            node[name] = environ[variable]
    if _ENV_SECRET in environ:
        data["profiles"]["default"]["client_secret_env"] = _ENV_SECRET
    try:
        return config_from_mapping(data, source=_ENV_SOURCE)
    except ConfigError as exc:
        raise ConfigError(_ENV_SOURCE, _ENV_KEYS.get(exc.key, exc.key), exc.problem) from exc


def _check_env_credentials(environ: Mapping[str, str]) -> None:
    """The env-specific rules, worded in variable names rather than TOML keys."""
    for first, second in ((_ENV_DOMAIN, _ENV_TOKEN_URL), (_ENV_SECRET, _ENV_SECRET_FILE)):
        if first in environ and second in environ:
            raise ConfigError(_ENV_SOURCE, second, f"conflicts with {first}; set only one")
    if _ENV_CLIENT_ID not in environ:
        raise ConfigError(_ENV_SOURCE, _ENV_CLIENT_ID, "required")
    if _ENV_SECRET not in environ and _ENV_SECRET_FILE not in environ:
        raise ConfigError(
            _ENV_SOURCE, _ENV_SECRET, f"required: set {_ENV_SECRET} or {_ENV_SECRET_FILE}"
        )
    if environ.get(_ENV_SECRET) == "":
        raise ConfigError(_ENV_SOURCE, _ENV_SECRET, "must not be empty")


def resolve_config(path: str | None, environ: Mapping[str, str]) -> Config:
    """The config to run with: ``--config``, else ``TOKEN_SIDECAR_CONFIG``, else the environment.

    Raises:
        ConfigError: the chosen source is invalid, or there is no source at all.
    """
    if path:
        return load_config(path)
    if environ.get(_ENV_CONFIG):
        return load_config(environ[_ENV_CONFIG])
    config = config_from_env(environ)
    if config is None:
        raise ConfigError(
            _ENV_SOURCE,
            _ENV_CONFIG,
            f"no config: pass --config FILE, set {_ENV_CONFIG}, "
            f"or set {_ENV_DOMAIN}/{_ENV_TOKEN_URL}",
        )
    return config


# --------------------------------------------------------------------------- redacted view


def redacted(config: Config) -> dict[str, Any]:
    """The effective config as plain JSON-able data, for ``token-sidecar check``.

    Inline credentials show as ``"[redacted]"`` (an inline client id, which
    is not a secret, is shown); env and file references show where the
    value comes from. Durations are written the way the config writes them.
    """
    server, cache = config.server, config.cache
    return {
        "source": config.source,
        "server": {
            "listen": server.listen,
            "socket": _path_view(server.socket),
            "socket_mode": f"{server.socket_mode:04o}",
            "allow_uids": list(server.allow_uids),
            "ops_listen": server.ops_listen,
            "allow_non_loopback": server.allow_non_loopback,
            "access_log": server.access_log,
        },
        "cache": {
            "backend": cache.backend,
            "url": _url_view(cache.url),
            "namespace": cache.namespace,
            "key_file": _path_view(cache.key_file),
        },
        "profiles": {name: _profile_view(p) for name, p in config.profiles.items()},
    }


def _profile_view(p: ProfileConfig) -> dict[str, Any]:
    view: dict[str, Any] = {
        "token_url": _url_view(p.token_url),
        "issuer": p.issuer,
        "jwks_url": _url_view(p.jwks_url) if p.jwks_url else None,
        "client_id": p.client_id.value or p.client_id.describe(),
        "client_secret": _secret_view(p.client_secret),
        "client_auth": p.client_auth,
    }
    if p.client_auth == "private_key_jwt":
        view["private_key_file"] = _path_view(p.private_key_file)
        view["private_key_kid"] = p.private_key_kid
        view["assertion_alg"] = p.assertion_alg
        view["assertion_audience"] = p.effective_assertion_audience
    before = p.refresh_before
    return view | {
        "audience": p.audience,
        "resource": p.resource,
        "scope": p.scope,
        "extra_params": dict(p.extra_params),
        "required": p.required,
        "refresh_before": (
            format_duration(before.seconds)
            if before.seconds is not None
            else f"{(before.share or 0) * 100:g}%"
        ),
        "min_ttl": format_duration(p.min_ttl),
        "wait_timeout": format_duration(p.wait_timeout),
        "verify": p.verify or "auto",
        "allow_uids": None if p.allow_uids is None else list(p.allow_uids),
        "connect_timeout": format_duration(p.connect_timeout),
        "timeout": format_duration(p.timeout),
        "backoff": {"base": format_duration(p.backoff.base), "cap": format_duration(p.backoff.cap)},
        "breaker": {"failures": p.breaker.failures, "reset": format_duration(p.breaker.reset)},
    }


def _secret_view(ref: SecretRef | None) -> str | None:
    if ref is None:
        return None
    return _REDACTED if ref.value is not None else ref.describe()


def _path_view(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _url_view(url: str) -> str:
    """The URL with any password replaced (``redis://:pw@host`` keeps no ``pw``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{_REDACTED}@{host}"))
