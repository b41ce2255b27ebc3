"""Client credentials: read from a file, an env var or inline, and watched for change.

Kubernetes swaps a mounted Secret atomically by re-pointing a ``..data``
symlink, so a credential file is identified by the content it resolves to,
not by its path: :meth:`CredentialStore.changed` compares a digest of every
file-backed credential with the one last loaded. Values are held in
:class:`Secret`, whose repr never shows them.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt

from sidecar.clock import Clock
from sidecar.config import EnvSecret, FileSecret, InlineSecret, ProfileConfig, SecretRef
from sidecar.errors import CredentialsError
from sidecar.files import SECRET_LIMIT, read_small_text

#: Lifetime of a client assertion: Auth0 accepts at most 5 min and recommends 1.
ASSERTION_LIFETIME = 60


class Secret:
    """A secret string that never shows itself in a repr, str or log."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The value, for the one place that must send it to the IdP."""
        return self._value

    def __repr__(self) -> str:
        return "Secret([secure])"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Credentials:
    """What a token request authenticates with; ``version`` changes with any value."""

    client_id: str
    client_secret: Secret | None
    private_key: Secret | None  # PEM text
    version: str

    def __repr__(self) -> str:
        return f"Credentials(client_id={self.client_id!r}, version={self.version[:8]!r})"


#: Stands for "the last load failed": any readable credentials differ from it.
_UNREADABLE = Credentials(client_id="", client_secret=None, private_key=None, version="")


class CredentialStore:
    """Loads a profile's credentials and tells when their files changed."""

    def __init__(self, profile: ProfileConfig, environ: Mapping[str, str] | None = None) -> None:
        self._profile = profile
        self._environ = environ if environ is not None else os.environ
        self._loaded: Credentials | None = None

    @property
    def watches_files(self) -> bool:
        """Whether any credential is file-backed (and so worth watching)."""
        return bool(self._files())

    def load(self) -> Credentials:
        """Read every credential now; raise :class:`CredentialsError` naming what failed."""
        try:
            creds = self._read_all()
        except CredentialsError:
            self._loaded = _UNREADABLE
            raise
        self._loaded = creds
        return creds

    def changed(self) -> bool:
        """Whether reading the credentials now would give other values than last time.

        A file that could not be read at the last load counts as changed as
        soon as it reads, so a Secret mounted after start is used at once.
        """
        if self._loaded is None or not self._files():
            return False
        try:
            current = self._read_all()
        except CredentialsError:
            # A file mid-swap or still missing is not a change worth acting on;
            # the next refresh reads it again and reports a real problem.
            return False
        return current.version != self._loaded.version

    def _read_all(self) -> Credentials:
        p = self._profile
        client_id = self._read(p.client_id, "client_id")
        secret = self._read(p.client_secret, "client_secret") if p.client_secret else None
        key = None
        if p.private_key_file is not None:
            key = self._read(FileSecret(p.private_key_file), "private_key_file")
        digest = hashlib.sha256()
        for part in (client_id, secret or "", key or ""):
            digest.update(hashlib.sha256(part.encode()).digest())
        return Credentials(
            client_id=client_id,
            client_secret=Secret(secret) if secret is not None else None,
            private_key=Secret(key) if key is not None else None,
            version=digest.hexdigest(),
        )

    def _files(self) -> list[Path]:
        p = self._profile
        files = [ref.path for ref in (p.client_id, p.client_secret) if isinstance(ref, FileSecret)]
        return files if p.private_key_file is None else [*files, p.private_key_file]

    def _read(self, ref: SecretRef, key: str) -> str:
        match ref:
            case InlineSecret(inline):
                return inline
            case EnvSecret(name):
                value = self._environ.get(name)
                if not value:
                    raise CredentialsError(f"{key}: environment variable {name} is not set")
                return value.strip()
            case FileSecret(path):
                try:
                    value = read_small_text(path, SECRET_LIMIT).strip()
                except OSError as exc:
                    raise CredentialsError(f"{key}: cannot read {path}: {exc.strerror}") from None
                except UnicodeDecodeError:
                    raise CredentialsError(f"{key}: {path} is not UTF-8 text") from None
                if not value:
                    raise CredentialsError(f"{key}: {path} is empty")
                return value


def client_assertion(profile: ProfileConfig, creds: Credentials, clock: Clock) -> str:
    """A fresh RFC 7523 client assertion: new ``jti`` every call, 60 s lifetime."""
    if creds.private_key is None:
        raise CredentialsError("private_key_jwt needs private_key_file")
    now = int(clock.time())
    claims = {
        "iss": creds.client_id,
        "sub": creds.client_id,
        "aud": profile.effective_assertion_audience,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
    }
    headers = {"kid": profile.private_key_kid} if profile.private_key_kid else None
    try:
        return jwt.encode(
            claims, creds.private_key.reveal(), algorithm=profile.assertion_alg, headers=headers
        )
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        # The message of a key parsing error names the problem, never the key.
        raise CredentialsError(f"private_key_file: cannot sign an assertion: {exc}") from None
