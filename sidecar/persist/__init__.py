"""The persistent cold-start cache: the tokens a daemon holds, sealed in a local file.

``[cache] persist_file`` names the file; ``[cache] key_file`` seals it (the
fleet cache's :class:`~sidecar.fleet.TokenCodec`, AES-256-GCM). At start the
daemon serves the tokens of the file that are still valid and pass the same
checks as a token shared through the fleet cache, without asking the IdP; after
each refresh it writes the file again. See docs/adr/0008-cold-start-cache.md.

Modules: ``_file`` (the format, a bounded read, the atomic 0600 write),
``_token_file`` (:class:`TokenFile`: loading at start, the writer task) and
``_restore`` (vetting stored tokens at start, the later signature check).
"""

from __future__ import annotations

from sidecar.clock import Clock
from sidecar.config import Config
from sidecar.fleet import TokenCodec, load_key
from sidecar.metrics import Metrics
from sidecar.persist._file import (
    FILE_MODE,
    MAX_FILE_BYTES,
    decode_file,
    encode_file,
    entry_aad,
    identity_hash,
    read_bounded,
    write_atomic,
)
from sidecar.persist._restore import Restored, confirm_signature, restore_tokens
from sidecar.persist._token_file import Snapshot, TokenFile

__all__ = [
    "FILE_MODE",
    "MAX_FILE_BYTES",
    "Restored",
    "Snapshot",
    "TokenFile",
    "confirm_signature",
    "decode_file",
    "encode_file",
    "entry_aad",
    "identity_hash",
    "make_token_file",
    "read_bounded",
    "restore_tokens",
    "write_atomic",
]


def make_token_file(config: Config, clock: Clock, metrics: Metrics) -> TokenFile | None:
    """The cold-start file ``[cache]`` asks for, or None; a bad key file is a ConfigError here."""
    cfg = config.cache
    if cfg.persist_file is None or cfg.key_file is None:  # the loader requires both or neither
        return None
    key = load_key(cfg.key_file, source=config.source)
    return TokenFile(cfg.persist_file, TokenCodec(key), clock=clock, metrics=metrics)
