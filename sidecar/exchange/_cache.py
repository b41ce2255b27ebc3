"""SubjectCache: the per-user tokens of an exchange profile, keys, LRU bound and rejections.

Pure bookkeeping, no I/O and no clock of its own: every method takes ``now``
(monotonic seconds), so the rules are tested as plain functions.

- A key is the SHA-256 of the profile name, the effective scope and the
  user's token (:func:`cache_key`): the raw token is never stored, and two
  users never share a key however alike their claims are.
- An entry (:class:`ExchangedToken`) lives until ``min(issued exp, subject
  exp)``; it is handed out only while more than the caller's ``min_ttl`` is
  left, and dropped once less than the profile's ``min_ttl`` is left: no
  stale serving.
- The cache holds at most ``max_entries`` tokens; storing one more evicts the
  least recently used. Rejections of a key are remembered apart, for
  ``negative_ttl``, under the same bound.
- Dead entries go when they are next looked up, and all at once at most
  every :data:`SWEEP_INTERVAL` seconds when a token is stored, so the
  entries gauge stays close to what is servable without a background task.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import NamedTuple

from sidecar.errors import ExchangeError
from sidecar.token import fingerprint

#: How often (seconds) storing a token also drops every dead entry.
SWEEP_INTERVAL = 60.0


def cache_key(profile: str, scope: str, subject_token: str) -> bytes:
    """SHA-256 of the profile, the effective scope (normalized) and the user's token."""
    return keyed(key_prefix(profile, scope), subject_token)


def key_prefix(profile: str, scope: str) -> bytes:
    """The part of a key's hashed input that precedes the user's token."""
    return b"%s\0%s\0" % (profile.encode(), scope.encode())


def keyed(prefix: bytes, subject_token: str) -> bytes:
    """The key of ``subject_token`` under ``prefix`` (:func:`key_prefix`): one hash call."""
    return hashlib.sha256(prefix + subject_token.encode("utf-8", "surrogatepass")).digest()


class ExchangedToken:
    """A token the IdP issued for one user, with the instants that govern it.

    ``expires_at`` is monotonic, ``expires_at_wall`` UNIX time (for answers);
    ``capped_by_subject`` says the user's token expires first, so a new
    exchange could not give a longer-lived one. The value is never shown by
    ``repr``.
    """

    __slots__ = (
        "capped_by_subject",
        "expires_at",
        "expires_at_wall",
        "issued_token_type",
        "scope",
        "token_type",
        "value",
    )

    def __init__(
        self,
        value: str,
        *,
        token_type: str,
        issued_token_type: str,
        scope: str | None,
        expires_at: float,
        expires_at_wall: float,
        capped_by_subject: bool,
    ) -> None:
        self.value = value
        self.token_type = token_type
        self.issued_token_type = issued_token_type
        self.scope = scope
        self.expires_at = expires_at
        self.expires_at_wall = expires_at_wall
        self.capped_by_subject = capped_by_subject

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value)

    def expires_in(self, now: float) -> int:
        """Whole seconds left, rounded down (never promise more than there is)."""
        left = self.expires_at - now
        return int(left) if left > 0 else 0

    def __repr__(self) -> str:
        return (
            f"ExchangedToken(fingerprint={self.fingerprint!r}, "
            f"expires_at_wall={self.expires_at_wall:.0f}, value=[secure])"
        )

    __str__ = __repr__


class _Rejection(NamedTuple):
    until: float
    error: ExchangeError


class SubjectCache:
    """Per-user tokens and remembered rejections of one exchange profile, both LRU-bounded.

    Invariants: at most ``max_entries`` tokens and ``max_entries`` rejections
    are held; no entry with ``floor`` (the profile's ``min_ttl``) or less
    left is ever returned.
    """

    def __init__(self, max_entries: int, floor: float) -> None:
        self.max_entries = max_entries
        self.floor = floor
        self._tokens: OrderedDict[bytes, ExchangedToken] = OrderedDict()
        self._rejections: OrderedDict[bytes, _Rejection] = OrderedDict()
        self._swept_at = float("-inf")
        #: Tokens dropped to make room (not because they died), since creation.
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def rejections(self) -> int:
        return len(self._rejections)

    def token(self, key: bytes, now: float) -> ExchangedToken | None:
        """The live token of ``key`` (now the most recently used), or None.

        A token with ``floor`` or less left is dropped here: it is never served again.
        """
        token = self._tokens.get(key)
        if token is None:
            return None
        if token.expires_at - now <= self.floor:
            del self._tokens[key]
            return None
        self._tokens.move_to_end(key)
        return token

    def store(self, key: bytes, token: ExchangedToken, now: float) -> None:
        """Hold ``token`` for ``key`` (unless it is already too short to serve), evicting LRU."""
        self._rejections.pop(key, None)
        if token.expires_at - now <= self.floor:
            self._tokens.pop(key, None)
            return
        if now - self._swept_at >= SWEEP_INTERVAL:
            self.sweep(now)
        self._tokens[key] = token
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.max_entries:
            self._tokens.popitem(last=False)
            self.evictions += 1

    def rejection(self, key: bytes, now: float) -> ExchangeError | None:
        """The remembered rejection of ``key``, while it is remembered."""
        remembered = self._rejections.get(key)
        if remembered is None:
            return None
        if remembered.until <= now:
            del self._rejections[key]
            return None
        return remembered.error

    def remember(self, key: bytes, error: ExchangeError, until: float) -> None:
        """Remember that the IdP rejected ``key`` until ``until`` (the oldest go past the bound)."""
        self._tokens.pop(key, None)
        self._rejections[key] = _Rejection(until, error)
        self._rejections.move_to_end(key)
        while len(self._rejections) > self.max_entries:
            self._rejections.popitem(last=False)

    def drop(self, key: bytes, fingerprint: str | None = None) -> bool:
        """Forget ``key`` (token and rejection); whether there was anything to forget.

        With ``fingerprint``, only the token of that fingerprint is forgotten
        (one that replaced it meanwhile, and any rejection, are kept).
        """
        if fingerprint is not None:
            held = self._tokens.get(key)
            if held is None or held.fingerprint != fingerprint:
                return False
            del self._tokens[key]
            return True
        had_token = self._tokens.pop(key, None) is not None
        return self._rejections.pop(key, None) is not None or had_token

    def sweep(self, now: float) -> None:
        """Drop every token that can no longer be served and every rejection that has lapsed."""
        self._swept_at = now
        dead = [k for k, t in self._tokens.items() if t.expires_at - now <= self.floor]
        for key in dead:
            del self._tokens[key]
        lapsed = [k for k, r in self._rejections.items() if r.until <= now]
        for key in lapsed:
            del self._rejections[key]

    def clear(self) -> None:
        self._tokens.clear()
        self._rejections.clear()

    def __repr__(self) -> str:
        return (
            f"SubjectCache(entries={len(self._tokens)}/{self.max_entries}, "
            f"rejections={len(self._rejections)})"
        )
