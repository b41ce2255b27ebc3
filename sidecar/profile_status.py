"""What a profile looks like from outside: ProfileState, LastError, and the pure status functions.

Nothing here reads a clock or holds state: the refresher passes in what it
knows (its token, the failure count, the last error, the instants), and these
functions decide the state ``/status`` and ``/readyz`` show, whether a served
token is a fallback, and the ``/status`` entry itself. They are tested with
tables, like :mod:`sidecar.policy`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sidecar.errors import FailureKind, RefreshError
from sidecar.token import HeldToken


class ProfileState(enum.Enum):
    """What ``/status`` says about a profile."""

    WARMING = "warming"
    READY = "ready"
    REFRESHING = "refreshing"
    STALE = "stale"
    UNAVAILABLE = "unavailable"
    MISCONFIGURED = "misconfigured"


@dataclass(frozen=True)
class LastError:
    """The most recent refresh failure, safe to show (no secrets)."""

    kind: FailureKind
    error: str | None
    description: str | None
    at: float  # UNIX time

    @classmethod
    def of(cls, exc: RefreshError, at: float) -> LastError:
        return cls(kind=exc.kind, error=exc.error, description=exc.description or str(exc), at=at)

    def as_dict(self) -> dict[str, str | None]:
        """The ``last_error`` object of ``/status``."""
        return {"kind": self.kind.value, "error": self.error, "description": self.description}


def profile_state(
    *,
    token: HeldToken | None,
    now: float,
    min_ttl: float,
    failures: int,
    last_kind: FailureKind | None,
    in_flight: bool,
    reported: bool = False,
) -> ProfileState:
    """The state of a profile holding ``token`` after ``failures`` consecutive failures.

    ``last_kind`` is the kind of the latest failure while failures continue
    (None once a refresh succeeded); ``reported`` says a caller reported the
    token rejected.
    """
    if last_kind is not None and last_kind.misconfigured:
        return ProfileState.MISCONFIGURED
    if token is not None and token.servable(now, min_ttl):
        if in_flight:
            return ProfileState.REFRESHING
        stale = served_stale(token, now=now, failures=failures, reported=reported)
        return ProfileState.STALE if stale else ProfileState.READY
    if token is None and failures == 0:
        return ProfileState.WARMING
    return ProfileState.UNAVAILABLE


def served_stale(token: HeldToken, *, now: float, failures: int, reported: bool = False) -> bool:
    """Whether serving ``token`` now is a fallback.

    It is when refreshes fail and it is past its refresh instant, or when a
    caller reported it rejected and no replacement could be had.
    """
    return reported or (failures > 0 and now >= token.refresh_at)


def fallback_reason(last_kind: FailureKind | None) -> str:
    """The ``fallback_total`` reason of a stale answer."""
    return "circuit_open" if last_kind is FailureKind.CIRCUIT_OPEN else "refresh_failing"


def unavailable_answer(last_error: LastError | None) -> tuple[str, str]:
    """The error code and message of a 503 while refreshes fail and nothing is servable.

    The message says why, from the last failure (never a secret: errors carry
    the IdP's ``error`` and ``error_description`` and our own texts only).
    """
    if last_error is None:
        return "token_unavailable", "no servable token while refreshes are failing"
    detail = f"{last_error.kind}: {last_error.error or 'error'}: "
    detail += last_error.description or "no description"
    if last_error.kind.misconfigured:
        return "misconfigured", detail
    return "token_unavailable", f"no servable token while refreshes are failing ({detail})"


def status_entry(
    *,
    state: ProfileState,
    token: HeldToken | None,
    now: float,
    wall_now: float,
    next_attempt_at: float | None,
    last_success_at: float | None,
    last_error: LastError | None,
    failures: int,
    circuit: str,
) -> dict[str, Any]:
    """The ``/status`` entry of one profile: states and instants, never a secret.

    ``now`` and ``next_attempt_at`` are monotonic; the entry shows UNIX times.
    """
    next_refresh_at = (
        int(wall_now + max(0.0, next_attempt_at - now)) if next_attempt_at is not None else None
    )
    return {
        "state": state.value,
        "expires_at": int(token.expires_at_wall) if token else None,
        "next_refresh_at": next_refresh_at,
        "last_success_at": int(last_success_at) if last_success_at else None,
        "last_error": last_error.as_dict() if last_error else None,
        "consecutive_failures": failures,
        "circuit": circuit,
        "fingerprint": token.fingerprint if token else None,
    }
