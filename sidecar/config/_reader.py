"""Reading config values: a TOML table that tracks its key path, and the value parsers.

:class:`Table` is how every section reader sees its table: it refuses unknown
keys (suggesting the key that was probably meant) and turns each bad value into
a :class:`~sidecar.errors.ConfigError` naming the dotted key path. The parsers
here know durations (``"1h30m"``, ``"500ms"``), ``HOST:PORT`` addresses
(:func:`read_address`), http(s) URLs (:func:`read_http_url`) and keys of which
at most one may be set (:func:`one_of`); they never echo the value of a
credential.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from sidecar.config._model import is_loopback_host
from sidecar.errors import ConfigError

#: The patterns values are matched with whole; the JSON Schema uses them too.
ENV_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
DURATION_PATTERN = r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+"
SIZE_PATTERN = r"(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?"
_ENV_NAME = re.compile(ENV_NAME_PATTERN)
_DURATION = re.compile(DURATION_PATTERN)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(SIZE_PATTERN)
_UNIT_BYTES = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 1000**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "GiB": 1024**3,
}


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


# --------------------------------------------------------------------------- sizes


def parse_size(value: object, *, source: str, key: str) -> int:
    """Parse ``"64KiB"``, ``"1MiB"``, ``"500KB"``, ``"512B"`` or a number of bytes.

    Raises:
        ConfigError: the value is not a size, or is negative.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(source, key, "must not be negative")
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        shown = f"got {value!r}" if isinstance(value, str) else f"got a {_toml_type(value)}"
        raise ConfigError(
            source,
            key,
            f'expected a size such as "64KiB", "1MiB", "500KB" or a number of bytes; {shown}',
        )
    return int(match.group(1)) * _UNIT_BYTES[match.group(2)]


def format_size(size: int) -> str:
    """Render bytes the way the config writes them (``65536`` -> ``"64KiB"``); round-trips."""
    for unit in ("GiB", "MiB", "KiB"):
        scale = _UNIT_BYTES[unit]
        if size and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}B"


# --------------------------------------------------------------------------- the reader


class Table:
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

    def integer(self, name: str, *, default: int, minimum: int, maximum: int | None = None) -> int:
        value = self._data.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(name, "expected an integer")
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise self.error(name, f"must be at most {maximum}")
        return value

    def duration(self, name: str, *, default: float, allow_zero: bool = False) -> float:
        if name not in self._data:
            return default
        return parse_duration(
            self._data[name], source=self.source, key=self.key(name), allow_zero=allow_zero
        )

    def size(self, name: str, *, default: int) -> int:
        if name not in self._data:
            return default
        return parse_size(self._data[name], source=self.source, key=self.key(name))

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

    def named_tables(
        self, name: str, *, kind: str, pattern: str, allowed: Collection[str]
    ) -> Iterator[tuple[str, Table]]:
        """Each ``[NAME.X]`` table under ``name``, its name checked against ``pattern``.

        ``kind`` names what the tables are ("profile", "upstream") in the error
        about a bad name.
        """
        checker = re.compile(pattern)
        for sub, body in self.mapping(name).items():
            path = f"{name}.{sub}"
            if not checker.fullmatch(sub):
                raise self.error(
                    path,
                    f"invalid {kind} name: it must match {pattern} "
                    "(lowercase letters, digits, '-' and '_', at most 63 characters)",
                )
            if not isinstance(body, dict):
                raise self.error(path, "expected a table")
            yield sub, Table(body, source=self.source, path=path, allowed=allowed)

    def mapping(self, name: str) -> Mapping[str, Any]:
        value = self._data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, "expected a table")
        return cast("Mapping[str, Any]", value)

    def table(self, name: str, allowed: Collection[str]) -> Table:
        return Table(self.mapping(name), source=self.source, path=self.key(name), allowed=allowed)


def _unknown_key_problem(name: str, allowed: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(allowed), n=1)
    return f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"


def _is_uid(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _toml_type(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "list"}
    return "table" if isinstance(value, dict) else names.get(type(value), type(value).__name__)


def one_of(t: Table, names: tuple[str, ...]) -> str | None:
    """The one key of ``names`` that is set, or None; refuses two."""
    given = [name for name in names if t.has(name)]
    if len(given) > 1:
        choices = ", ".join(names)
        raise t.error(given[1], f"conflicts with {given[0]}; set only one of {choices}")
    return given[0] if given else None


# --------------------------------------------------------------------------- addresses


def read_http_url(t: Table, name: str, clear_text_risk: str) -> str | None:
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
    if parts.scheme == "http" and not is_loopback_host(host):
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


def read_address(t: Table, name: str, *, default: str | None) -> tuple[str | None, str]:
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
