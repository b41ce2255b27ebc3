"""The cold-start file on disk: its format, the bounded read and the atomic, private write."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from sidecar.errors import UnreadableValueError
from sidecar.fleet import SharedToken, TokenCodec
from sidecar.persist import (
    FILE_MODE,
    MAX_FILE_BYTES,
    decode_file,
    encode_file,
    entry_aad,
    identity_hash,
    read_bounded,
    write_atomic,
)
from sidecar.token import fingerprint

KEY = bytes(range(32))
VALUE = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlLUxFQUtDQU5BUlk"


def shared(value: str = VALUE) -> SharedToken:
    return SharedToken(
        value=value,
        token_type="Bearer",
        scope="read:tools",
        obtained_at=1_000.0,
        expires_at=4_600.0,
        fingerprint=fingerprint(value),
    )


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """The loosest umask a container may run with: files would be world-writable."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


# -- the format -----------------------------------------------------------------


def test_entries_round_trip_and_open_only_under_their_identity():
    """An entry sealed for one identity opens under it, and under no other."""
    codec = TokenCodec(KEY)
    key, other = identity_hash("identity-a"), identity_hash("identity-b")
    data = encode_file({key: codec.encode(shared(), aad=entry_aad(key))})
    entries = decode_file(data)
    assert list(entries) == [key]
    opened = codec.decode(entries[key], aad=entry_aad(key))
    assert opened.value == VALUE
    assert opened.sealed
    with pytest.raises(UnreadableValueError) as info:
        codec.decode(entries[key], aad=entry_aad(other))
    assert info.value.reason == "undecryptable"


def test_the_file_holds_no_token_in_clear():
    """The bytes on disk contain neither the token nor any part of it; the key opens it."""
    codec = TokenCodec(KEY)
    key = identity_hash("identity-a")
    data = encode_file({key: codec.encode(shared(), aad=entry_aad(key))})
    for part in (VALUE, *VALUE.split(".")):
        assert part.encode() not in data
    # Positive control: the same bytes, opened with the key, hold the token.
    blob = base64.b64decode(orjson.loads(data)["entries"][key])
    assert codec.decode(blob, aad=entry_aad(key)).value == VALUE


def test_file_names_its_format_and_version():
    """A reader can tell what the file is without the key."""
    document = orjson.loads(encode_file({}))
    assert document == {"format": "token-sidecar-tokens", "version": 1, "entries": {}}


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"\x00\xffgarbage", "not JSON"),
        (b"[]", "not a token-sidecar-tokens file"),
        (b'{"format": "other", "version": 1, "entries": {}}', "not a token-sidecar-tokens file"),
        (b'{"format": "token-sidecar-tokens", "version": 2, "entries": {}}', "unknown version 2"),
        (
            b'{"format": "token-sidecar-tokens", "version": 1, "entries": {"abc": "AAAA"}}',
            "an entry is not a hash and a string",
        ),
        (
            b'{"format": "token-sidecar-tokens", "version": 1, "entries": {"'
            + b"a" * 64
            + b'": "not base64!"}}',
            "an entry is not base64",
        ),
    ],
)
def test_garbage_is_malformed(data: bytes, detail: str):
    """Anything but this format is refused as malformed, saying why."""
    with pytest.raises(UnreadableValueError) as info:
        decode_file(data)
    assert info.value.reason == "malformed"
    assert info.value.detail == detail


# -- the bounded read -------------------------------------------------------------


def test_a_missing_file_is_none(tmp_path: Path):
    """The first start has no file: that is no error."""
    assert read_bounded(tmp_path / "tokens") is None


def test_a_huge_file_is_refused_after_reading_at_most_the_limit(tmp_path: Path):
    """A sparse 4 GiB file is refused as malformed; only the limit plus one byte is read."""
    path = tmp_path / "tokens"
    with path.open("wb") as file:
        file.truncate(4 * 1024**3)
    with pytest.raises(UnreadableValueError) as info:
        read_bounded(path)
    assert info.value.reason == "malformed"
    assert info.value.detail == f"larger than {MAX_FILE_BYTES} bytes"
    # Positive control: a file of exactly the limit is read.
    with path.open("r+b") as file:
        file.truncate(MAX_FILE_BYTES)
    data = read_bounded(path)
    assert data is not None
    assert len(data) == MAX_FILE_BYTES


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_fifo_or_directory_is_refused_without_blocking(tmp_path: Path, kind: str):
    """A FIFO with no writer, or a directory, at the path is refused at once."""
    path = tmp_path / "tokens"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(UnreadableValueError) as info:
        read_bounded(path)
    assert info.value.reason == "malformed"
    assert info.value.detail == "not a regular file"


# -- the atomic write -------------------------------------------------------------


@pytest.mark.usefixtures("umask_zero")
def test_written_file_is_0600_whatever_the_umask(tmp_path: Path):
    """Even with umask 0 the file is readable and writable by its owner alone."""
    path = tmp_path / "tokens"
    write_atomic(path, b"first")
    assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE == 0o600
    assert path.read_bytes() == b"first"


@pytest.mark.usefixtures("umask_zero")
def test_a_loose_file_is_replaced_by_a_0600_one(tmp_path: Path):
    """A file someone made world-readable is replaced, not rewritten in place."""
    path = tmp_path / "tokens"
    path.write_bytes(b"old")
    path.chmod(0o666)
    write_atomic(path, b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == b"new"


def test_write_replaces_by_rename_so_a_reader_keeps_the_whole_old_file(tmp_path: Path):
    """A reader that opened the old file reads it whole; the path then holds the new one."""
    path = tmp_path / "tokens"
    write_atomic(path, b"old contents")
    old_inode = path.stat().st_ino
    with path.open("rb") as reader:
        write_atomic(path, b"new contents, longer than the old")
        assert reader.read() == b"old contents"
    assert path.read_bytes() == b"new contents, longer than the old"
    assert path.stat().st_ino != old_inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens"]  # no temporary left


def test_a_failed_write_leaves_the_path_as_it_was_and_no_temporary(tmp_path: Path):
    """When the rename fails, the error is raised, the target is untouched, the temp is gone."""
    path = tmp_path / "tokens"
    path.mkdir()  # a non-empty directory where the file should go: the rename fails
    (path / "keep").write_bytes(b"kept")
    with pytest.raises(OSError, match="directory"):
        write_atomic(path, b"data")
    assert (path / "keep").read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens"]


def test_a_write_into_a_missing_directory_raises(tmp_path: Path):
    """A directory that vanished is an OSError for the caller to log, not a crash here."""
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "gone" / "tokens", b"data")
