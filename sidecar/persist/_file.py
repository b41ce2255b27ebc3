"""The cold-start file on disk: its format, a bounded read, and an atomic, private write.

The file is one JSON object::

    {"format": "token-sidecar-tokens", "version": 1,
     "entries": {"<H>": "<base64 of a sealed TokenCodec value>", ...}}

``H`` is the SHA-256 (hex) of a token identity
(:func:`~sidecar.fleet.identity_of`: token endpoint, client, audience,
resource, scope, extra parameters). Each value is a
:class:`~sidecar.fleet.TokenCodec` value sealed with AES-256-GCM under
``[cache].key_file``, with :func:`entry_aad` as associated data: a value
moved under another identity, or copied from Redis (whose associated data is
the Redis key), does not open. The JSON around the values holds no secret
and is not authenticated: whoever can write the file can delete entries or
put back an older file, never forge an entry.

Nothing here knows asyncio: the daemon runs :func:`write_atomic` in a thread.
"""

from __future__ import annotations

import base64
import binascii
import glob
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from sidecar.errors import UnreadableValueError
from sidecar.files import FileRefusedError, read_small_file

FORMAT = "token-sidecar-tokens"
VERSION = 1
#: A file holds one entry per profile, a few KiB each; anything larger is not ours.
MAX_FILE_BYTES = 1024 * 1024
#: Seconds after which a temporary file of a write is taken to be a crashed write's.
STALE_TEMPORARY = 600.0
#: The mode of every file written: the owner reads and writes, nobody else.
FILE_MODE = 0o600
_HASH = re.compile(r"[0-9a-f]{64}")
_AAD_PREFIX = b"token-sidecar persist v1\n"


def identity_hash(identity: str) -> str:
    """The key of an identity's entry in the file."""
    return hashlib.sha256(identity.encode()).hexdigest()


def entry_aad(key: str) -> bytes:
    """The associated data an entry is sealed with: binds it to the file and its identity."""
    return _AAD_PREFIX + key.encode()


def encode_file(entries: Mapping[str, bytes]) -> bytes:
    """The file's bytes for ``entries`` (identity hash -> sealed value)."""
    document = {
        "format": FORMAT,
        "version": VERSION,
        "entries": {key: base64.b64encode(blob).decode() for key, blob in entries.items()},
    }
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)


def decode_file(data: bytes) -> dict[str, bytes]:
    """The entries of a file's bytes (identity hash -> sealed value, not yet opened).

    Raises:
        UnreadableValueError: reason ``malformed``: not this format, or an entry
            that is not a hash and a base64 string.
    """
    try:
        document: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UnreadableValueError("malformed", "not JSON") from None
    if (
        not isinstance(document, dict)
        or document.get("format") != FORMAT
        or not isinstance(document.get("entries"), dict)
    ):
        raise UnreadableValueError("malformed", f"not a {FORMAT} file")
    version = document.get("version")
    if version != VERSION:
        raise UnreadableValueError("malformed", f"unknown version {str(version)[:16]}")
    entries: dict[str, bytes] = {}
    for key, value in document["entries"].items():
        if not _HASH.fullmatch(key) or not isinstance(value, str):
            raise UnreadableValueError("malformed", "an entry is not a hash and a string")
        try:
            entries[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise UnreadableValueError("malformed", "an entry is not base64") from None
    return entries


def read_bounded(path: Path, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """The bytes of the regular file at ``path``, or None when there is none yet.

    Reads at most ``limit`` bytes: a larger file is refused without being read
    whole. A FIFO, device or directory is refused without blocking on it.

    Raises:
        UnreadableValueError: reason ``malformed`` (too large, not a regular file).
        OSError: it exists but cannot be read (permissions, I/O).
    """
    try:
        return read_small_file(path, limit)
    except FileNotFoundError:
        return None
    except FileRefusedError as exc:
        raise UnreadableValueError("malformed", exc.strerror) from None


def remove_stale_temporaries(path: Path, now: float) -> int:
    """Remove what crashed writes of ``path`` left behind; the number removed.

    :func:`write_atomic` names its temporary file ``.NAME.*.tmp`` beside
    ``path`` and removes it on every failure it sees, but a process killed
    mid-write leaves it. Only regular files (never a symbolic link) older
    than :data:`STALE_TEMPORARY` seconds are removed: a younger one may be
    another process's write in progress.
    """
    removed = 0
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return 0
    for candidate in candidates:
        try:
            info = candidate.lstat()
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime > STALE_TEMPORARY:
                candidate.unlink()
                removed += 1
        except OSError:
            continue  # gone meanwhile, or not ours to remove
    return removed


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a reader sees the old file or the new one, never a mix.

    The data goes to a new temporary file in the same directory (mode 0600
    whatever the umask), is flushed to disk, and is renamed over ``path``;
    then the directory is flushed, so the rename survives a crash too. On
    failure the temporary file is removed and ``path`` is left as it was.

    Raises:
        OSError: any step failed.
    """
    directory = path.parent
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), FILE_MODE)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
