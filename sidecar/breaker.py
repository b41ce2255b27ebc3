"""CircuitBreaker for one token endpoint: closed, open, half-open, and its state enum.

Only transient failures (connect errors, timeouts, 5xx, garbage) count. A 429
or an OAuth rejection proves the IdP is up and answering; they never open the
circuit, and in half-open they close it. All transitions happen in
:meth:`CircuitBreaker._transition`, which notifies listeners (metrics, logs)
and refuses illegal moves loudly.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from sidecar.clock import Clock
from sidecar.errors import IllegalTransitionError


class CircuitState(enum.Enum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge(self) -> int:
        """The value of ``token_sidecar_circuit_state``: 0 closed, 1 half-open, 2 open."""
        return {"closed": 0, "half_open": 1, "open": 2}[self.value]


_LEGAL = {
    (CircuitState.CLOSED, CircuitState.OPEN),
    (CircuitState.OPEN, CircuitState.HALF_OPEN),
    (CircuitState.HALF_OPEN, CircuitState.OPEN),
    (CircuitState.HALF_OPEN, CircuitState.CLOSED),
}

Listener = Callable[[CircuitState, CircuitState], None]


class CircuitBreaker:
    """Keeps requests from an endpoint that keeps failing.

    Invariants: while OPEN no request is allowed until ``reset`` seconds have
    passed; HALF_OPEN allows exactly one probe at a time; the breaker is
    driven by one event loop, so no lock is needed beyond the loop itself.
    """

    def __init__(self, clock: Clock, *, failures: int, reset: float, name: str = "") -> None:
        self._clock = clock
        self._threshold = failures
        self._reset = reset
        self.name = name
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False
        self._listeners: list[Listener] = []

    @property
    def state(self) -> CircuitState:
        """The state as last transitioned: the same value the metric and the logs show.

        An OPEN breaker whose reset has passed stays OPEN until the next
        request actually takes the half-open probe.
        """
        return self._state

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def retry_in(self) -> float:
        """Seconds until an OPEN breaker lets a probe through (0 when not open)."""
        if self._state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._reset - self._clock.monotonic())

    def allow(self) -> bool:
        """Whether a request may go out now; a True in half-open takes the probe slot."""
        if self._state is CircuitState.OPEN:
            if self.retry_in() > 0:
                return False
            self._transition(CircuitState.HALF_OPEN)
        if self._state is CircuitState.HALF_OPEN:
            if self._probe_out:
                return False
            self._probe_out = True
        return True

    def record_success(self) -> None:
        """The IdP answered (a token, a 429 or an OAuth rejection): it is up."""
        self._failures = 0
        self._probe_out = False
        if self._state is CircuitState.HALF_OPEN:
            self._transition(CircuitState.CLOSED)

    def record_failure(self) -> None:
        """A transient failure: count it, and open the circuit at the threshold."""
        self._failures += 1
        self._probe_out = False
        if self._state is CircuitState.HALF_OPEN or (
            self._state is CircuitState.CLOSED and self._failures >= self._threshold
        ):
            self._opened_at = self._clock.monotonic()
            self._transition(CircuitState.OPEN)

    def release_probe(self) -> None:
        """A request ended with no verdict on the IdP (cancelled): free the probe slot."""
        self._probe_out = False

    def _transition(self, new: CircuitState) -> None:
        old = self._state
        if (old, new) not in _LEGAL:
            raise IllegalTransitionError(f"circuit {self.name}: {old.value} -> {new.value}")
        self._state = new
        for listener in self._listeners:
            listener(old, new)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(name={self.name!r}, state={self.state.value}, "
            f"failures={self._failures}/{self._threshold}, reset={self._reset})"
        )
