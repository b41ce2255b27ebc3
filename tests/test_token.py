"""HeldToken: deadlines, derived state, whole seconds left, a masked repr, the fingerprint."""

from __future__ import annotations

import pytest

from sidecar.token import HeldToken, TokenState, fingerprint


def _token(value: str = "eyJ.secret.token") -> HeldToken:
    return HeldToken(
        value=value,
        token_type="Bearer",
        scope="read:tools",
        obtained_at=0.0,
        refresh_at=80.0,
        expires_at=100.0,
        expires_at_wall=1_800_000_100.0,
        fingerprint=fingerprint(value),
    )


def test_token_repr_is_exact_and_masked():
    """A token's repr shows its fingerprint and expiry, never its value."""
    token = _token()
    assert repr(token) == (
        f"HeldToken(fingerprint='{fingerprint('eyJ.secret.token')}', "
        "expires_at_wall=1800000100, value=[secure])"
    )
    assert str(token) == repr(token)
    assert "secret" not in repr(token)


def test_fingerprint_is_12_hex_of_sha256():
    """The fingerprint is the first 12 hex digits of SHA-256."""
    assert fingerprint("abc") == "ba7816bf8f01"


@pytest.mark.parametrize(
    ("now", "min_ttl", "state"),
    [
        (0.0, 10, TokenState.FRESH),
        (79.9, 10, TokenState.FRESH),
        (80.0, 10, TokenState.STALE),
        (89.9, 10, TokenState.STALE),
        (90.0, 10, TokenState.EXPIRED),
        (70.0, 30, TokenState.EXPIRED),
    ],
)
def test_token_state_derives_from_deadlines(now, min_ttl, state):
    """Token state follows the refresh instant and the min_ttl line."""
    assert _token().state(now, min_ttl=min_ttl) is state
    assert _token().servable(now, min_ttl) is (state is not TokenState.EXPIRED)


def test_expires_in_rounds_down():
    """Seconds left are whole and never more than there is."""
    assert _token().expires_in(10.4) == 89
    assert _token().expires_in(150.0) == 0
