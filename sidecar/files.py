"""Reading the small files the daemon is pointed at, without blocking and within a bound.

Every path in the config names a small file: a secret, a key, a CA bundle,
the config itself. A path that names something else (a FIFO nobody writes
to, ``/dev/zero``, a directory, a 10 GiB sparse file) must give a clear
error at once, never a read that waits forever or fills the memory. So a
file is opened with ``O_NONBLOCK`` (opening a FIFO does not wait for a
writer), checked to be a regular file on the open descriptor (no race with a
swapped path), and read up to its bound.

Symbolic links are followed: a Kubernetes Secret volume is a chain of them.
"""

from __future__ import annotations

import errno
import os
import stat

#: A client secret, password or private key: a few KiB at most.
SECRET_LIMIT = 64 * 1024
#: A config file: a few KiB, many profiles and upstreams included.
CONFIG_LIMIT = 1024 * 1024
#: A CA bundle or certificate chain (the system bundle is about 200 KiB).
TLS_FILE_LIMIT = 4 * 1024 * 1024
_CHUNK = 64 * 1024


class FileRefusedError(OSError):
    """The path names something that is not a small regular file.

    ``strerror`` says why ("not a regular file", "larger than N bytes"), so
    callers that report ``exc.strerror`` of any OSError need nothing new.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(errno.EINVAL, reason, str(path))


def read_small_file(
    path: str | os.PathLike[str], limit: int, *, follow_symlinks: bool = True
) -> bytes:
    """The bytes of the regular file at ``path``, refused when larger than ``limit``.

    Raises:
        FileRefusedError: not a regular file, or larger than ``limit``.
        OSError: it cannot be opened or read (missing, permissions, I/O);
            ``ELOOP`` when ``path`` is a symbolic link and ``follow_symlinks`` is false.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags if follow_symlinks else flags | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefusedError(path, "not a regular file")
        if info.st_size > limit:
            raise FileRefusedError(path, f"larger than {limit} bytes")
        chunks, left = [], limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, _CHUNK))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:  # it grew between fstat and read
        raise FileRefusedError(path, f"larger than {limit} bytes")
    return data


def read_small_text(
    path: str | os.PathLike[str], limit: int, *, follow_symlinks: bool = True
) -> str:
    """:func:`read_small_file` decoded as UTF-8.

    Raises:
        FileRefusedError, OSError: as :func:`read_small_file`.
        UnicodeDecodeError: not UTF-8.
    """
    return read_small_file(path, limit, follow_symlinks=follow_symlinks).decode("utf-8")


def check_small_file(path: str | os.PathLike[str], limit: int) -> None:
    """Refuse ``path`` unless it is a readable regular file of at most ``limit`` bytes.

    For files another library reads after us (OpenSSL's loaders), so that it
    is never handed a FIFO or a device to block on.

    Raises:
        FileRefusedError, OSError: as :func:`read_small_file`.
    """
    read_small_file(path, limit)
