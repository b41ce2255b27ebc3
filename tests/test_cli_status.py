"""``token-sidecar status``: the table, its exit codes, ``--json``, ``--watch`` and colour.

The in-process tests serve a real ops app on loopback for a service on the
FakeClock and read it with the command's own code on the same clock, so
every countdown in the table is exact. The subprocess tests run the command
against a ``serve`` process.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import signal

import orjson
import pytest
from aiohttp import web

from sidecar.cli._defaults import DEFAULT_OPS_URL
from sidecar.cli.status import (
    StatusView,
    default_url,
    format_duration,
    run_status,
    show_status,
    use_colour,
)
from sidecar.ops_api import make_ops_app
from sidecar.testing import free_port
from tests.support.builders import MCP_AUDIENCE, make_exchange_profile, make_profile
from tests.support.e2e import HEADERS, get_json, profile_toml, run_cli, wait_ready
from tests.support.virtual_time import idle, run_for

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture
def ops_url(aiohttp_server):
    """Serve the ops app of ``service`` on loopback and return its base URL."""

    async def serve(service) -> str:
        server = await aiohttp_server(make_ops_app(service))
        return str(server.make_url("")).rstrip("/")

    return serve


async def status_of(url: str, clock, *, colour: bool = False, as_json: bool = False):
    out = io.StringIO()
    code = await show_status(url, StatusView(out, colour=colour, as_json=as_json), clock)
    return code, out.getvalue()


def cells(text: str) -> list[list[str]]:
    """The table's rows split into cells (two or more spaces apart), header line dropped."""
    return [re.split(r"\s{2,}", line) for line in text.splitlines()[1:]]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0, "0s"),
        (9, "9s"),
        (60, "1m 00s"),
        (245, "4m 05s"),
        (3600, "1h 00m"),
        (3720, "1h 02m"),
        (86399, "23h 59m"),
        (86400 + 3 * 3600 + 59, "1d 03h"),
    ],
)
def test_format_duration(seconds, shown):
    """Countdowns read as a person reads them, to the two largest units."""
    assert format_duration(seconds) == shown


async def test_ready_sidecar_table_and_exit_0(idp, make_service, clock, ops_url):
    """A ready sidecar: every column of a client-credentials and an exchange row, exit 0."""
    idp.token_lifetime = 3600
    service = make_service(make_profile(idp), make_exchange_profile(idp))
    await idle(service)
    await service.exchanges.exchange("user-api", idp.issue_user_token("alice", MCP_AUDIENCE))
    url = await ops_url(service)
    entry = service.status()["profiles"]["api"]
    code, text = await status_of(url, clock)
    assert code == 0
    assert text.splitlines()[0] == "token-sidecar 0.1.0  READY  cache memory ok"
    next_in = format_duration(int(entry["next_refresh_at"] - clock.time()))
    assert cells(text) == [
        ["PROFILE", "STATE", "EXPIRES IN", "NEXT REFRESH", "CIRCUIT", "FALLBACKS", "LAST ERROR"],
        ["api", "ready", "1h 00m", next_in, "closed", "0", "-"],
        ["user-api", "exchange (1 cached)", "-", "-", "closed", "-", "-"],
    ]
    assert ANSI.search(text) is None  # not a terminal: no colour


async def test_stale_sidecar_shows_fallbacks_and_error_exit_0(idp, make_service, clock, ops_url):
    """IdP down after the first token: stale, still ready, breaker open, fallbacks counted."""
    idp.token_lifetime = 3600
    service = make_service(make_profile(idp))
    await idle(service)
    idp.faults.status = 503
    await run_for(clock, service, 3000)  # past the refresh instant; 10 min of token left
    for _ in range(3):
        assert (await service.get("api")).stale
    url = await ops_url(service)
    entry = service.status()["profiles"]["api"]
    failures = entry["consecutive_failures"]
    assert failures > 5  # the breaker opened, and its probes failed too
    code, text = await status_of(url, clock)
    assert code == 0
    assert "  READY  " in text.splitlines()[0]
    row = cells(text)[1]
    assert row == [
        "api",
        "stale",
        "10m 00s",
        format_duration(int(entry["next_refresh_at"] - clock.time())),
        "open",
        "3",
        f"circuit_open: circuit open: not calling the IdP (x{failures})",
    ]


async def test_unavailable_sidecar_exit_1(idp, make_service, clock, ops_url):
    """No token after failures: unavailable, NOT READY, exit 1; --json is /status itself."""
    idp.faults.status = 503
    service = make_service(make_profile(idp))
    await idle(service)
    url = await ops_url(service)
    code, text = await status_of(url, clock)
    assert code == 1
    assert "  NOT READY  " in text.splitlines()[0]
    row = cells(text)[1]
    assert row[:6] == ["api", "unavailable", "-", row[3], "closed", "0"]
    assert row[6].startswith("error: ")
    code, text = await status_of(url, clock, as_json=True)
    assert code == 1
    assert orjson.loads(text) == service.status()


