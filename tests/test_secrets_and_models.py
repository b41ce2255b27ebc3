"""Secrets stay out of reprs and logs; credentials load from file, env or inline."""

from __future__ import annotations

import asyncio
import io
import logging

import orjson
import pytest
from conftest import CLIENT_SECRET, make_profile

from sidecar.clock import wait_until
from sidecar.config import EnvSecret, FileSecret, InlineSecret
from sidecar.credentials import Credentials, CredentialStore, Secret
from sidecar.errors import CredentialsError
from sidecar.logs import REDACTED, JSONFormatter, TextFormatter, configure_logging
from sidecar.testing import FakeClock
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
    assert CLIENT_SECRET not in repr(make_profile(idp))


def test_json_formatter_redacts_sensitive_fields():
    """A sensitive field name is redacted whatever value a caller passes."""
    record = logging.LogRecord("sidecar.x", logging.INFO, __file__, 1, "token.refreshed", (), None)
    record.profile = "api"
    record.client_secret = CLIENT_SECRET
    record.access_token = "tok"
    entry = orjson.loads(JSONFormatter().format(record))
    assert entry["event"] == "token.refreshed"
    assert entry["level"] == "info"
    assert entry["profile"] == "api"
    assert entry["client_secret"] == REDACTED
    assert entry["access_token"] == REDACTED
    assert set(entry) == {"ts", "level", "event", "profile", "client_secret", "access_token"}


def test_text_formatter_is_one_line_with_fields():
    """Text logs read as time, level, event and key=value fields."""
    record = logging.LogRecord(
        "sidecar.x", logging.WARNING, __file__, 1, "refresh.failed", (), None
    )
    record.profile = "api"
    record.password = "hunter2"
    line = TextFormatter().format(record)
    assert "warning refresh.failed profile=api password=[redacted]" in line
    assert "hunter2" not in line


def test_text_formatter_escapes_control_characters():
    """A path with a newline cannot forge a second text log line; plain values are unchanged."""
    record = logging.LogRecord("sidecar.access", logging.INFO, __file__, 1, "http.access", (), None)
    record.path = "/v1/token/x\n17:11:00 error   refresh.failed profile=api\x1b[2J"
    record.method = "GET"
    line = TextFormatter().format(record)
    assert "\n" not in line
    forged = "/v1/token/x\\n17:11:00 error   refresh.failed profile=api\\x1b[2J"
    assert line.endswith(f"http.access path={forged} method=GET")


def test_configure_logging_writes_json_lines():
    """configure_logging sends sidecar events, and other libraries' warnings, as JSON lines."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("json", stream=stream)
        logging.getLogger("sidecar.test").info("demo.event", extra={"profile": "p"})
        logging.getLogger("aiohttp.server").error("Error handling request")
        logging.getLogger("aiohttp.server").info("not shown below warning")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("sidecar").handlers.clear()
        logging.getLogger("sidecar").propagate = True
    events = [orjson.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["demo.event", "Error handling request"]


def test_leak_scan_would_catch_a_leak(leaks, log_output):
    """The autouse leak scan finds a secret that reached a log line."""
    logging.getLogger("sidecar.test").warning("oops", extra={"detail": CLIENT_SECRET})
    leaked = [v for v in leaks.all_values() if v in log_output.getvalue()]
    assert leaked == [CLIENT_SECRET]
    log_output.truncate(0)  # let the real scan at teardown pass


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


async def test_wait_until_times_out_on_the_clock():
    """wait_until returns False once the clock passes the timeout, True when the event fires."""
    clock = FakeClock()
    event = asyncio.Event()
    waiter = asyncio.ensure_future(wait_until(clock, event, 5))
    await clock.advance(4.9)
    assert not waiter.done()
    await clock.advance(0.1)
    assert await waiter is False
    waiter = asyncio.ensure_future(wait_until(clock, event, 5))
    await clock.advance(1)
    event.set()
    assert await waiter is True
    assert clock.sleepers == 0


async def test_fake_clock_wakes_sleepers_in_deadline_order():
    """Sleepers wake in deadline order, each at its own instant."""
    clock = FakeClock(start=0.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.ensure_future(sleeper(n, s)) for n, s in (("b", 20), ("a", 10), ("c", 30))]
    await clock.wait_for_sleepers(3)
    assert clock.next_deadline() == 10
    await clock.advance(25)
    assert woke == [("a", 10), ("b", 20)]
    await clock.advance(5)
    assert woke[-1] == ("c", 30)
    await asyncio.gather(*tasks)
    assert clock.time() - clock.monotonic() == 1_800_000_000.0
