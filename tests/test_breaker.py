"""The circuit breaker opens on transient failures, probes once, and closes on success."""

import pytest

from sidecar.breaker import CircuitBreaker, CircuitState
from sidecar.errors import IllegalTransitionError
from sidecar.testing import FakeClock


def state_of(breaker: CircuitBreaker) -> CircuitState:
    # A call, so mypy does not narrow the state across the breaker's transitions.
    return breaker.state


@pytest.fixture
def clock():
    return FakeClock()


def test_opens_after_threshold(clock):
    """N consecutive transient failures open the circuit; fewer do not."""
    breaker = CircuitBreaker(clock, failures=3, reset=30, name="idp")
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert state_of(breaker) is CircuitState.CLOSED
    breaker.record_failure()
    assert state_of(breaker) is CircuitState.OPEN
    assert not breaker.allow()
    assert breaker.retry_in() == 30


async def test_half_open_allows_exactly_one_probe(clock):
    """After the reset period one probe goes through; a second caller is refused."""
    breaker = CircuitBreaker(clock, failures=1, reset=30)
    breaker.record_failure()
    await clock.advance(29.5)
    assert not breaker.allow()
    await clock.advance(0.5)
    assert state_of(breaker) is CircuitState.OPEN  # no probe has gone out yet
    assert breaker.allow()
    assert state_of(breaker) is CircuitState.HALF_OPEN
    assert not breaker.allow()
    breaker.record_success()
    assert state_of(breaker) is CircuitState.CLOSED
    assert breaker.allow()


async def test_failed_probe_reopens(clock):
    """A failed half-open probe opens the circuit for another full reset period."""
    breaker = CircuitBreaker(clock, failures=1, reset=10)
    breaker.record_failure()
    await clock.advance(10)
    assert breaker.allow()
    breaker.record_failure()
    assert state_of(breaker) is CircuitState.OPEN
    assert breaker.retry_in() == 10


def test_success_resets_the_count(clock):
    """A success between failures starts the count again."""
    breaker = CircuitBreaker(clock, failures=2, reset=10)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert state_of(breaker) is CircuitState.CLOSED


async def test_listeners_see_every_transition(clock):
    """Every transition reaches the listeners in order."""
    seen = []
    breaker = CircuitBreaker(clock, failures=1, reset=5)
    breaker.add_listener(lambda old, new: seen.append((old.value, new.value)))
    breaker.record_failure()
    await clock.advance(5)
    breaker.allow()
    breaker.record_success()
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_illegal_transition_is_loud(clock):
    """Moving between states without an edge raises."""
    breaker = CircuitBreaker(clock, failures=1, reset=5, name="x")
    with pytest.raises(IllegalTransitionError, match="closed -> half_open"):
        breaker._transition(CircuitState.HALF_OPEN)


def test_release_frees_the_probe_slot(clock):
    """A cancelled probe frees the slot for the next caller."""
    breaker = CircuitBreaker(clock, failures=1, reset=0.0)
    breaker.record_failure()
    assert breaker.allow()
    breaker.release_probe()
    assert breaker.allow()


def test_repr_shows_state_and_counters(clock):
    """The repr names the endpoint, state and counters."""
    breaker = CircuitBreaker(clock, failures=5, reset=30.0, name="https://idp/oauth/token")
    breaker.record_failure()
    assert repr(breaker) == (
        "CircuitBreaker(name='https://idp/oauth/token', state=closed, failures=1/5, reset=30.0)"
    )
