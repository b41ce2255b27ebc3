"""TokenFile: the cold-start file of one daemon, read once at start and rewritten after changes.

At start :meth:`TokenFile.load` reads the file (bounded; a missing, huge or
garbage file is logged and ignored) and :meth:`TokenFile.stored` opens the
entry of one token identity. Opening proves only that a holder of the key
wrote it: each refresher then vets the token like one from the fleet cache
before serving it (see :meth:`~sidecar.refresher.ProfileRefresher.restore`).

After start, every change of a held token calls :meth:`TokenFile.changed`;
one owned writer task then writes what the daemon holds (a snapshot), in a
thread, replacing the file atomically. Changes that arrive during a write
are coalesced into the next one. A failed write is logged and counted, never
raised: the file only helps the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from sidecar.clock import Clock, cancel_and_wait
from sidecar.errors import UnreadableValueError
from sidecar.fleet import SharedToken, TokenCodec
from sidecar.metrics import Metrics
from sidecar.persist._file import (
    decode_file,
    encode_file,
    entry_aad,
    identity_hash,
    read_bounded,
    remove_stale_temporaries,
    write_atomic,
)
from sidecar.token import HeldToken

log = logging.getLogger("sidecar.persist")

#: What the daemon holds: (token identity, token) for each profile holding one.
Snapshot = Callable[[], Iterable[tuple[str, HeldToken]]]
#: Real seconds a last write may take when the daemon stops (within its 5 s grace).
CLOSE_GRACE = 2.0


class TokenFile:
    """The cold-start file: only sealed values; a bad file or a failed write is never raised."""

    def __init__(self, path: Path, codec: TokenCodec, *, clock: Clock, metrics: Metrics) -> None:
        if not codec.sealed:
            raise ValueError("the cold-start file is written only sealed: give the codec a key")
        self.path = path
        self._codec = codec
        self._clock = clock
        self._metrics = metrics
        self._entries: dict[str, bytes] = {}
        self._snapshot: Snapshot | None = None
        self._written: frozenset[tuple[str, str]] | None = None  # (key, fingerprint) on disk
        self._pending = False
        self._closing = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        metrics.add_persistence()

    # -- reading, at start ---------------------------------------------------

    def load(self) -> None:
        """Read the file's entries; a missing, unreadable, huge or garbage file leaves none.

        Also removes the temporary files of writes that a crash interrupted.
        """
        removed = remove_stale_temporaries(self.path, self._clock.time())
        if removed:
            log.info(
                "persist.temporaries_removed", extra={"path": str(self.path), "files": removed}
            )
        try:
            data = read_bounded(self.path)
            if data is None:
                log.info("persist.file_absent", extra={"path": str(self.path)})
                return
            self._entries = decode_file(data)
        except UnreadableValueError as exc:
            self._file_unreadable(exc.reason, exc.detail or exc.reason)
            return
        except OSError as exc:
            self._file_unreadable("unreadable", exc.strerror or type(exc).__name__)
            return
        log.info("persist.loaded", extra={"path": str(self.path), "entries": len(self._entries)})

    def _file_unreadable(self, reason: str, detail: str) -> None:
        self._metrics.persist_restore.labels(reason).inc()
        log.warning(
            "persist.file_unreadable",
            extra={"path": str(self.path), "reason": reason, "detail": detail},
        )

    def stored(self, identity: str, *, profile: str) -> SharedToken | None:
        """The stored token of ``identity``, opened but not vetted; None when there is none.

        An entry that does not open (another key, tampered, written in clear)
        is logged and counted, and is no token.
        """
        key = identity_hash(identity)
        blob = self._entries.get(key)
        if blob is None:
            return None
        try:
            return self._codec.decode(blob, aad=entry_aad(key))
        except UnreadableValueError as exc:
            self._metrics.persist_restore.labels(exc.reason).inc()
            log.warning(
                "persist.entry_unreadable",
                extra={"path": str(self.path), "profile": profile, "reason": exc.reason},
            )
            return None

    # -- writing, after each change --------------------------------------------

    def start(self, snapshot: Snapshot) -> None:
        """Start the writer; from now on :meth:`changed` leads to a write of ``snapshot()``."""
        self._snapshot = snapshot
        self._entries = {}  # read once: what is held from now on is in the snapshot
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="persist:writer")

    def changed(self) -> None:
        """A held token changed: write the file soon (coalesced with other changes)."""
        self._pending = True
        self._idle.clear()
        self._wake.set()

    async def settled(self) -> None:
        """Return once no change waits to be written (the last write is done, or failed)."""
        await self._idle.wait()

    async def aclose(self) -> None:
        """Write what is pending (bounded by :data:`CLOSE_GRACE`), then stop the writer."""
        task, self._task = self._task, None
        if task is None:
            return
        self._closing = True
        self._wake.set()
        # Not cancelled while it writes: a cancelled thread write would finish on
        # its own later, and could then replace a newer file.
        await asyncio.wait({task}, timeout=CLOSE_GRACE)
        await cancel_and_wait(task, timeout=CLOSE_GRACE)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending:
                self._pending = False
                try:
                    await self.write()
                except Exception:
                    # The writer must outlive a bug in one write: it is logged with
                    # its traceback and counted, and the next change tries again.
                    self._metrics.persist_writes.labels("error").inc()
                    log.exception("persist.write_crashed", extra={"path": str(self.path)})
            if not self._pending:
                self._idle.set()
            if self._closing:
                return

    async def write(self) -> bool:
        """Write the snapshot now unless the file already holds exactly it; False on failure."""
        if self._snapshot is None:
            raise RuntimeError("TokenFile.write before start")
        wall = self._clock.time()
        held = {identity_hash(i): t for i, t in self._snapshot() if t.expires_at_wall > wall}
        contents = frozenset((key, token.fingerprint) for key, token in held.items())
        if contents == self._written:
            return True
        data = encode_file(
            {
                key: self._codec.encode(SharedToken.of(token), aad=entry_aad(key))
                for key, token in held.items()
            }
        )
        try:
            await asyncio.to_thread(write_atomic, self.path, data)
        except OSError as exc:
            self._metrics.persist_writes.labels("error").inc()
            log.error(  # noqa: TRY400 - an expected failure: the reason, not a traceback
                "persist.write_failed",
                extra={"path": str(self.path), "error": exc.strerror or type(exc).__name__},
            )
            return False
        self._written = contents
        self._metrics.persist_writes.labels("success").inc()
        log.info(
            "persist.written",
            extra={
                "path": str(self.path),
                "entries": len(held),
                "fingerprints": sorted(t.fingerprint for t in held.values()),
            },
        )
        return True

    def __repr__(self) -> str:
        return f"TokenFile(path={str(self.path)!r}, codec={self._codec!r})"
