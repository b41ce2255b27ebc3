"""A profile's state, fallback flag and /status entry: pure functions, table-tested."""

import pytest

from sidecar.errors import FailureKind, IdPRejectedError
from sidecar.profile_status import (
    LastError,
    ProfileState,
    fallback_reason,
    profile_state,
    served_stale,
    status_entry,
    unavailable_answer,
)
from sidecar.token import HeldToken, fingerprint

VALUE = "eyJ.status.token"


def held(obtained_at=0.0, refresh_at=80.0, expires_at=100.0) -> HeldToken:
    return HeldToken(
        value=VALUE,
        token_type="Bearer",
        scope=None,
        obtained_at=obtained_at,
        refresh_at=refresh_at,
        expires_at=expires_at,
        expires_at_wall=1_800_000_100.0,
        fingerprint=fingerprint(VALUE),
    )


T = held()
REJECTED = FailureKind.REJECTED


@pytest.mark.parametrize(
    ("token", "now", "failures", "last_kind", "in_flight", "expected"),
    [
        (None, 0.0, 0, None, False, ProfileState.WARMING),
        (None, 0.0, 0, None, True, ProfileState.WARMING),
        (T, 10.0, 0, None, False, ProfileState.READY),
        (T, 10.0, 0, None, True, ProfileState.REFRESHING),
        (T, 85.0, 0, None, False, ProfileState.READY),  # due, but nothing failed yet
        (T, 85.0, 2, FailureKind.ERROR, False, ProfileState.STALE),
        (T, 85.0, 2, FailureKind.ERROR, True, ProfileState.REFRESHING),
        (T, 10.0, 2, FailureKind.ERROR, False, ProfileState.READY),  # before its refresh instant
        (T, 95.0, 2, FailureKind.ERROR, False, ProfileState.UNAVAILABLE),  # under min_ttl 10
        (None, 0.0, 1, FailureKind.TIMEOUT, False, ProfileState.UNAVAILABLE),
        (T, 10.0, 1, REJECTED, False, ProfileState.MISCONFIGURED),
        (None, 0.0, 1, FailureKind.INVALID_TOKEN, True, ProfileState.MISCONFIGURED),
        (T, 85.0, 1, FailureKind.CIRCUIT_OPEN, False, ProfileState.STALE),
    ],
)
def test_profile_state(token, now, failures, last_kind, in_flight, expected):
    """The state follows from the token, the clock and the failures, in DESIGN.md's order."""
    state = profile_state(
        token=token,
        now=now,
        min_ttl=10.0,
        failures=failures,
        last_kind=last_kind,
        in_flight=in_flight,
    )
    assert state is expected


@pytest.mark.parametrize(
    ("now", "failures", "expected"),
    [(79.9, 3, False), (80.0, 3, True), (90.0, 0, False), (90.0, 1, True)],
)
def test_served_stale(now, failures, expected):
    """A served token is a fallback only once refreshes fail and its refresh instant passed."""
    assert served_stale(T, now=now, failures=failures) is expected


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (FailureKind.CIRCUIT_OPEN, "circuit_open"),
        (FailureKind.ERROR, "refresh_failing"),
        (FailureKind.RATE_LIMITED, "refresh_failing"),
        (None, "refresh_failing"),
    ],
)
def test_fallback_reason(kind, reason):
    """An open circuit is named as such; every other failing refresh is refresh_failing."""
    assert fallback_reason(kind) == reason


def test_status_entry_shows_instants_and_no_secret():
    """The entry converts monotonic instants to UNIX seconds and names the token by fingerprint."""
    error = LastError.of(
        IdPRejectedError("rejected", error="access_denied", description="Unauthorized"), 5.0
    )
    entry = status_entry(
        state=ProfileState.STALE,
        token=T,
        now=90.0,
        wall_now=1_800_000_090.0,
        next_attempt_at=120.5,
        last_success_at=1_800_000_000.7,
        last_error=error,
        failures=3,
        circuit="open",
    )
    assert entry == {
        "state": "stale",
        "expires_at": 1_800_000_100,
        "next_refresh_at": 1_800_000_120,
        "last_success_at": 1_800_000_000,
        "last_error": {
            "kind": "rejected",
            "error": "access_denied",
            "description": "Unauthorized",
        },
        "consecutive_failures": 3,
        "circuit": "open",
        "fingerprint": fingerprint(VALUE),
    }
    assert VALUE not in repr(entry)


def test_status_entry_of_a_warming_profile():
    """Before any token, the entry has no instants, no error and no fingerprint."""
    entry = status_entry(
        state=ProfileState.WARMING,
        token=None,
        now=0.0,
        wall_now=1_800_000_000.0,
        next_attempt_at=None,
        last_success_at=None,
        last_error=None,
        failures=0,
        circuit="closed",
    )
    assert entry["expires_at"] is entry["next_refresh_at"] is entry["fingerprint"] is None
    assert entry["state"] == "warming"
    assert entry["last_error"] is None


@pytest.mark.parametrize(
    ("last_error", "code", "message"),
    [
        (None, "token_unavailable", "no servable token while refreshes are failing"),
        (
            LastError(FailureKind.TIMEOUT, None, "IdP did not answer in time", 0.0),
            "token_unavailable",
            (
                "no servable token while refreshes are failing "
                "(timeout: error: IdP did not answer in time)"
            ),
        ),
        (
            LastError(FailureKind.REJECTED, "access_denied", "Unauthorized", 0.0),
            "misconfigured",
            "rejected: access_denied: Unauthorized",
        ),
        (
            LastError(FailureKind.INVALID_TOKEN, "invalid_token", None, 0.0),
            "misconfigured",
            "invalid_token: invalid_token: no description",
        ),
    ],
)
def test_unavailable_answer_says_why(last_error, code, message):
    """A 503 names the last failure: misconfigured for rejections, else token_unavailable."""
    assert unavailable_answer(last_error) == (code, message)
