"""RedisCache: fleet mode's TokenCache on ``redis.asyncio``: shared tokens, a lock, notifications.

Layout under ``[cache].namespace`` (``NS``), with ``H`` = SHA-256 of the
namespace and the token identity (:func:`~sidecar.fleet.identity_of`):

- ``NS:token:H``: the encoded token (:class:`~sidecar.fleet.TokenCodec`), Redis TTL =
  its remaining lifetime;
- ``NS:lock:H``: the fleet refresh lock, redis-py's ``Lock`` (SET NX PX with
  a random token, released by a Lua compare-and-delete);
- ``NS:written:H``: a pub/sub channel; a lock holder publishes when it lets
  go, so waiting sidecars read at once instead of polling.

Every Redis call is bounded (:data:`OP_TIMEOUT` for connect, TLS handshake
and reads, no retries inside redis-py), and every Redis or socket error is
mapped to :class:`~sidecar.errors.CacheUnavailableError` in
:meth:`RedisCache._mapped`, which also marks the backend down and keeps why
(:attr:`RedisCache.failure`: a refused certificate, a wrong password ...).
One owned task holds the subscription; while the backend is down it
re-probes every :data:`PROBE_INTERVAL` and marks it up again, so the fleet
converges once Redis is back.

Every key may vanish at any moment: each has a TTL, and a managed Redis
(Upstash) evicts keys with a TTL when it is full, or an operator flushes the
database. A vanished token is a miss (the fleet mints one), a vanished lock
is a free lock (at worst two sidecars mint once each), a vanished hold-off is
no hold-off, and a holder that finds its lock gone still notifies waiters.
Nothing waits on a key's existence, so nothing stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import LockNotOwnedError, RedisError

from sidecar.clock import Clock, cancel_and_wait
from sidecar.errors import CacheUnavailableError, UnreadableValueError
from sidecar.fleet._access import RedisAccess, describe_failure
from sidecar.fleet._cache import (
    CacheFailure,
    CacheState,
    SharedFailure,
    SharedToken,
    parse_failure,
)
from sidecar.fleet._codec import TokenCodec
from sidecar.idp import MAX_LIFETIME
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.cache")

#: Bound on connecting to Redis and on each reply, in seconds.
OP_TIMEOUT = 0.5
#: How often a down backend is probed again (and how long one pub/sub read waits).
PROBE_INTERVAL = 1.0
#: Gives a lock key with no expiry one (a planted lock, or a peer's bug): then it expires.
_EXPIRE_IF_PERSISTENT = (
    "if redis.call('PTTL', KEYS[1]) == -1 then return redis.call('PEXPIRE', KEYS[1], ARGV[1]) end"
    " return 0"
)
#: Deletes a key only while it still holds the value read (compare-and-delete).
_DELETE_IF_SAME = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


class RedisCache:
    """A :class:`~sidecar.fleet.TokenCache` on Redis; never raises anything but our errors.

    ``access`` is a :class:`~sidecar.fleet._access.RedisAccess` (URL, TLS
    files, user, password file) or, for a plain Redis, just its URL.
    """

    backend = "redis"

    def __init__(
        self,
        access: RedisAccess | str,
        namespace: str,
        *,
        clock: Clock,
        metrics: Metrics,
        codec: TokenCodec | None = None,
        op_timeout: float = OP_TIMEOUT,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        if isinstance(access, str):
            access = RedisAccess(access)
        url, options = access.client_options()
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            **options,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            # A refresh must not stall on redis-py's own retries: one try, then fall back.
            retry=Retry(NoBackoff(), 0),
        )
        self._namespace = namespace
        self._clock = clock
        self._metrics = metrics
        self._codec = codec if codec is not None else TokenCodec()
        self._probe_interval = probe_interval
        self._op_timeout = op_timeout
        self._state = CacheState.STARTING
        self._failure: CacheFailure | None = None
        self._subscribed = asyncio.Event()
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def state(self) -> CacheState:
        return self._state

    @property
    def failure(self) -> CacheFailure | None:
        return self._failure

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._subscribe_loop(), name="cache:subscribe")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task, timeout=5.0)
        await self._redis.aclose()

    # -- keys --------------------------------------------------------------

    def _hash(self, identity: str) -> str:
        return hashlib.sha256(f"{self._namespace}\n{identity}".encode()).hexdigest()

    def token_key(self, identity: str) -> str:
        return f"{self._namespace}:token:{self._hash(identity)}"

    def _lock_key(self, identity: str) -> str:
        return f"{self._namespace}:lock:{self._hash(identity)}"

    def _hold_off_key(self, identity: str) -> str:
        return f"{self._namespace}:holdoff:{self._hash(identity)}"

    def _channel(self, identity: str) -> str:
        return f"{self._namespace}:written:{self._hash(identity)}"

    # -- the TokenCache interface -----------------------------------------

    async def read(self, identity: str) -> SharedToken | None:
        key = self.token_key(identity)
        with self._mapped("read"):
            raw = await self._redis.get(key)
        if raw is None:
            return None
        blob = raw if isinstance(raw, bytes) else raw.encode()  # bytes: no decode_responses
        try:
            return self._codec.decode(blob, aad=key.encode())
        except UnreadableValueError as exc:
            # Another key, a tampered value, or another format: a miss, never a crash.
            self._metrics.cache_errors.labels(exc.reason).inc()
            log.warning("cache.value_unreadable", extra={"reason": exc.reason})
            return None

    async def discard(self, identity: str, token: SharedToken) -> None:
        key = self.token_key(identity)
        with self._mapped("discard"):
            raw = await self._redis.get(key)
            if raw is None:
                return
            blob = raw if isinstance(raw, bytes) else raw.encode()
            try:
                stored = self._codec.decode(blob, aad=key.encode())
            except UnreadableValueError:
                return  # another value by now, counted when it is read
            if stored.fingerprint == token.fingerprint:
                await self._redis.eval(_DELETE_IF_SAME, 1, key, blob)

    async def write(self, identity: str, token: SharedToken) -> None:
        ttl_ms = int((token.expires_at - self._clock.time()) * 1000)
        if ttl_ms <= 0:
            return
        key = self.token_key(identity)
        blob = self._codec.encode(token, aad=key.encode())
        with self._mapped("write"):
            await self._redis.set(key, blob, px=ttl_ms)

    async def hold_off(self, identity: str, failure: SharedFailure) -> None:
        ttl_ms = int((failure.until - self._clock.time()) * 1000)
        if ttl_ms <= 0:
            return
        value = orjson.dumps(dataclasses.asdict(failure))
        with self._mapped("hold_off"):
            await self._redis.set(self._hold_off_key(identity), value, px=ttl_ms)

    async def held_off(self, identity: str) -> SharedFailure | None:
        with self._mapped("held_off"):
            raw = await self._redis.get(self._hold_off_key(identity))
        if raw is None:
            return None
        blob = raw if isinstance(raw, bytes) else raw.encode()
        failure = parse_failure(blob, now=self._clock.time(), horizon=MAX_LIFETIME)
        if failure is None:
            # Not a hold-off this fleet wrote (wrong type, shape or size): a miss, never a crash.
            self._metrics.cache_errors.labels("malformed").inc()
            log.warning("cache.value_unreadable", extra={"reason": "malformed"})
        return failure

    @contextlib.asynccontextmanager
    async def lock(self, identity: str, ttl: float) -> AsyncIterator[bool]:
        key = self._lock_key(identity)
        lock = Lock(self._redis, key, timeout=ttl, blocking=False)
        with self._mapped("lock"):
            held = await lock.acquire()
            if not held:
                # Every lock we take expires; one without an expiry is treated as
                # expired after the lock TTL from now, so it cannot stop the fleet.
                await self._redis.eval(_EXPIRE_IF_PERSISTENT, 1, key, int(ttl * 1000))
        try:
            yield held
        finally:
            if held:
                await self._release(lock, identity)

    async def _release(self, lock: Lock, identity: str) -> None:
        """Release the lock and tell waiters; failures here only cost waiters their bound."""
        # A failure is logged and counted by _mapped; nothing more to do about it here.
        with contextlib.suppress(CacheUnavailableError), self._mapped("release"):
            try:
                await lock.release()
            except LockNotOwnedError:
                # The refresh outlived the lock TTL, or the key was evicted or flushed;
                # another sidecar may hold it now. Waiters are told all the same.
                log.warning("cache.lock_expired", extra={"lock": lock.name})
            await self._redis.publish(self._channel(identity), b"1")

    @contextlib.asynccontextmanager
    async def watch(self, identity: str) -> AsyncIterator[asyncio.Event]:
        channel = self._channel(identity)
        event = asyncio.Event()
        self._watchers.setdefault(channel, set()).add(event)
        if not self._subscribed.is_set():
            # Right after start the subscription may still be on its way; without it a
            # waiter would sleep out its whole bound. Bounded: the bound covers a miss.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), self._op_timeout)
        try:
            yield event
        finally:
            waiting = self._watchers.get(channel)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._watchers[channel]

    # -- errors and state ---------------------------------------------------

    @contextlib.contextmanager
    def _mapped(self, operation: str) -> Iterator[None]:
        """Map Redis and socket errors to CacheUnavailableError; track up/down."""
        try:
            yield
        except (RedisError, OSError, TimeoutError) as exc:
            self._metrics.cache_errors.labels("unavailable").inc()
            self._mark_down(operation, exc)
            raise CacheUnavailableError(f"redis {operation} failed: {type(exc).__name__}") from exc
        self._mark_up()

    def _mark_down(self, operation: str, exc: BaseException) -> None:
        failure = describe_failure(exc)
        if self._state is CacheState.DOWN and failure.kind == getattr(self._failure, "kind", None):
            return
        # Logged again only when the reason changes (a fixed CA, then a wrong password).
        self._state, self._failure = CacheState.DOWN, failure
        self._metrics.cache_up.set(0)
        log.warning(
            "cache.backend_down",
            extra={
                "operation": operation,
                "kind": failure.kind,
                "error": type(exc).__name__,
                "detail": failure.detail,
            },
        )

    def _mark_up(self) -> None:
        if self._state is CacheState.OK:
            return
        was = self._state
        self._state, self._failure = CacheState.OK, None
        self._metrics.cache_up.set(1)
        log.info("cache.backend_up", extra={"backend": "redis", "from": was.value})

    # -- the subscription task ---------------------------------------------

    async def _subscribe_loop(self) -> None:
        while True:
            try:
                await self._listen()
            except CacheUnavailableError:
                pass  # logged and counted by _mapped
            except Exception:
                # This task must outlive any surprise from the client library:
                # without it every fleet waiter sleeps out its whole bound.
                log.exception("cache.subscription_crashed")
            await self._clock.sleep(self._probe_interval)

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            with self._mapped("subscribe"):
                await pubsub.psubscribe(f"{self._namespace}:written:*")
                # Redis confirms the subscription in order; from then on no publish is missed.
                await pubsub.get_message(timeout=self._op_timeout)
            self._subscribed.set()
            while True:
                with self._mapped("listen"):
                    # Bounded wait so a down backend is noticed and probed; see PROBE_INTERVAL.
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._probe_interval
                    )
                if message is not None:
                    self._notify(message)
        finally:
            self._subscribed.clear()
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _notify(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        for event in self._watchers.get(str(channel), ()):
            event.set()

    def __repr__(self) -> str:
        return (
            f"RedisCache(namespace={self._namespace!r}, state={self._state.value}, "
            f"sealed={self._codec.sealed})"
        )
