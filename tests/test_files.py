"""Every file the daemon is pointed at is read without blocking and within a bound.

A FIFO nobody writes to, ``/dev/zero``, a directory or a sparse 10 GiB file
at a configured path must be an error at once, never a read that waits
forever (ignoring SIGTERM) or fills the memory. Each reader is tried with
each of them. A watchdog opens every FIFO for writing after two seconds and
closes it, so a reader that would block forever fails its test instead of
hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.config import FileSecret, UpstreamConfig, load_config
from sidecar.credentials import CredentialStore
from sidecar.errors import ConfigError, CredentialsError
from sidecar.files import (
    SECRET_LIMIT,
    FileRefusedError,
    check_small_file,
    read_small_file,
    read_small_text,
)
from sidecar.fleet import load_key
from sidecar.fleet._access import PasswordFileError, read_password
from sidecar.proxy._client import tls_context
from tests.support.builders import make_profile

KEY = bytes(range(32))


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO nobody writes to; after 2 s a watchdog unblocks any reader stuck on it."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    done = threading.Event()

    def unblock() -> None:
        if done.wait(2.0):
            return
        with contextlib.suppress(OSError):  # no reader is stuck on it
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    watchdog = threading.Thread(target=unblock, daemon=True)
    watchdog.start()
    yield path
    done.set()
    watchdog.join()


@pytest.fixture
def sparse(tmp_path: Path) -> Path:
    """A 10 GiB file that takes no disk space: reading it whole would take 10 GiB of memory."""
    path = tmp_path / "sparse"
    with path.open("wb") as file:
        file.truncate(10 * 1024**3)
    return path


@pytest.fixture
def not_small_files(fifo: Path, sparse: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Name -> (path, the problem it must be refused with)."""
    zero = tmp_path / "zero"
    zero.symlink_to("/dev/zero")
    directory = tmp_path / "directory"
    directory.mkdir()
    return {
        "fifo": (fifo, "not a regular file"),
        "dev-zero": (zero, "not a regular file"),
        "directory": (directory, "not a regular file"),
        "sparse": (sparse, "larger than"),
    }


KINDS = ["fifo", "dev-zero", "directory", "sparse"]


# -- the reader itself -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_what_is_not_a_small_regular_file_is_refused(not_small_files, kind):
    path, problem = not_small_files[kind]
    with pytest.raises(FileRefusedError) as info:
        read_small_file(path, SECRET_LIMIT)
    assert problem in str(info.value.strerror)
    assert str(path) in str(info.value)


def test_a_file_at_the_bound_is_read_and_one_byte_more_is_not(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert read_small_file(path, 100) == b"x" * 100
    with pytest.raises(FileRefusedError, match="larger than 99 bytes"):
        read_small_file(path, 99)


def test_a_missing_file_is_the_usual_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_small_file(tmp_path / "missing", 10)


def test_a_kubernetes_secret_symlink_chain_is_followed(tmp_path):
    """A mounted Secret: key -> ..data/key, ..data -> ..2026_11_24/ (both links)."""
    version = tmp_path / "..2026_11_24"
    version.mkdir()
    (version / "client_secret").write_text("s3cret\n")
    (tmp_path / "..data").symlink_to(version.name)
    (tmp_path / "client_secret").symlink_to("..data/client_secret")
    assert read_small_text(tmp_path / "client_secret", SECRET_LIMIT) == "s3cret\n"
    check_small_file(tmp_path / "client_secret", SECRET_LIMIT)


# -- every reader of the daemon --------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_credential_file_that_is_not_small_is_a_credentials_error(idp, not_small_files, kind):
    path, problem = not_small_files[kind]
    store = CredentialStore(make_profile(idp, client_secret=FileSecret(path)))
    with pytest.raises(CredentialsError) as info:
        store.load()
    assert f"client_secret: cannot read {path}: {problem}" in str(info.value)


def test_a_credential_file_that_is_not_utf8_is_a_credentials_error(idp, tmp_path):
    path = tmp_path / "latin1"
    path.write_bytes(b"caf\xe9")
    store = CredentialStore(make_profile(idp, client_secret=FileSecret(path)))
    with pytest.raises(CredentialsError, match="is not UTF-8 text"):
        store.load()


@pytest.mark.parametrize("kind", KINDS)
def test_a_redis_password_file_that_is_not_small_is_refused(not_small_files, kind):
    path, problem = not_small_files[kind]
    with pytest.raises(PasswordFileError, match=problem):
        read_password(path)


@pytest.mark.parametrize("kind", KINDS)
def test_a_key_file_that_is_not_small_is_a_config_error(not_small_files, kind):
    path, problem = not_small_files[kind]
    with pytest.raises(ConfigError) as info:
        load_key(path, source="c.toml")
    assert (info.value.source, info.value.key) == ("c.toml", "cache.key_file")
    assert problem in info.value.problem


@pytest.mark.parametrize("kind", KINDS)
def test_an_upstream_ca_file_that_is_not_small_is_refused_before_openssl(not_small_files, kind):
    path, problem = not_small_files[kind]
    upstream = UpstreamConfig(
        name="api", base_url="https://api.example.com/", profile="api", ca_file=path
    )
    with pytest.raises(FileRefusedError, match=problem):
        tls_context(upstream)


@pytest.mark.parametrize("kind", KINDS)
def test_a_config_file_that_is_not_small_is_a_config_error(not_small_files, kind):
    path, problem = not_small_files[kind]
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.problem.startswith(f"cannot read the file: {problem}")


def test_check_of_a_fifo_config_exits_2_at_once(fifo):
    """The command does not wait for a writer: exit 2 naming the file and the problem."""
    done = subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "-m", "sidecar", "check", "--config", str(fifo)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert str(fifo) in done.stderr
    assert "cannot read the file: not a regular file" in done.stderr


def test_every_reader_is_covered() -> None:
    """The daemon reads configured files only through sidecar.files (or the persist wrapper)."""
    root = Path(__file__).resolve().parents[1] / "sidecar"
    readers: list[str] = []
    allowed: dict[str, Callable[[str], bool]] = {
        # reads /proc of a child process in the test helpers, not a configured path
        "testing/_process.py": lambda line: "/proc/" in line,
    }
    for source in sorted(root.rglob("*.py")):
        relative = source.relative_to(root).as_posix()
        for line in source.read_text(encoding="utf-8").splitlines():
            reads = ".read_text(" in line or ".read_bytes(" in line
            if reads and not allowed.get(relative, lambda _: False)(line):
                readers.append(f"{relative}: {line.strip()}")
    assert readers == []
