"""Reports: what an invalidate does, what it withholds and hands back, and what it remembers."""

from sidecar.invalidation import INVALIDATE_THROTTLE, Reports
from sidecar.token import HeldToken, fingerprint


def held(value: str, expires_at: float = 100.0) -> HeldToken:
    return HeldToken(
        value=value,
        token_type="Bearer",
        scope=None,
        obtained_at=0.0,
        refresh_at=80.0,
        expires_at=expires_at,
        expires_at_wall=1_800_000_000.0 + expires_at,
        fingerprint=fingerprint(value),
    )


A, B = held("token-a"), held("token-b")


def test_reporting_the_current_token_withholds_it_and_remembers_it():
    """The current token reported is withheld, and its fingerprint is never adopted again."""
    reports = Reports()
    assert reports.report(A, A.fingerprint, now=0.0) == "refreshed"
    assert reports.withheld is A
    assert reports.is_reported(A)
    assert not reports.is_reported(B)


def test_reporting_another_token_changes_nothing():
    """A report of a token that is not the current one is already_rotated and withholds nothing."""
    reports = Reports()
    assert reports.report(B, A.fingerprint, now=0.0) == "already_rotated"
    assert reports.report(None, A.fingerprint, now=0.0) == "already_rotated"
    assert reports.withheld is None
    assert reports.rejected is None


def test_a_second_forced_refresh_within_the_throttle_is_refused():
    """Within the throttle a report is throttled; once it passed, the next one refreshes."""
    reports = Reports()
    assert reports.report(A, A.fingerprint, now=0.0) == "refreshed"
    reports.replaced()
    assert reports.report(B, B.fingerprint, now=INVALIDATE_THROTTLE - 0.1) == "throttled"
    assert reports.withheld is None
    assert reports.report(B, B.fingerprint, now=INVALIDATE_THROTTLE) == "refreshed"
    assert reports.withheld is B


def test_a_withheld_token_is_handed_back_once_while_it_serves():
    """No replacement: the withheld token comes back once, and only while it is servable."""
    reports = Reports()
    reports.report(A, A.fingerprint, now=0.0)
    assert reports.hand_back(now=50.0, min_ttl=30.0) is A
    assert reports.hand_back(now=50.0, min_ttl=30.0) is None
    reports.report(A, A.fingerprint, now=INVALIDATE_THROTTLE)
    assert reports.hand_back(now=71.0, min_ttl=30.0) is None  # 29 s left: not servable


def test_a_replacement_clears_the_withheld_token():
    """Once a new token arrived there is nothing to hand back."""
    reports = Reports()
    reports.report(A, A.fingerprint, now=0.0)
    reports.replaced()
    assert reports.withheld is None
    assert reports.hand_back(now=1.0, min_ttl=30.0) is None
    assert reports.is_reported(A)  # still never adopted again


def test_repr_names_fingerprints_only():
    """The repr shows fingerprints, never a token."""
    reports = Reports()
    reports.report(A, A.fingerprint, now=0.0)
    assert repr(reports) == f"Reports(rejected={A.fingerprint!r}, withheld={A.fingerprint!r})"
