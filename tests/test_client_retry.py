"""The 401 rule (token_sidecar_client._retry) that every adapter asks."""

from __future__ import annotations

import pytest

from token_sidecar_client import SidecarError, Token
from token_sidecar_client._retry import replacement, should_retry

REPORTED = Token("rejected-value", 1800000000.0, stale=False, profile="api")


@pytest.mark.parametrize(
    ("status", "replayable", "retry"),
    [
        (401, True, True),
        (401, False, False),  # a one-shot body cannot be sent again
        (403, True, False),  # a missing scope: a new token does not fix it
        (200, True, False),
        (500, True, False),
    ],
)
def test_should_retry(status, replayable, retry):
    """Only a 401 to a request whose body can be sent again earns a retry."""
    assert should_retry(status, replayable) is retry


def test_a_different_token_is_the_replacement():
    """The sidecar's answer is retried with when it is another token."""
    fresh = Token("fresh-value", 1800003600.0, stale=False, profile="api")
    assert replacement(REPORTED, fresh) is fresh


def test_the_same_token_back_is_throttled():
    """The reported token answered back unflagged means the throttle: raise, do not replay."""
    with pytest.raises(SidecarError) as info:
        replacement(REPORTED, Token("rejected-value", 1800000000.0, stale=False, profile="api"))
    error = info.value
    assert (error.code, error.status, error.retry_after, error.retryable) == (
        "throttled",
        200,
        10.0,
        False,
    )
    assert "rejected-value" not in str(error)


def test_the_same_token_back_stale_is_unavailable():
    """The reported token answered back stale means the IdP failed: token_unavailable."""
    with pytest.raises(SidecarError) as info:
        replacement(REPORTED, Token("rejected-value", 1800000000.0, stale=True, profile="api"))
    error = info.value
    assert (error.code, error.retry_after, error.retryable) == ("token_unavailable", None, True)
    assert str(error) == (
        "token_unavailable: the sidecar could not replace the rejected token; the API's 401 stands"
    )
