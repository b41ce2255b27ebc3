"""Daemon helpers: socket paths are reclaimed only when provably dead."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.daemon import prepare_socket_path, split_host_port
from sidecar.errors import ListenError


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tsd-", dir="/tmp"))
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def test_dead_socket_is_replaced(short_dir):
    """A socket file nobody listens on (left by a crash) is removed."""
    path = short_dir / "s"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    prepare_socket_path(path)
    assert not path.exists()


def test_live_socket_is_refused(short_dir):
    """A socket another process serves on is never taken over."""
    path = short_dir / "s"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen()
        with pytest.raises(ListenError, match="another process"):
            prepare_socket_path(path)
    assert path.exists()


def test_regular_file_is_never_deleted(short_dir):
    """A path that is not a socket is refused and left alone."""
    path = short_dir / "s"
    path.write_text("important")
    with pytest.raises(ListenError, match="not a socket"):
        prepare_socket_path(path)
    assert path.read_text() == "important"


def test_missing_parent_is_created(short_dir):
    """The socket's directory is created when missing."""
    path = short_dir / "sub" / "s"
    prepare_socket_path(path)
    assert path.parent.is_dir()
    path.parent.rmdir()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8700", ("127.0.0.1", 8700)),
        ("[::1]:9", ("::1", 9)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_split_host_port(value, expected):
    """Listen addresses split into host and port, IPv6 brackets removed."""
    assert split_host_port(value) == expected
