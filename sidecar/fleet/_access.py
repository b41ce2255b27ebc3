"""RedisAccess: how fleet mode reaches its Redis: URL, TLS files, ACL user and password file.

Managed Redis means TLS (Upstash accepts nothing else) and a password
(Kubernetes Redis charts set one), so ``[cache]`` may name a CA bundle, a
client certificate, an ACL user and a password file. :meth:`RedisAccess.from_config`
reads every one of these files when the daemon starts, so a missing CA, a
certificate without its key, an encrypted key (OpenSSL would stop and ask a
terminal for its passphrase) or an empty password file ends the start with a
:class:`~sidecar.errors.ConfigError` (exit code 2) naming the key.

The password itself is read again for every new connection
(:class:`PasswordFile`), as profile credential files are read at every
request: a rotated Kubernetes Secret is used from the next reconnect on,
without a restart, and the value is held nowhere in between. It never
appears in a repr, a log line or ``/status``.

:func:`describe_failure` turns what the Redis client raised into the short,
secret-free :class:`~sidecar.fleet.CacheFailure` that logs and ``/status``
show (``tls``, ``auth``, ``timeout``, ``unreachable`` ...).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.credentials import CredentialProvider
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    OutOfMemoryError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.config import CacheConfig, url_credentials
from sidecar.errors import ConfigError
from sidecar.files import SECRET_LIMIT, TLS_FILE_LIMIT, check_small_file, read_small_text
from sidecar.fleet._cache import CacheFailure

#: A failure's detail is one line of a client error message; more is noise.
_DETAIL_LIMIT = 300


class PasswordFileError(Exception):
    """The password file cannot give a password; the message names the file, never a value."""


class PasswordFile(CredentialProvider):
    """The Redis ACL credentials, the password read from ``path`` at every new connection."""

    def __init__(self, path: Path, username: str | None = None) -> None:
        self.path = path
        self.username = username

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        try:
            password = read_password(self.path)
        except PasswordFileError as exc:
            # redis-py reports it like a refused login: the backend is down, kind "auth".
            raise AuthenticationError(f"password_file {exc}") from None
        return (password,) if self.username is None else (self.username, password)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        # A few bytes from a mounted Secret: reading them inline is cheaper than a thread.
        return self.get_credentials()

    def __repr__(self) -> str:
        return f"PasswordFile(path={str(self.path)!r}, username={self.username!r})"


def read_password(path: Path) -> str:
    """The password in ``path``, surrounding whitespace removed.

    Raises:
        PasswordFileError: unreadable, not UTF-8, or empty.
    """
    try:
        password = read_small_text(path, SECRET_LIMIT).strip()
    except OSError as exc:
        raise PasswordFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PasswordFileError(f"{path}: not UTF-8 text") from None
    if not password:
        raise PasswordFileError(f"{path}: the file is empty")
    return password


@dataclass(frozen=True, repr=False)
class RedisAccess:
    """Where the Redis is and how to prove who we are; built by :meth:`from_config`."""

    url: str
    username: str | None = None
    password_file: Path | None = None
    ssl_ca_file: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @classmethod
    def from_config(cls, cache: CacheConfig, *, source: str) -> RedisAccess:
        """The ``[cache]`` access settings, every file read once now.

        Raises:
            ConfigError: a file is missing or unreadable, a CA bundle holds no
                certificate, a client key is encrypted or does not match its
                certificate, or the password file is empty.
        """
        access = cls(
            url=cache.url,
            username=cache.username,
            password_file=cache.password_file,
            ssl_ca_file=cache.ssl_ca_file,
            ssl_certfile=cache.ssl_certfile,
            ssl_keyfile=cache.ssl_keyfile,
        )
        access._check_files(source)
        return access

    def _check_files(self, source: str) -> None:
        for name in ("ssl_ca_file", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None:
                _must_read(path, source=source, key=f"cache.{name}")
        context = ssl.create_default_context()
        if self.ssl_ca_file is not None:
            ca = self.ssl_ca_file
            with _tls_file_errors(source, "cache.ssl_ca_file", f"{ca}: not a PEM CA bundle"):
                context.load_verify_locations(cafile=ca)
        if self.ssl_certfile is not None and self.ssl_keyfile is not None:
            cert, key = self.ssl_certfile, self.ssl_keyfile
            # OpenSSL does not say which of the two is at fault: name both.
            problem = f"{cert} and {key}: not a PEM certificate and its private key"
            with _tls_file_errors(source, "cache.ssl_certfile", problem):
                context.load_cert_chain(cert, key, password=_refuse_passphrase)
        if self.password_file is not None:
            try:
                read_password(self.password_file)
            except PasswordFileError as exc:
                raise ConfigError(source, "cache.password_file", str(exc)) from None

    def client_options(self) -> tuple[str, dict[str, Any]]:
        """``(url, keyword arguments)`` for ``redis.asyncio.Redis.from_url``.

        With a password file the URL loses its user info (the user moves into
        the credential provider): redis-py refuses a user name or password
        next to a provider.
        """
        url, options = self.url, dict[str, Any]()
        if url.startswith("rediss://"):
            options |= {
                "ssl_cert_reqs": "required",
                "ssl_check_hostname": True,
                "ssl_ca_certs": _str_or_none(self.ssl_ca_file),
                "ssl_certfile": _str_or_none(self.ssl_certfile),
                "ssl_keyfile": _str_or_none(self.ssl_keyfile),
            }
        if self.password_file is not None:
            username = self.username or url_credentials(url).username
            options["credential_provider"] = PasswordFile(self.password_file, username)
            url = _without_credentials(url)
        elif self.username is not None:
            options["username"] = self.username
        return url, options

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    def __repr__(self) -> str:
        return (
            f"RedisAccess(tls={self.tls}, username={self.username!r}, "
            f"password_file={_str_or_none(self.password_file)!r})"
        )


def describe_failure(exc: BaseException) -> CacheFailure:
    """What went wrong talking to Redis, for logs and ``/status``: a kind and one line."""
    chain = list(_causes(exc))
    kind = "error"
    if any(isinstance(e, ssl.SSLError) for e in chain):
        kind = "tls"
    elif any(isinstance(e, AuthenticationError | NoPermissionError) for e in chain):
        kind = "auth"
    elif any(isinstance(e, OutOfMemoryError) for e in chain):
        kind = "out_of_memory"
    elif any(isinstance(e, TimeoutError | RedisTimeoutError) for e in chain):
        kind = "timeout"
    elif any(isinstance(e, OSError | RedisConnectionError) for e in chain):
        kind = "unreachable"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return CacheFailure(kind=kind, detail=detail[:_DETAIL_LIMIT])


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or during, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    query = [
        (name, value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if name not in {"username", "password"}
    ]
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


class _PassphraseRefusedError(Exception):
    """Raised in place of the terminal prompt OpenSSL would show for an encrypted key."""


def _refuse_passphrase() -> NoReturn:
    raise _PassphraseRefusedError


@contextlib.contextmanager
def _tls_file_errors(source: str, key: str, unusable: str) -> Iterator[None]:
    """Turn an unreadable or unusable TLS file into a ConfigError naming ``key``."""
    try:
        yield
    except _PassphraseRefusedError:
        raise ConfigError(
            source, key, "the private key is encrypted; give it unencrypted (a mounted Secret)"
        ) from None
    except ssl.SSLError as exc:
        raise ConfigError(source, key, f"{unusable} ({exc.reason or exc})") from None


def _must_read(path: Path, *, source: str, key: str) -> None:
    try:
        check_small_file(path, TLS_FILE_LIMIT)
    except OSError as exc:
        raise ConfigError(source, key, f"cannot read {path}: {exc.strerror or exc}") from None
