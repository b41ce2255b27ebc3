"""Credentials load from a file, an env var or inline; their holders never show a secret."""

from __future__ import annotations

import pytest

from sidecar.config import EnvSecret, FileSecret, InlineSecret
from sidecar.credentials import Credentials, CredentialStore, Secret
from sidecar.errors import CredentialsError
from tests.support.builders import CLIENT_SECRET, make_profile


def test_secret_and_credentials_reprs_are_masked():
    """Secret holders show neither the secret nor the key."""
    secret = Secret(CLIENT_SECRET)
    creds = Credentials("client", secret, Secret("-----BEGIN PRIVATE KEY-----"), "f" * 64)
    assert repr(secret) == "Secret([secure])"
    assert str(secret) == "Secret([secure])"
    assert repr(creds) == "Credentials(client_id='client', version='ffffffff')"
    assert repr(InlineSecret(CLIENT_SECRET)) == "SecretRef(inline)"
    assert repr(EnvSecret("X")) == "SecretRef(env:X)"


def test_profile_repr_has_no_secret(idp):
    """The profile config repr names secret sources, never values."""
    shown = repr(make_profile(idp))
    assert "client_secret=SecretRef(inline)" in shown
    assert "client_id=SecretRef(inline)" in shown
    assert CLIENT_SECRET not in shown


def test_credentials_from_env_file_and_inline(idp, tmp_path):
    """Credentials load from an env var, a file (stripped) or inline, with a version."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(CLIENT_SECRET + "\n")
    store = CredentialStore(
        make_profile(idp, client_id=EnvSecret("CID"), client_secret=FileSecret(secret_file)),
        {"CID": "client-from-env"},
    )
    creds = store.load()
    assert creds.client_id == "client-from-env"
    assert creds.client_secret == Secret(CLIENT_SECRET)
    assert store.watches_files
    assert not store.changed()
    secret_file.write_text("rotated")
    assert store.changed()


def test_missing_env_credential_is_a_credentials_error(idp):
    """A credential env var that is not set is a clear, secret-free error."""
    store = CredentialStore(make_profile(idp, client_secret=EnvSecret("MISSING")), {})
    with pytest.raises(CredentialsError, match="environment variable MISSING is not set"):
        store.load()


def test_unreadable_and_empty_files_are_credentials_errors(idp, tmp_path):
    """A missing or empty secret file names the file and the problem."""
    missing = CredentialStore(make_profile(idp, client_secret=FileSecret(tmp_path / "nope")))
    with pytest.raises(CredentialsError, match="cannot read"):
        missing.load()
    empty_file = tmp_path / "empty"
    empty_file.write_text("  \n")
    empty = CredentialStore(make_profile(idp, client_secret=FileSecret(empty_file)))
    with pytest.raises(CredentialsError, match="is empty"):
        empty.load()


def test_file_mid_swap_is_not_a_change(idp, tmp_path):
    """A briefly missing secret file is not reported as a change."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(CLIENT_SECRET)
    store = CredentialStore(make_profile(idp, client_secret=FileSecret(secret_file)))
    store.load()
    secret_file.unlink()
    assert not store.changed()
    secret_file.write_text(CLIENT_SECRET)  # back with the same value: still no change
    assert not store.changed()
    secret_file.write_text("rotated")  # back with a new value: a change
    assert store.changed()
