"""The per-user token cache of the client: keyed by hash, LRU-bounded, never holding a user's token.

:meth:`TokenClient.exchange` trades a user's token for a per-user token of an
exchange profile (``POST /v1/exchange/{profile}``). The answers are kept here
so that a user's next tool call costs no request to the sidecar:

- the key is the SHA-256 of the profile, the normalized scope and the user's
  token (:func:`subject_key`), so the user's token itself is never stored,
  shown in a repr or put in an error message;
- an entry is handed out only while it has more than the caller's
  ``min_ttl`` left (its ``expires_at`` is the sidecar's, never later than the
  user's token);
- at most ``max_entries`` are held; one more evicts the least recently used.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._core import Token

#: Per-user tokens a client holds by default.
DEFAULT_MAX_ENTRIES = 1000


def subject_key(profile: str, scope: str | None, subject_token: str) -> bytes:
    """SHA-256 of the profile, the scope (words sorted, duplicates dropped) and the user's token."""
    words = " ".join(sorted(set(scope.split()))) if scope else ""
    digest = hashlib.sha256(profile.encode())
    digest.update(b"\0")
    digest.update(words.encode())
    digest.update(b"\0")
    digest.update(subject_token.encode("utf-8", "surrogatepass"))
    return digest.digest()


class SubjectTokens:
    """Per-user tokens by key, least recently used first; holds no user's token."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._tokens: OrderedDict[bytes, Token] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, key: bytes) -> Token | None:
        """The token of ``key`` (now the most recently used), or None."""
        token = self._tokens.get(key)
        if token is not None:
            self._tokens.move_to_end(key)
        return token

    def put(self, key: bytes, token: Token) -> None:
        """Keep ``token`` for ``key``; the least recently used goes when the bound is reached."""
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.max_entries:
            self._tokens.popitem(last=False)

    def drop(self, key: bytes, token: Token | None = None) -> bool:
        """Forget ``key`` (with ``token``: only while it still holds that one); whether it did."""
        held = self._tokens.get(key)
        if held is None or (token is not None and held.access_token != token.access_token):
            return False
        del self._tokens[key]
        return True

    def clear(self) -> None:
        self._tokens.clear()

    def __repr__(self) -> str:
        return f"SubjectTokens(entries={len(self._tokens)}, max_entries={self.max_entries})"