async def test_recovered_error_is_marked(idp, make_service, clock, ops_url):
    """An error followed by a success stays visible, marked as recovered."""
    idp.token_lifetime = 3600
    idp.faults.status = 503
    service = make_service(make_profile(idp))
    await idle(service)
    idp.faults.status = None
    await run_for(clock, service, 60)
    assert service.status()["profiles"]["api"]["state"] == "ready"
    code, text = await status_of(await ops_url(service), clock)
    assert code == 0
    assert cells(text)[1][6].startswith("(recovered) error: ")


async def test_unreachable_exit_2(clock, capsys):
    """Nothing listening: exit 2, one line on stderr, nothing on stdout."""
    url = f"http://127.0.0.1:{free_port()}"
    code, text = await status_of(url, clock)
    assert (code, text) == (2, "")
    err = capsys.readouterr().err
    assert err.startswith(f"token-sidecar: status: cannot reach {url}: ")
    assert err.count("\n") == 1


async def test_answer_that_is_not_status_exit_2(clock, capsys, aiohttp_server):
    """A port answering something else (JSON of another shape, a 404) is not a sidecar."""

    async def other(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/status", other)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    assert await status_of(base, clock) == (2, "")
    assert "is not a token-sidecar status answer" in capsys.readouterr().err
    assert await status_of(base + "/nothing", clock) == (2, "")
    assert "/nothing/status answered 404" in capsys.readouterr().err


async def test_escape_sequences_in_an_answer_are_shown_not_obeyed(clock, aiohttp_server):
    """A hostile --url's texts are printed with control characters escaped; odd values tolerated."""
    evil = "\x1b]0;pwned\x07\x1b[2J"
    answer = {
        "ready": True,
        "version": f"1.0{evil}",
        "cache": {"backend": "redis", "state": f"up{evil}", "error": {"kind": evil, "detail": 1}},
        "profiles": {
            f"api{evil}\nforged row": {
                "state": f"ready{evil}",
                "expires_at": 1e308,
                "next_refresh_at": float("nan"),
                "circuit": "\r\x1b[31m",
                "last_error": {"kind": "transient", "description": f"boom{evil}"},
            },
            "weird": ["not", "a", "dict"],
            "huge": {"state": "ready", "expires_at": "soon", "next_refresh_at": True},
        },
    }

    async def status(_: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text='token_sidecar_fallback_total{profile="huge",reason="x"} +Inf\n')

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    server = await aiohttp_server(app)
    code, text = await status_of(str(server.make_url("")).rstrip("/"), clock)
    assert code == 0
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "\r" not in text
    assert text.count("\n") == 1 + 1 + 3  # header, column names, three rows: none forged
    assert "\\x1b]0;pwned\\x07" in text
    rows = {row[0]: row for row in cells(text)[1:]}
    forged = rows["api\\x1b]0;pwned\\x07\\x1b[2J\\x0aforged row"]
    assert forged[1:3] == ["ready\\x1b]0;pwned\\x07\\x1b[2J", "> 3650d"]
    assert rows["huge"][2:4] == ["-", "-"]  # a string and a bool are no instants
    assert rows["huge"][5] == "?"  # an infinite count is not shown as a number
    assert rows["weird"][1] == "?"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_an_endless_answer_is_cut_off_and_is_not_a_sidecar(
    clock, capsys, aiohttp_server, framing
):
    """An answer past 4 MiB is not read to its end: exit 2 saying so."""

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if framing == "content-length":
            response.content_length = 1 << 40
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b" " * (1 << 20)
        for _ in range(64):  # 64 MiB at most, then the test server stops by itself
            await response.write(chunk)
        return response

    app = web.Application()
    app.router.add_get("/status", endless)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    assert await status_of(base, clock) == (2, "")
    assert "answered more than 4194304 bytes" in capsys.readouterr().err


async def test_watch_redraws_every_interval(idp, make_service, clock, ops_url):
    """--watch draws at once, then every interval of the injected clock, until the bound."""
    idp.token_lifetime = 3600
    service = make_service(make_profile(idp))
    await idle(service)
    url = await ops_url(service)
    out = io.StringIO()
    view = StatusView(out, colour=False, as_json=False)
    watching = asyncio.create_task(show_status(url, view, clock, interval=30, iterations=3))
    for drawn in (1, 2):
        await clock.wait_for_sleepers(2)  # the refresh loop and the watch
        assert out.getvalue().count("PROFILE") == drawn
        await clock.advance(30)
    assert await asyncio.wait_for(watching, 5) == 0
    snapshots = out.getvalue().split("\n\n")
    assert [cells(s)[1][2] for s in snapshots if s] == ["1h 00m", "59m 30s", "59m 00s"]


async def test_watch_survives_an_unreachable_sidecar(clock):
    """While watching, an unreachable sidecar is a line in the redraw, not the end; exit 2."""
    out = io.StringIO()
    view = StatusView(out, colour=False, as_json=False)
    url = f"http://127.0.0.1:{free_port()}"
    watching = asyncio.create_task(show_status(url, view, clock, interval=5, iterations=2))
    await clock.wait_for_sleepers(1)
    await clock.advance(5)
    assert await asyncio.wait_for(watching, 5) == 2
    assert out.getvalue().count(f"unreachable: cannot reach {url}") == 2


async def test_colour_on_a_terminal_only(idp, make_service, clock, ops_url):
    """Colour and the clear-screen redraw appear when asked for, and nowhere else."""
    service = make_service(make_profile(idp))
    await idle(service)
    url = await ops_url(service)
    code, plain = await status_of(url, clock)
    assert code == 0
    _, coloured = await status_of(url, clock, colour=True)
    assert "\x1b[32mready" in coloured
    assert ANSI.sub("", coloured) == plain
    assert ANSI.search(plain) is None
    out = io.StringIO()
    await show_status(
        url, StatusView(out, colour=True, as_json=False), clock, interval=1, iterations=1
    )
    assert out.getvalue().startswith("\x1b[H\x1b[2J")


def test_use_colour_needs_a_terminal_and_no_no_color():
    """isatty decides, and NO_COLOR (non-empty) always wins."""
    main, other = os.openpty()
    try:
        with open(other, "w", closefd=False) as tty:
            assert use_colour(tty, {}) is True
            assert use_colour(tty, {"NO_COLOR": ""}) is True  # empty means unset (no-color.org)
            assert use_colour(tty, {"NO_COLOR": "1"}) is False
        assert use_colour(io.StringIO(), {}) is False
    finally:
        os.close(main)
        os.close(other)


@pytest.mark.parametrize(
    ("ops_listen", "url"),
    [
        ('"0.0.0.0:9801"', "http://127.0.0.1:9801"),
        ('"127.0.0.2:9802"', "http://127.0.0.2:9802"),
        ('"[::]:9803"', "http://[::1]:9803"),
        ('"[::1]:9804"', "http://[::1]:9804"),
        ('""', ""),
    ],
)
def test_default_url_from_config(tmp_path, ops_listen, url):
    """--config: ask the config's ops_listen, a wildcard bind on loopback."""
    path = tmp_path / "c.toml"
    path.write_text(
        f"[server]\nops_listen = {ops_listen}\n"
        '[profiles.api]\ntoken_url = "https://idp.example/oauth/token"\n'
        'client_id = "c"\nclient_secret = "s"\n'
    )
    assert default_url(str(path)) == url
    assert default_url(None) == DEFAULT_OPS_URL == "http://127.0.0.1:9700"


def test_usage_errors_exit_2(tmp_path, capsys):
    """A non-positive interval and a config without ops_listen are usage errors."""
    assert (
        run_status(None, config_path=None, as_json=False, watch=True, interval=0, environ={}) == 2
    )
    assert "--interval must be above 0" in capsys.readouterr().err
    path = tmp_path / "c.toml"
    path.write_text(
        '[server]\nops_listen = ""\n[profiles.api]\n'
        'token_url = "https://idp.example/oauth/token"\nclient_id = "c"\nclient_secret = "s"\n'
    )
    assert (
        run_status(None, config_path=str(path), as_json=False, watch=False, interval=2, environ={})
        == 2
    )
    assert "has no ops_listen: pass --url" in capsys.readouterr().err


# -- the command, against serve processes ----------------------------------------------


@pytest.mark.slow
async def test_command_against_serve(real_idp, sidecar_factory, http):
    """The real command: exit 0 ready, --config finds the port, never a token, exit 1 and 2."""
    sidecar = await sidecar_factory(profile_toml(real_idp))
    await wait_ready(http, sidecar)
    _, token = await get_json(http, f"{sidecar.url}/v1/token/api", headers=HEADERS)
    fingerprint = hashlib.sha256(token["access_token"].encode()).hexdigest()[:12]

    code, out, err = await run_cli("status", "--url", sidecar.ops)
    assert (code, err) == (0, ""), err
    assert cells(out)[1][:3] == ["api", "ready", cells(out)[1][2]]
    assert re.fullmatch(r"(59m \d\ds|1h 00m)", cells(out)[1][2])
    code, by_config, _ = await run_cli("status", "--config", str(sidecar.config))
    assert code == 0
    assert cells(by_config)[1][:2] == ["api", "ready"]
    code, as_json, _ = await run_cli("status", "--url", sidecar.ops, "--json")
    assert code == 0
    assert orjson.loads(as_json)["profiles"]["api"]["fingerprint"] == fingerprint  # this token
    for printed in (out, by_config, as_json):
        assert token["access_token"] not in printed

    real_idp.faults.status = 503
    sidecar.write_config(profile_toml(real_idp, name="other"))  # a new profile can get no token
    sidecar.send_signal(signal.SIGHUP)
    await sidecar.wait_event("refresh.failed")
    code, out, _ = await run_cli("status", "--url", sidecar.ops)
    assert code == 1
    assert cells(out)[1][:2] == ["other", "unavailable"]

    assert await sidecar.stop() == 0
    code, out, err = await run_cli("status", "--url", sidecar.ops)
    assert (code, out) == (2, "")
    assert err.startswith(f"token-sidecar: status: cannot reach {sidecar.ops}")
