"""The config model's choices: each refresh window and each secret source, exact."""

from pathlib import Path

import pytest

from sidecar.config import (
    EnvSecret,
    FileSecret,
    InlineSecret,
    ProfileConfig,
    RefreshBefore,
    RefreshDuration,
    RefreshShare,
    SecretRef,
)

CANARY = "s3cret-LEAKCANARY-model"


@pytest.mark.parametrize(
    ("refresh_before", "lifetime", "window"),
    [
        (RefreshDuration(300), 86400, 300),  # a duration ignores the lifetime
        (RefreshDuration(300), 60, 300),
        (RefreshDuration(0.5), 3600, 0.5),
        (RefreshShare(0.2), 86400, 17280),  # a share scales with it
        (RefreshShare(0.2), 3600, 720),
        (RefreshShare(0.5), 60, 30),
        (RefreshShare(0.25), 0, 0),
    ],
)
def test_refresh_window(refresh_before: RefreshBefore, lifetime, window):
    """The nominal window is the duration itself, or the share of the lifetime."""
    assert refresh_before.window(lifetime) == window


def test_default_refresh_before_is_a_fifth_of_the_lifetime():
    """A profile that says nothing refreshes at 20 % of the lifetime."""
    assert ProfileConfig.refresh_before == RefreshShare(0.2)


@pytest.mark.parametrize(
    ("ref", "described"),
    [
        (InlineSecret(CANARY), "inline"),
        (EnvSecret("CLIENT_SECRET"), "env:CLIENT_SECRET"),
        (
            FileSecret(Path("/var/run/secrets/auth0/client_secret")),
            "file:/var/run/secrets/auth0/client_secret",
        ),
    ],
)
def test_secret_ref_repr_names_the_source(ref: SecretRef, described):
    """Each secret source's repr and str are exactly SecretRef(<where>), with no value."""
    expected = f"SecretRef({described})"
    assert (ref.describe(), repr(ref), str(ref)) == (described, expected, expected)
    assert CANARY not in repr(ref)


def test_secret_sources_are_distinct():
    """The same text as an inline value, a variable name or a path is three different sources."""
    assert len({InlineSecret("x"), EnvSecret("x"), FileSecret(Path("x"))}) == 3
