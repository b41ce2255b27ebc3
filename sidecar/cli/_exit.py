"""How a command ends: the exit codes, and the one stderr line of an expected failure."""

from __future__ import annotations

import contextlib
import sys

EXIT_OK = 0
#: A runtime failure: probe failed, port in use, sidecar unreachable, token unavailable.
EXIT_FAILURE = 1
#: Invalid configuration or usage.
EXIT_CONFIG = 2


def fail(message: str) -> None:
    """Print ``token-sidecar: MESSAGE`` on stderr, never a traceback."""
    with contextlib.suppress(OSError):
        sys.stderr.write(f"token-sidecar: {message}\n")
