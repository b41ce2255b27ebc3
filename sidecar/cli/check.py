"""``token-sidecar check [--probe]``: print the config, redacted; fetch and verify one token each.

Exit 0 when the config is valid (and, with ``--probe``, every profile got a
verified token), 1 when a probe failed; an invalid config ends in ``main``
with exit 2.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from dataclasses import dataclass, field

import aiohttp
import orjson

from sidecar.cli._exit import EXIT_FAILURE, EXIT_OK
from sidecar.clock import SystemClock
from sidecar.config import Config, ProfileConfig
from sidecar.configload import redacted, resolve_config
from sidecar.credentials import CredentialStore
from sidecar.errors import IdPError
from sidecar.idp import IdPClient
from sidecar.issuance import build_token
from sidecar.verify import TokenVerifier


def run_check(path: str | None, *, probe: bool) -> int:
    """Validate and print the config at ``path``; with ``probe``, try every profile once."""
    config = resolve_config(path, os.environ)
    sys.stdout.write(orjson.dumps(redacted(config), option=orjson.OPT_INDENT_2).decode() + "\n")
    if not probe:
        return EXIT_OK

    results = asyncio.run(probe_all(config))
    for line in results.lines:
        sys.stdout.write(line + "\n")
    return EXIT_OK if results.ok else EXIT_FAILURE


@dataclass
class ProbeResults:
    ok: bool = True
    lines: list[str] = field(default_factory=list)


async def probe_all(config: Config) -> ProbeResults:
    """Try every profile once; the lines name each profile and what happened."""
    results = ProbeResults()
    clock = SystemClock()
    async with aiohttp.ClientSession(headers={"User-Agent": "token-sidecar"}) as session:
        idp = IdPClient(session, clock)
        verifier = TokenVerifier(session, clock)
        for profile in config.profiles.values():
            line = await _probe_one(profile, idp, verifier, clock)
            results.ok = results.ok and line.startswith("ok")
            results.lines.append(f"{line}")
    return results


async def _probe_one(
    profile: ProfileConfig, idp: IdPClient, verifier: TokenVerifier, clock: SystemClock
) -> str:
    try:
        creds = CredentialStore(profile).load()
        issued = await idp.request_token(profile, creds)
        claims = await verifier.verify(profile, issued.access_token)
        token = build_token(
            issued,
            claims,
            profile,
            now=clock.monotonic(),
            wall_now=clock.time(),
            rng=random.Random(),  # noqa: S311 - jitter only
        )
    except IdPError as exc:
        detail = ": ".join(p for p in (exc.error, exc.description) if p) or str(exc)
        return f"FAILED profile {profile.name}: {exc.kind}: {detail}"
    lifetime = int(token.lifetime)
    return f"ok profile {profile.name}: token {token.fingerprint} lives {lifetime}s"
