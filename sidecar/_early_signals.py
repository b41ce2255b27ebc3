"""The first thing ``token-sidecar`` does: keep a SIGHUP during start-up from killing it.

SIGHUP's default action ends the process. Until the daemon installs its own
handlers (after the imports and the config load, about a second), a config
reloader that signals at pod start would restart the container instead.
:func:`defer_sighup` records such a signal; the daemon reloads once when it is up.
"""

from __future__ import annotations

import signal
import types


class DeferredSighup:
    """Counts SIGHUPs that arrived before the daemon could act on them."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: types.FrameType | None) -> None:  # noqa: ARG002
        self.count += 1

    def take(self) -> int:
        """How many arrived since the last call; resets the count."""
        count, self.count = self.count, 0
        return count


EARLY_SIGHUP = DeferredSighup()


def defer_sighup() -> None:
    """Record SIGHUP instead of dying of it, until the daemon takes over the signal."""
    signal.signal(signal.SIGHUP, EARLY_SIGHUP)
