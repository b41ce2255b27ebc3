"""``token-sidecar token [PROFILE]``: print one token from a running sidecar, for shell scripts.

Built on :class:`sidecar.client.TokenClient`, so it finds the sidecar as the
client library does: ``--url`` or ``--socket``, else ``TOKEN_SIDECAR_URL``,
else ``TOKEN_SIDECAR_SOCKET``, else ``http://127.0.0.1:8700``; the profile
defaults to ``TOKEN_SIDECAR_PROFILE``. Exit 0 with the token (or the answer as
JSON) on stdout, 1 with one line on stderr when no token can be had, 2 when no
profile is given at all.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Mapping
from typing import Any

import orjson

from sidecar.cli._exit import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, fail
from sidecar.client import SidecarError, Token, TokenClient
from sidecar.clock import Clock, SystemClock

#: The whole request, connection included, may take this long (seconds).
TIMEOUT = 30.0


def run_token(
    profile: str | None,
    *,
    url: str | None,
    socket: str | None,
    min_ttl: float | None,
    as_json: bool,
    environ: Mapping[str, str],
    clock: Clock | None = None,
) -> int:
    """Print ``profile``'s token, or the sidecar's whole answer when ``as_json``."""
    wall = clock if clock is not None else SystemClock()
    # min_ttl=0: ask for no particular lifetime unless --min-ttl is given.
    client = TokenClient(
        url, socket=socket, profile=profile, min_ttl=0, timeout=TIMEOUT, clock=wall, environ=environ
    )
    if client.profile is None:
        fail("token: no profile: give PROFILE or set TOKEN_SIDECAR_PROFILE")
        return EXIT_CONFIG
    try:
        token = asyncio.run(_fetch(client, min_ttl))
    except SidecarError as exc:
        fail(describe_failure(exc))
        return EXIT_FAILURE
    if as_json:
        sys.stdout.write(orjson.dumps(answer_of(token, wall.time())).decode() + "\n")
    else:
        sys.stdout.write(token.access_token + "\n")
    return EXIT_OK


async def _fetch(client: TokenClient, min_ttl: float | None) -> Token:
    async with client:
        return await client.get_token(min_ttl=min_ttl)


def answer_of(token: Token, now: float) -> dict[str, Any]:
    """The token API's answer for ``token`` at UNIX time ``now``, in the API's key order."""
    return {
        "access_token": token.access_token,
        "token_type": token.token_type,
        "expires_in": max(0, math.floor(token.expires_at - now)),
        "expires_at": math.floor(token.expires_at),
        "scope": token.scope,
        "profile": token.profile,
        "stale": token.stale,
    }


def describe_failure(exc: SidecarError) -> str:
    """The stderr line (without the ``token-sidecar:`` prefix) for a failed fetch."""
    if exc.code == "unreachable":
        return f"{exc.message}: {exc.__cause__}"
    if exc.code == "bad_answer":
        return f"unexpected answer ({exc.status}) from the sidecar"
    return f"{exc.code}: {exc.message or 'no message'}"
