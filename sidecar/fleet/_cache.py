"""The TokenCache interface, the memory backend, and the shared token and failure records.

Two strategies sit behind :class:`TokenCache`:

- :class:`MemoryCache` (``backend = "memory"``): nothing is shared; every read
  misses, every lock is granted, so each sidecar refreshes on its own. This
  is the behaviour of a single sidecar.
- :class:`~sidecar.fleet.RedisCache` (``backend = "redis"``, fleet mode):
  tokens, a refresh lock and change notifications live in Redis.

A refresher never talks to a backend directly: :class:`~sidecar.fleet.FleetRefresh`
runs the one fleet single-flight algorithm over this interface. A shared token is
identified by :func:`identity_of` (token endpoint, client, audience/resource,
scope, extra parameters); the backend adds its namespace and hashes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import orjson

from sidecar.config import ProfileConfig
from sidecar.token import HeldToken


class CacheState(enum.Enum):
    """What ``/status`` ``cache.state`` says about the backend."""

    STARTING = "starting"  # not yet connected; still tried
    OK = "ok"
    DOWN = "down"  # unreachable: sidecars refresh on their own until it answers again


@dataclass(frozen=True)
class CacheFailure:
    """Why the backend is down, as logs and ``/status`` show it: never a secret.

    ``kind`` is one of ``tls`` (handshake or certificate check failed),
    ``auth`` (password or ACL refused), ``timeout``, ``unreachable``,
    ``out_of_memory`` (a full Redis that evicts nothing) or ``error``;
    ``detail`` is the client's one-line message.
    """

    kind: str
    detail: str

    def view(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}


@dataclass(frozen=True, repr=False, eq=False)
class SharedToken:
    """A token as stored for the fleet: wall-clock instants, since monotonic ones are local.

    Everything but ``value`` is the writer's say-so: trusted only when
    ``sealed`` (read from an AES-GCM value only the fleet's key opens).
    """

    value: str
    token_type: str
    scope: str | None
    obtained_at: float  # UNIX time
    expires_at: float  # UNIX time
    fingerprint: str
    sealed: bool = False

    @classmethod
    def of(cls, token: HeldToken) -> SharedToken:
        return cls(
            value=token.value,
            token_type=token.token_type,
            scope=token.scope,
            obtained_at=token.expires_at_wall - token.lifetime,
            expires_at=token.expires_at_wall,
            fingerprint=token.fingerprint,
        )

    def outlives(self, current: HeldToken | None, *, wall_now: float, min_ttl: float) -> bool:
        """Whether this token is servable now and lives longer than ``current`` (another one)."""
        if self.expires_at - wall_now <= min_ttl:
            return False
        return current is None or (
            self.fingerprint != current.fingerprint and self.expires_at > current.expires_at_wall
        )

    def __repr__(self) -> str:
        return (
            f"SharedToken(fingerprint={self.fingerprint!r}, expires_at={self.expires_at:.0f}, "
            "value=[secure])"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class SharedFailure:
    """A failed IdP refresh, shared so the rest of the fleet holds off (no secrets in it)."""

    kind: str  # "error", "timeout" or "rate_limited"
    error: str | None
    description: str | None
    until: float  # UNIX time: do not ask the IdP before this


#: The kinds a shared hold-off may have; anything else is not ours.
_HOLD_OFF_KINDS = frozenset({"error", "timeout", "rate_limited"})
#: A hold-off record is a few hundred bytes; more is garbage.
MAX_HOLD_OFF_BYTES = 4096
_TEXT_LIMIT = 300


def parse_failure(raw: bytes, *, now: float, horizon: float) -> SharedFailure | None:
    """A stored hold-off, or None when it is not one (wrong type or shape, huge, absurd).

    ``until`` must be a finite number no further than ``horizon`` seconds
    after ``now``; an instant in the past is simply no hold-off.
    """
    try:
        data = orjson.loads(raw) if len(raw) <= MAX_HOLD_OFF_BYTES else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    kind, until = data.get("kind"), data.get("until")
    texts = (data.get("error"), data.get("description"))
    if (
        kind not in _HOLD_OFF_KINDS
        or isinstance(until, bool)
        or not isinstance(until, int | float)
        or not now - horizon <= until <= now + horizon  # also refuses NaN and infinities
        or not all(text is None or isinstance(text, str) for text in texts)
    ):
        return None
    error, description = (None if t is None else t[:_TEXT_LIMIT] for t in texts)
    return SharedFailure(kind=kind, error=error, description=description, until=float(until))


class TokenCache(Protocol):
    """Shared token storage with a refresh lock and write notifications."""

    @property
    def backend(self) -> str:
        """The ``[cache].backend`` this implements."""
        ...

    @property
    def state(self) -> CacheState: ...

    @property
    def failure(self) -> CacheFailure | None:
        """Why the backend is down; None while it is not."""
        ...

    def start(self) -> None:
        """Start background work (connection watching); idempotent."""
        ...

    async def aclose(self) -> None: ...

    async def read(self, identity: str) -> SharedToken | None:
        """The shared token, or None (absent, expired or unreadable).

        Raises:
            CacheUnavailableError: the backend did not answer.
        """
        ...

    async def write(self, identity: str, token: SharedToken) -> None:
        """Store ``token`` for as long as it lives; raises CacheUnavailableError."""
        ...

    async def hold_off(self, identity: str, failure: SharedFailure) -> None:
        """Tell the fleet the IdP just failed; kept until ``failure.until``."""
        ...

    async def held_off(self, identity: str) -> SharedFailure | None:
        """The fleet's current hold-off, if a peer's refresh failed moments ago."""
        ...

    async def discard(self, identity: str, token: SharedToken) -> None:
        """Delete the shared ``token`` if it is still the stored one (a newer value stays)."""
        ...

    def lock(self, identity: str, ttl: float) -> AbstractAsyncContextManager[bool]:
        """Try once to take the fleet refresh lock; yields whether this sidecar holds it.

        The lock expires after ``ttl`` seconds, so a holder that dies frees
        it. Leaving the block releases it and notifies watchers.
        """
        ...

    def watch(self, identity: str) -> AbstractAsyncContextManager[asyncio.Event]:
        """An event set when another sidecar writes the token or releases the lock.

        Entering waits (bounded) until notifications are flowing, so a write
        after entering is never missed.
        """
        ...


def identity_of(profile: ProfileConfig, client_id: str) -> str:
    """What makes two profiles' tokens interchangeable, as one string (hashed by backends)."""
    return orjson.dumps(
        [
            profile.token_url,
            client_id,
            profile.audience,
            profile.resource,
            profile.scope,
            sorted(profile.extra_params.items()),
        ]
    ).decode()


class MemoryCache:
    """No sharing: every read misses and every lock is granted (one sidecar on its own)."""

    backend = "memory"
    state = CacheState.OK
    failure: CacheFailure | None = None

    def start(self) -> None:
        return

    async def aclose(self) -> None:
        return

    async def read(self, identity: str) -> SharedToken | None:  # noqa: ARG002 - nothing shared
        return None

    async def write(self, identity: str, token: SharedToken) -> None:  # noqa: ARG002
        return

    async def hold_off(self, identity: str, failure: SharedFailure) -> None:  # noqa: ARG002
        return

    async def held_off(self, identity: str) -> SharedFailure | None:  # noqa: ARG002
        return None

    async def discard(self, identity: str, token: SharedToken) -> None:  # noqa: ARG002
        return

    @contextlib.asynccontextmanager
    async def lock(self, identity: str, ttl: float) -> AsyncIterator[bool]:  # noqa: ARG002
        yield True

    @contextlib.asynccontextmanager
    async def watch(self, identity: str) -> AsyncIterator[asyncio.Event]:  # noqa: ARG002
        yield asyncio.Event()

    def __repr__(self) -> str:
        return "MemoryCache()"
