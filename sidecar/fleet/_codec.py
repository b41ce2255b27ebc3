"""TokenCodec: how a shared token is stored, as an orjson record optionally sealed with AES-GCM.

A stored value starts with a 4-byte format tag:

- ``ts1p`` + JSON: plain (no ``key_file``);
- ``ts1e`` + 12-byte nonce + AES-256-GCM ciphertext: sealed with the key
  from ``[cache].key_file``; the Redis key is the associated data, so a
  value copied under another key does not open.

A value that cannot be read (wrong key, tampered, plain while a key is
configured, garbage) raises :class:`UnreadableValueError`; the cache treats
it as a miss. The key file holds 32 bytes, raw or base64.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sidecar.errors import ConfigError, UnreadableValueError
from sidecar.files import SECRET_LIMIT, read_small_file
from sidecar.fleet._cache import SharedToken
from sidecar.token import fingerprint

PLAIN = b"ts1p"
SEALED = b"ts1e"
KEY_BYTES = 32
NONCE_BYTES = 12
#: A stored token record is a few KiB; anything larger is not ours to parse.
MAX_VALUE = 64 * 1024


def load_key(path: Path, *, source: str) -> bytes:
    """Read a 32-byte AES key, raw or base64; anything else is a :class:`ConfigError`."""
    try:
        data = read_small_file(path, SECRET_LIMIT)
    except OSError as exc:
        raise ConfigError(source, "cache.key_file", f"cannot read {path}: {exc.strerror}") from None
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            key = decode(text)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise ConfigError(
        source, "cache.key_file", f"{path}: expected 32 bytes, raw or base64 (AES-256 key)"
    )


class TokenCodec:
    """Encodes shared tokens, sealing them when a key is given. The key never shows."""

    def __init__(self, key: bytes | None = None) -> None:
        self._aead = AESGCM(key) if key is not None else None

    @property
    def sealed(self) -> bool:
        return self._aead is not None

    def encode(self, token: SharedToken, *, aad: bytes) -> bytes:
        record = orjson.dumps(
            {
                "v": 1,
                "access_token": token.value,
                "token_type": token.token_type,
                "scope": token.scope,
                "obtained_at": token.obtained_at,
                "expires_at": token.expires_at,
                "fingerprint": token.fingerprint,
            }
        )
        if self._aead is None:
            return PLAIN + record
        nonce = os.urandom(NONCE_BYTES)
        return SEALED + nonce + self._aead.encrypt(nonce, record, aad)

    def decode(self, blob: bytes, *, aad: bytes) -> SharedToken:
        if len(blob) > MAX_VALUE:
            raise UnreadableValueError("malformed")
        tag, body = blob[:4], blob[4:]
        if tag == SEALED:
            if self._aead is None:
                raise UnreadableValueError("undecryptable")  # sealed, and we hold no key
            try:
                record = self._aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], aad)
            except InvalidTag:
                raise UnreadableValueError("undecryptable") from None
        elif tag == PLAIN:
            if self._aead is not None:
                # With a key configured, a plain value was not written by this fleet.
                raise UnreadableValueError("unencrypted")
            record = body
        else:
            raise UnreadableValueError("malformed")
        return _parse(record, sealed=tag == SEALED)

    def __repr__(self) -> str:
        return f"TokenCodec(sealed={self.sealed})"


def _parse(record: bytes, *, sealed: bool) -> SharedToken:
    try:
        data: Any = orjson.loads(record)
        token = SharedToken(
            value=_typed(data["access_token"], str),
            token_type=_typed(data["token_type"], str),
            scope=None if data.get("scope") is None else _typed(data["scope"], str),
            obtained_at=float(_typed(data["obtained_at"], int | float)),
            expires_at=float(_typed(data["expires_at"], int | float)),
            fingerprint=_typed(data["fingerprint"], str),
            sealed=sealed,
        )
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise UnreadableValueError("malformed") from None
    if fingerprint(token.value) != token.fingerprint:
        raise UnreadableValueError("malformed")
    return token


def _typed(value: Any, kind: Any) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(type(value).__name__)
    return value
