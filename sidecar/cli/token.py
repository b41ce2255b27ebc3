"""``token-sidecar token``: fetch one token from a running sidecar, for shell scripts."""

from __future__ import annotations

import sys

import aiohttp
import orjson

DEFAULT_URL = "http://127.0.0.1:8700"


async def fetch_token_command(
    profile: str,
    *,
    url: str | None,
    socket: str | None,
    min_ttl: float | None,
    as_json: bool,
) -> int:
    """Print the token (or the whole JSON answer); one line on stderr and 1 on failure."""
    connector: aiohttp.BaseConnector | None = None
    base = (url or DEFAULT_URL).rstrip("/")
    if socket and not url:
        connector = aiohttp.UnixConnector(path=socket)
        base = "http://localhost"
    params = {"min_ttl": str(int(min_ttl))} if min_ttl is not None else None
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(
                f"{base}/v1/token/{profile}", params=params, headers={"Token-Sidecar": "1"}
            ) as resp,
        ):
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        where = socket if socket and not url else base
        sys.stderr.write(f"token-sidecar: cannot reach the sidecar at {where}: {exc}\n")
        return 1
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        sys.stderr.write(f"token-sidecar: unexpected answer ({resp.status}) from the sidecar\n")
        return 1
    if resp.status != 200 or not isinstance(payload, dict):
        error = payload.get("error") if isinstance(payload, dict) else None
        message = payload.get("message") if isinstance(payload, dict) else None
        sys.stderr.write(f"token-sidecar: {error or resp.status}: {message or 'no message'}\n")
        return 1
    if as_json:
        sys.stdout.write(orjson.dumps(payload).decode() + "\n")
    else:
        sys.stdout.write(str(payload["access_token"]) + "\n")
    return 0
