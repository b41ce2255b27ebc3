"""The helpers tests and benchmarks share: token seeding and the ``serve`` child process."""

from __future__ import annotations

import random
import socket
from types import MappingProxyType

import pytest

from sidecar.config import Config, InlineSecret, ProfileConfig
from sidecar.service import TokenService
from sidecar.testing import FakeClock, LogEvent, SidecarProcess, free_port, seed_token
from sidecar.token import fingerprint


def unstarted_service(session, clock: FakeClock) -> TokenService:
    profile = ProfileConfig(
        name="api",
        token_url="http://127.0.0.1:1/oauth/token",
        client_id=InlineSecret("seed-client"),
    )
    config = Config(profiles=MappingProxyType({"api": profile}))
    return TokenService(config, session, clock=clock, rng=random.Random(1), environ={})


async def test_seed_token_makes_a_profile_serve_at_once(session, clock):
    """A seeded token is held with deadlines on the given clock and served without an IdP."""
    refresher = unstarted_service(session, clock).refreshers["api"]
    held_before = refresher.token
    assert held_before is None
    now, wall = clock.monotonic(), clock.time()
    token = seed_token(refresher, "seeded-value", lifetime=3600, clock=clock, refresh_in=3000)
    assert refresher.token is token
    assert (token.obtained_at, token.refresh_at, token.expires_at) == (now, now + 3000, now + 3600)
    assert token.expires_at_wall == wall + 3600
    assert token.fingerprint == fingerprint("seeded-value")
    served = await refresher.get()
    assert served.token is token
    assert served.stale is False


async def test_seed_token_is_due_for_refresh_at_expiry_by_default(session, clock):
    """Without refresh_in, a seeded token stays fresh for its whole lifetime."""
    refresher = unstarted_service(session, clock).refreshers["api"]
    token = seed_token(refresher, "v", lifetime=60, clock=clock, scope="read:tools")
    assert token.refresh_at == token.expires_at == clock.monotonic() + 60
    assert token.scope == "read:tools"


def test_free_port_can_be_bound():
    """free_port names a loopback port nobody holds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))


def test_server_table_and_config_file(tmp_path):
    """The config file is the [server] table on the process's ports, then the profiles."""
    sidecar = SidecarProcess(
        tmp_path, "[profiles.a]\n", socket_path=tmp_path / "s.sock", server_extra="x = 1"
    )
    assert sidecar.server_toml() == (
        "[server]\n"
        f'listen = "127.0.0.1:{sidecar.port}"\n'
        f'ops_listen = "127.0.0.1:{sidecar.ops_port}"\n'
        f'socket = "{tmp_path / "s.sock"}"\n'
        "x = 1\n"
    )
    sidecar.write_config("[profiles.b]\n")
    assert sidecar.config.read_text() == sidecar.server_toml() + "[profiles.b]\n"
    assert sidecar.url == f"http://127.0.0.1:{sidecar.port}"
    assert repr(sidecar) == f"SidecarProcess(pid=None, port={sidecar.port}, events=0)"
    with pytest.raises(RuntimeError):
        _ = sidecar.pid


def test_log_event_is_the_json_fields_and_when_they_were_read():
    """A LogEvent compares as its fields and carries the instant it was read."""
    event = LogEvent({"event": "sidecar.started"}, received_at=12.5)
    assert event == {"event": "sidecar.started"}
    assert event.received_at == 12.5


async def test_unstarted_process_stops_with_no_exit_code(tmp_path):
    """Stopping a process that never started does nothing and reports no exit code."""
    assert await SidecarProcess(tmp_path, "").stop() is None


@pytest.mark.slow
async def test_wait_event_fails_fast_when_the_process_exits(tmp_path):
    """A child that exits before the awaited event fails the wait at once, not at the timeout."""
    sidecar = SidecarProcess(tmp_path, "[profiles.api]\nnonsense = 1\n", timeout=60)
    try:
        with pytest.raises(RuntimeError, match=r"exited before 'sidecar\.started'"):
            await sidecar.start()
        assert sidecar.exited
        assert await sidecar.stop(None) == 2  # it is exiting by itself: no signal
    finally:
        await sidecar.kill()
