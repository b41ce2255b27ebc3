"""Token exchange in real processes: ``serve`` with an exchange profile and SIGHUP, and ``dev``."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
from typing import Any

import jwt
import orjson
import pytest

from sidecar.devidp import TOKEN_EXCHANGE_GRANT
from sidecar.testing import START_TIMEOUT, free_port
from tests.support.e2e import E2E_CLIENT_ID, HEADERS, get_json, profile_toml

pytestmark = pytest.mark.slow

MCP = "https://mcp.example.com/"


def exchange_toml(idp, name: str = "user-api", **extra: str) -> str:
    """An exchange profile for ``idp`` in TOML, users' tokens checked by its JWKS."""
    subject = (
        f'{{ issuer = "{idp.issuer}", jwks_url = "{idp.base_url}/.well-known/jwks.json", '
        f'audience = "{MCP}" }}'
    )
    return profile_toml(idp, name, grant='"token_exchange"', subject=subject, **extra)


async def post_json(http, url: str, body: object) -> tuple[int, Any]:
    async with http.post(url, data=orjson.dumps(body), headers=HEADERS) as resp:
        return resp.status, await resp.json()


async def test_serve_exchanges_and_reloads(real_idp, sidecar_factory, http):
    """serve exchanges users' tokens; SIGHUP keeps an unchanged profile's cache, not a changed."""
    client = real_idp.clients[E2E_CLIENT_ID]
    client.grant_types = ("client_credentials", TOKEN_EXCHANGE_GRANT)
    client.subject_audiences = (MCP,)
    sidecar = await sidecar_factory(profile_toml(real_idp) + exchange_toml(real_idp))
    url = f"{sidecar.url}/v1/exchange/user-api"
    user = real_idp.issue_user_token("alice", MCP)
    status, body = await post_json(http, url, {"subject_token": user})
    assert (status, body["cached"]) == (200, False), body
    assert isinstance(body["access_token"], str)
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["sub"] == "alice"
    status, body = await post_json(http, url, {"subject_token": user})
    assert (status, body["cached"]) == (200, True)
    status, ready = await get_json(http, f"{sidecar.ops}/readyz")
    assert (status, ready["profiles"]) == (200, {"api": "ok"})
    status, state = await get_json(http, f"{sidecar.ops}/status")
    assert (state["profiles"]["user-api"]["entries"], state["profiles"]["user-api"]["hits"]) == (
        1,
        1,
    )
    async with http.get(f"{sidecar.ops}/metrics") as resp:
        text = await resp.text()
    assert 'token_sidecar_exchange_total{profile="user-api",result="success"} 1.0' in text
    assert 'token_sidecar_exchange_cache_entries{profile="user-api"} 1.0' in text
    assert user not in text
    sidecar.send_signal(signal.SIGHUP)  # the same config: the cache stays
    await sidecar.wait_event("config.reloaded")
    status, body = await post_json(http, url, {"subject_token": user})
    assert (status, body["cached"]) == (200, True)
    sidecar.write_config(profile_toml(real_idp) + exchange_toml(real_idp, negative_ttl='"1s"'))
    sidecar.send_signal(signal.SIGHUP)  # a changed profile starts with an empty cache
    reloaded = await sidecar.wait_event("config.reloaded", count=2)
    assert reloaded["exchange_profiles"] == ["user-api"]
    status, body = await post_json(http, url, {"subject_token": user})
    assert (status, body["cached"]) == (200, False)
    status, body = await post_json(http, url, {"subject_token": "not-a-jwt"})
    assert (status, body["error"]) == (401, "invalid_subject")
    assert await sidecar.stop() == 0


async def test_dev_prints_an_exchange_that_works(http):
    """`token-sidecar dev` prints a curl that exchanges a ready-made user's token."""
    port, ops_port = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "dev",
        "--port",
        str(port),
        "--ops-port",
        str(ops_port),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = ""
        while "/v1/exchange/" not in line:
            line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
        words = shlex.split(line)
        assert words[:2] == ["curl", "-s"]
        url = words[-1]
        assert url == f"http://127.0.0.1:{port}/v1/exchange/demo-user"
        data = orjson.loads(words[words.index("-d") + 1])
        headers = dict(words[i + 1].split(": ", 1) for i, w in enumerate(words) if w == "-H")
        assert headers == {"Token-Sidecar": "1", "Content-Type": "application/json"}
        user = jwt.decode(data["subject_token"], options={"verify_signature": False})
        assert (user["sub"], user["aud"]) == ("alice", MCP)
        status, body = await post_json(http, url, data)
        assert status == 200, body
        issued = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert (issued["sub"], issued["act"]) == ("alice", {"sub": "demo-client"})
        assert body["profile"] == "demo-user"
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0
