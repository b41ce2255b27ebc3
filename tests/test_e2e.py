"""End to end: a real ``token-sidecar serve`` process against the development IdP.

The IdP runs in the test process on loopback with the real clock; the sidecar
is a subprocess started from a TOML file. Readiness is awaited by reading the
daemon's own JSON log events, not by sleeping.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from typing import Any

import aiohttp
import orjson
import pytest

from sidecar.testing import START_TIMEOUT, SidecarProcess, free_port
from tests.support.e2e import (
    E2E_SECRET,
    HEADERS,
    get_json,
    profile_toml,
    run_cli,
    wait_ready,
)

pytestmark = pytest.mark.slow


async def test_serves_over_tcp_and_unix_socket(real_idp, sidecar_factory, http, short_tmp):
    """One token is served over loopback TCP and the Unix socket, and the guards hold."""
    sock = short_tmp / "t.sock"
    sidecar = await sidecar_factory(profile_toml(real_idp), socket_path=sock)
    await wait_ready(http, sidecar)
    status, body = await get_json(http, f"{sidecar.url}/v1/token/api", headers=HEADERS)
    assert status == 200
    assert body["profile"] == "api"
    assert body["stale"] is False
    assert 3500 < body["expires_in"] <= 3600
    assert oct(sock.stat().st_mode & 0o777) == oct(0o660)
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as unix,
        unix.get("http://localhost/v1/token/api", headers=HEADERS) as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["access_token"] == body["access_token"]
    guards = [
        ({}, 400, "missing_header"),
        ({**HEADERS, "X-Forwarded-For": "10.0.0.1"}, 403, "forbidden"),
        ({**HEADERS, "Forwarded": "for=1.2.3.4"}, 403, "forbidden"),
        ({**HEADERS, "Via": "1.1 proxy"}, 403, "forbidden"),
        ({**HEADERS, "Host": "evil.example"}, 403, "forbidden"),
    ]
    for headers, expected_status, code in guards:
        status, error = await get_json(http, f"{sidecar.url}/v1/token/api", headers=headers)
        assert (status, error["error"]) == (expected_status, code)
        assert body["access_token"] not in orjson.dumps(error).decode()
    assert await sidecar.stop() == 0
    assert not sock.exists()
    assert sidecar.count("sidecar.stopped") == 1


async def test_readiness_waits_for_first_token_and_livez_ignores_outage(
    real_idp, sidecar_factory, http
):
    """/readyz is 503 until the first token arrives; /livez stays 200 through an IdP outage."""
    real_idp.faults.hang = True
    sidecar = await sidecar_factory(profile_toml(real_idp, wait_timeout='"1s"'))
    await real_idp.faults.wait_hung(1)
    status, body = await get_json(http, f"{sidecar.ops}/readyz")
    assert status == 503
    assert body == {"ready": False, "profiles": {"api": "warming"}}
    real_idp.faults.hang = False
    real_idp.release_hang()
    await wait_ready(http, sidecar)
    real_idp.faults.status = 503
    token = (await get_json(http, f"{sidecar.url}/v1/token/api", headers=HEADERS))[1]
    async with http.post(
        f"{sidecar.url}/v1/token/api/invalidate",
        headers=HEADERS,
        json={"access_token": token["access_token"]},
    ) as resp:
        # No replacement while the IdP is down: the reported token is served again, stale.
        assert resp.status == 200
        answer = await resp.json()
    assert (answer["access_token"], answer["stale"]) == (token["access_token"], True)
    assert answer["result"] == "refreshed"
    await sidecar.wait_event("refresh.failed")
    status, body = await get_json(http, f"{sidecar.ops}/status")
    assert body["profiles"]["api"]["state"] == "stale"  # an outage, and shown as one
    assert body["profiles"]["api"]["last_error"]["kind"] == "error"
    status, _ = await get_json(http, f"{sidecar.ops}/readyz")
    assert status == 200  # one API's 401 during an IdP incident keeps the pod in service
    status, _ = await get_json(http, f"{sidecar.ops}/livez")
    assert status == 200
    assert await sidecar.stop() == 0


async def test_invalidate_min_ttl_and_metrics(real_idp, sidecar_factory, http):
    """Invalidate rotates once then throttles; min_ttl is validated; metrics count both."""
    sidecar = await sidecar_factory(profile_toml(real_idp), server_extra="access_log = true")
    await wait_ready(http, sidecar)
    url = f"{sidecar.url}/v1/token/api"
    first = (await get_json(http, url, headers=HEADERS))[1]
    results = []
    for report in (first["access_token"], None, first["access_token"]):
        current = (await get_json(http, url, headers=HEADERS))[1]
        payload = {"access_token": report or current["access_token"]}
        async with http.post(f"{url}/invalidate", headers=HEADERS, json=payload) as resp:
            assert resp.status == 200
            results.append((await resp.json())["access_token"])
    assert results[0] != first["access_token"]  # refreshed
    assert results[1] == results[0]  # throttled: same token back
    assert results[2] == results[0]  # already rotated
    assert (await get_json(http, url, headers=HEADERS, params={"min_ttl": "60"}))[0] == 200
    for bad in ("abc", "-1", "3000"):
        status, body = await get_json(http, url, headers=HEADERS, params={"min_ttl": bad})
        assert (status, body["error"]) == (400, "bad_request")
    async with http.get(f"{sidecar.ops}/metrics") as resp:
        text = await resp.text()
    for outcome in ("refreshed", "throttled", "already_rotated"):
        assert f'token_sidecar_invalidations_total{{profile="api",result="{outcome}"}} 1.0' in text
    assert 'token_sidecar_refresh_total{profile="api",result="success"} 2.0' in text
    assert await sidecar.stop() == 0
    access = [e for e in sidecar.events if e.get("event") == "http.access"]
    assert {"method": "GET", "path": "/v1/token/api", "status": 200}.items() <= access[0].items()
    assert not any("min_ttl" in orjson.dumps(e).decode() for e in access)


async def test_sighup_under_load_loses_no_request(real_idp, sidecar_factory, http):
    """A SIGHUP reload under concurrent load answers every request and adds the new profile."""
    sidecar = await sidecar_factory(profile_toml(real_idp))
    await wait_ready(http, sidecar)
    url = f"{sidecar.url}/v1/token/api"
    statuses: list[int] = []
    answered = asyncio.Condition()
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            async with http.get(url, headers=HEADERS) as resp:
                statuses.append(resp.status)
            async with answered:
                answered.notify_all()

    async def answers(count: int) -> None:
        async with asyncio.timeout(START_TIMEOUT), answered:
            await answered.wait_for(lambda: len(statuses) >= count)

    callers = [asyncio.create_task(caller()) for _ in range(16)]
    await answers(len(callers))  # the load is running
    sidecar.write_config(profile_toml(real_idp) + profile_toml(real_idp, name="second"))
    sidecar.send_signal(signal.SIGHUP)
    reloaded = await sidecar.wait_event("config.reloaded")
    assert reloaded["added"] == ["second"]
    assert reloaded["restarted"] == []
    await answers(len(statuses) + len(callers))  # and runs on after the reload
    stop.set()
    await asyncio.gather(*callers)
    assert len(statuses) >= len(callers)  # every caller was answered at least once
    assert set(statuses) == {200}
    status, _ = await get_json(http, f"{sidecar.url}/v1/token/second", headers=HEADERS)
    assert status == 200
    # A broken config is logged and the running one kept.
    sidecar.config.write_text("[server]\nlisten = 5\n" + profile_toml(real_idp))
    sidecar.send_signal(signal.SIGHUP)
    failed = await sidecar.wait_event("config.reload_failed")
    assert "server.listen" in failed["error"]
    assert (await get_json(http, url, headers=HEADERS))[0] == 200
    assert await sidecar.stop() == 0


async def test_sigterm_lets_in_flight_requests_finish(real_idp, sidecar_factory, http):
    """SIGTERM while callers wait for a hanging IdP answers every one of them and exits 0."""
    real_idp.faults.hang = True
    sidecar = await sidecar_factory(profile_toml(real_idp))
    url = f"{sidecar.url}/v1/token/api"
    sent = asyncio.Semaphore(0)

    async def on_headers_sent(*_: Any) -> None:
        sent.release()

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(on_headers_sent)
    async with aiohttp.ClientSession(trace_configs=[trace]) as callers:
        pending = [asyncio.create_task(get_json(callers, url, headers=HEADERS)) for _ in range(20)]
        await real_idp.faults.wait_hung(1)
        async with asyncio.timeout(START_TIMEOUT):
            for _ in pending:
                await sent.acquire()
        # The sidecar accepts connections and reads them in arrival order, so once a
        # request sent after all of theirs is answered, every caller's request is in.
        assert (await get_json(http, url))[0] == 400
        sidecar.send_signal(signal.SIGTERM)
        await sidecar.wait_event("sidecar.stopping")
        # The IdP still hangs: every answer comes from the shutdown, none from a
        # token (a request the sidecar had not read yet must not find one either).
        results = await asyncio.gather(*pending)
        real_idp.faults.hang = False
        real_idp.release_hang()
    # DESIGN: callers waiting for a refresh get 503 shutting_down at once, not an empty reply.
    assert [(status, body["error"]) for status, body in results] == [(503, "shutting_down")] * 20
    assert await sidecar.stop(None) == 0


async def test_secret_never_leaves_the_process(real_idp, sidecar_factory, http):
    """Through success, failure and misconfiguration, no secret or token reaches any output."""
    profiles = profile_toml(real_idp, wait_timeout='"1s"') + profile_toml(
        real_idp, name="broken", secret="wrong-LEAKCANARY-secret", required="false"
    )
    sidecar = await sidecar_factory(profiles)
    await wait_ready(http, sidecar)
    await sidecar.wait_event("refresh.failed")
    outputs = []
    status, token = await get_json(http, f"{sidecar.url}/v1/token/api", headers=HEADERS)
    assert status == 200
    status, error = await get_json(http, f"{sidecar.url}/v1/token/broken", headers=HEADERS)
    assert (status, error["error"]) == (503, "misconfigured")
    assert "access_denied" in error["message"]
    outputs.append(orjson.dumps(error).decode())
    real_idp.faults.status = 500
    async with http.post(
        f"{sidecar.url}/v1/token/api/invalidate",
        headers=HEADERS,
        json={"access_token": token["access_token"]},
    ) as resp:
        # The token API hands the reported token back (stale): a deliberate answer, not a leak.
        assert (resp.status, (await resp.json())["stale"]) == (200, True)
    for path in ("/status", "/metrics", "/readyz", "/livez"):
        async with http.get(f"{sidecar.ops}{path}") as resp:
            outputs.append(await resp.text())
    assert await sidecar.stop() == 0
    outputs.append(sidecar.stderr.decode())
    secrets = {E2E_SECRET, "wrong-LEAKCANARY-secret", *real_idp.issued_tokens}
    for text in outputs:
        for secret in secrets:
            assert secret not in text


async def test_cli_token_check_and_exit_codes(real_idp, sidecar_factory, http, tmp_path):
    """`token` prints a token; `check` exits 0, 1 on a failed probe, 2 on a bad config."""
    sidecar = await sidecar_factory(profile_toml(real_idp))
    await wait_ready(http, sidecar)
    code, out, err = await run_cli("token", "api", "--url", sidecar.url)
    assert code == 0
    assert out.strip() in real_idp.issued_tokens
    code, out, err = await run_cli("token", "api", "--url", sidecar.url, "--json")
    assert orjson.loads(out)["profile"] == "api"
    code, out, err = await run_cli("token", "nope", "--url", sidecar.url)
    assert (code, err.count("\n")) == (1, 1)
    assert "unknown_profile" in err
    code, out, err = await run_cli("token", "api", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert "cannot reach the sidecar" in err
    assert "Traceback" not in err

    code, out, err = await run_cli("check", "--config", str(sidecar.config))
    assert code == 0
    assert E2E_SECRET not in out
    code, out, err = await run_cli("check", "--config", str(sidecar.config), "--probe")
    assert code == 0, err
    assert "ok profile api" in out
    bad_secret = tmp_path / "bad-secret.toml"
    bad_secret.write_text(profile_toml(real_idp, secret="nope-wrong"))
    code, out, err = await run_cli("check", "--config", str(bad_secret), "--probe")
    assert code == 1
    assert "FAILED profile api: rejected: access_denied" in out
    broken = tmp_path / "broken.toml"
    broken.write_text(profile_toml(real_idp) + 'client_auth = "magic"\n')
    code, out, err = await run_cli("check", "--config", str(broken))
    assert code == 2
    assert str(broken) in err
    assert "profiles.api.client_auth" in err
    assert "Traceback" not in err
    assert await sidecar.stop() == 0


async def test_serve_refuses_bad_config_and_busy_port(real_idp, tmp_path):
    """serve exits 2 on a non-loopback listen and 1 on a port in use, in one line each."""
    config = tmp_path / "public.toml"
    config.write_text('[server]\nlisten = "0.0.0.0:8700"\n' + profile_toml(real_idp))
    code, _, err = await run_cli("serve", "--config", str(config))
    assert code == 2
    assert "server.listen" in err
    assert "loopback" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\nops_listen = ""\n' + profile_toml(real_idp)
        )
        code, _, err = await run_cli("serve", "--config", str(config))
    assert code == 1
    assert "cannot listen" in err
    assert "Traceback" not in err


async def test_dev_serves_a_token_within_seconds(http):
    """`token-sidecar dev` prints a curl and a token command that both fetch a demo token."""
    port, ops_port, idp_port = free_port(), free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "dev",
        "--port",
        str(port),
        "--ops-port",
        str(ops_port),
        "--idp-port",
        str(idp_port),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        curl = ""
        while "curl" not in curl:
            curl = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
        url = curl.split()[-1]
        assert url == f"http://127.0.0.1:{port}/v1/token/demo"
        status, body = await get_json(http, url, headers=HEADERS)
        assert status == 200
        assert body["profile"] == "demo"
        assert body["token_type"] == "Bearer"
        lines = [curl]
        while "IdP issuer" not in lines[-1]:
            lines.append((await asyncio.wait_for(proc.stdout.readline(), 5)).decode())
        (token_line,) = [line.strip() for line in lines if "token-sidecar token" in line]
        assert token_line == f"token-sidecar token demo --url http://127.0.0.1:{port}"
        code, out, _err = await run_cli(*token_line.split()[1:])
        assert (code, out.strip()) == (0, body["access_token"])
        assert f"http://127.0.0.1:{idp_port}/" in lines[-1]
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0


async def test_allow_uids_with_tcp_warns_and_socket_only_does_not(
    real_idp, sidecar_factory, http, short_tmp
):
    """allow_uids beside a TCP listener logs a warning; listen = "" serves the socket alone."""
    exposed = await sidecar_factory(
        profile_toml(real_idp), socket_path=short_tmp / "a.sock", server_extra="allow_uids = [0]"
    )
    warning = await exposed.wait_event("server.allow_uids_tcp")
    assert warning["level"] == "warning"
    assert warning["listen"] == f"127.0.0.1:{exposed.port}"
    sock = short_tmp / "b.sock"
    socket_only = SidecarProcess(
        short_tmp,
        profile_toml(real_idp),
        socket_path=sock,
        server_extra="allow_uids = [0]",
        tcp=False,
    )
    try:
        await socket_only.start()
        assert socket_only.count("server.allow_uids_tcp") == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"{socket_only.url}/v1/token/api", headers=HEADERS)
        await socket_only.wait_event("token.refreshed")
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as unix,
            unix.get("http://localhost/v1/token/api", headers=HEADERS) as resp,
        ):
            assert resp.status == 200
    finally:
        await socket_only.kill()
