"""``token-sidecar token`` (sidecar.cli.token) against a live token API, in-process."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from sidecar.cli.token import answer_of, describe_failure, run_token
from sidecar.client import SidecarError, Token


def token_command(profile: str | None = None, **options: Any) -> int:
    """Run the command as ``main`` would; options default to the command line's."""
    defaults: dict[str, Any] = {"url": None, "socket": None, "min_ttl": None, "as_json": False}
    return run_token(profile, **{**defaults, "environ": {}, **options})


async def test_profile_defaults_to_the_environment(stack, clock, idp, capsys):
    """Without PROFILE, TOKEN_SIDECAR_PROFILE names it; TOKEN_SIDECAR_SOCKET finds the sidecar."""
    env = {"TOKEN_SIDECAR_PROFILE": "api", "TOKEN_SIDECAR_SOCKET": stack["socket"]}
    assert await asyncio.to_thread(token_command, environ=env, clock=clock) == 0
    out, err = capsys.readouterr()
    assert out.removesuffix("\n") in idp.issued_tokens
    assert err == ""


def test_no_profile_at_all_is_a_usage_error(capsys):
    """With neither PROFILE nor TOKEN_SIDECAR_PROFILE the command exits 2 with one line."""
    assert token_command(url="http://127.0.0.1:9") == 2
    out, err = capsys.readouterr()
    assert (out, err) == (
        "",
        "token-sidecar: token: no profile: give PROFILE or set TOKEN_SIDECAR_PROFILE\n",
    )


async def test_json_is_the_token_apis_answer(stack, clock, capsys):
    """--json prints what GET /v1/token/{profile} answers, key for key."""
    code = await asyncio.to_thread(
        token_command, "api", url=stack["url"], as_json=True, clock=clock
    )
    assert code == 0
    printed = orjson.loads(capsys.readouterr().out)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{stack['url']}/v1/token/api", headers={"Token-Sidecar": "1"}) as resp,
    ):
        answer = await resp.json()
    assert list(printed) == list(answer)
    assert printed == answer


async def test_failures_print_one_line_and_exit_1(stack, clock, capsys):
    """An unknown profile or an unreachable sidecar is one stderr line and exit 1."""
    code = await asyncio.to_thread(token_command, "nope", url=stack["url"], clock=clock)
    out, err = capsys.readouterr()
    assert (code, out, err.count("\n")) == (1, "", 1)
    assert err.startswith("token-sidecar: unknown_profile: ")
    code = await asyncio.to_thread(token_command, "api", url="http://127.0.0.1:9", clock=clock)
    out, err = capsys.readouterr()
    assert (code, out, err.count("\n")) == (1, "", 1)
    assert err.startswith("token-sidecar: cannot reach the sidecar at http://127.0.0.1:9: ")


@pytest.mark.parametrize(
    ("now", "expires_in"), [(1800000000.0, 100), (1800000099.5, 0), (1800000200.0, 0)]
)
def test_answer_of(now, expires_in):
    """The answer counts whole seconds left, never fewer than zero."""
    token = Token("value", expires_at=1800000100.0, stale=True, profile="api", scope="read")
    assert answer_of(token, now) == {
        "access_token": "value",
        "token_type": "Bearer",
        "expires_in": expires_in,
        "expires_at": 1800000100,
        "scope": "read",
        "profile": "api",
        "stale": True,
    }


def _unreachable() -> SidecarError:
    error = SidecarError("unreachable", "cannot reach the sidecar at /s")
    error.__cause__ = OSError("gone")  # as ``raise ... from`` sets it
    return error


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            SidecarError("unknown_profile", "no such profile", status=404),
            "unknown_profile: no such profile",
        ),
        (SidecarError("token_unavailable", "", status=503), "token_unavailable: no message"),
        (
            SidecarError("bad_answer", "anything", status=502),
            "unexpected answer (502) from the sidecar",
        ),
        (_unreachable(), "cannot reach the sidecar at /s: gone"),
    ],
)
def test_describe_failure(error, line):
    """Each failure reads as today's fetch command printed it."""
    assert describe_failure(error) == line
