"""Helpers for tests of ``serve`` subprocesses: TOML profiles, readiness, JSON reads, the CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import aiohttp

from sidecar.devidp import DevClient, DevIdP
from sidecar.testing import SidecarProcess

E2E_AUDIENCE = "https://api.example.com/"
E2E_CLIENT_ID = "e2e-client"
E2E_SECRET = "e2e-secret-LEAKCANARY-5b2c"
HEADERS = {"Token-Sidecar": "1"}


def e2e_idp(lifetime: int = 3600) -> DevIdP:
    """The development IdP for ``serve`` processes: the real clock, the e2e client registered."""
    dev = DevIdP(audience=E2E_AUDIENCE, token_lifetime=lifetime)
    dev.add_client(
        DevClient(
            client_id=E2E_CLIENT_ID,
            client_secret=E2E_SECRET,
            audiences={E2E_AUDIENCE: ("read:tools",)},
        )
    )
    return dev


def profile_toml(idp: DevIdP, name: str = "api", secret: str = E2E_SECRET, **extra: str) -> str:
    """A ``[profiles.NAME]`` table for ``idp``; ``extra`` adds keys or overrides (TOML values)."""
    keys = {
        "token_url": f'"{idp.base_url}/oauth/token"',
        "issuer": f'"{idp.issuer}"',
        "jwks_url": f'"{idp.base_url}/.well-known/jwks.json"',
        "client_id": f'"{E2E_CLIENT_ID}"',
        "client_secret": f'"{secret}"',
        "audience": f'"{E2E_AUDIENCE}"',
        "scope": '"read:tools"',
        "timeout": '"2s"',
        **extra,
    }
    return f"[profiles.{name}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


async def wait_ready(http: aiohttp.ClientSession, sidecar: SidecarProcess) -> None:
    """Wait for the first token: the daemon logs token.refreshed."""
    await sidecar.wait_event("token.refreshed")
    async with http.get(f"{sidecar.ops}/readyz") as resp:
        assert resp.status == 200


async def get_json(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(url, **kwargs) as resp:
        return resp.status, await resp.json()


async def run_cli(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_SIDECAR_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
