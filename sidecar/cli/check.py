"""``token-sidecar check [--probe]``: print the config, redacted; fetch and verify one token each.

Exit 0 when the config is valid (and, with ``--probe``, every
client-credentials profile got a verified token; exchange profiles are
skipped, as there is no user's token to exchange), 1 when a probe failed; an
invalid config ends in ``main`` with exit 2.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from dataclasses import dataclass, field

import aiohttp
import orjson

from sidecar.breaker import CircuitBreaker
from sidecar.cli._exit import EXIT_FAILURE, EXIT_OK
from sidecar.clock import SystemClock
from sidecar.config import Config, ProfileConfig, redacted, resolve_config
from sidecar.credentials import CredentialStore
from sidecar.daemon import warn_about
from sidecar.errors import RefreshError
from sidecar.fleet import check_cache_files
from sidecar.idp import IdPClient
from sidecar.minter import TokenMinter
from sidecar.verify import TokenVerifier


def run_check(path: str | None, *, probe: bool) -> int:
    """Validate and print the config at ``path``; with ``probe``, try every profile once."""
    config = resolve_config(path, os.environ)
    check_cache_files(config)  # what serve would refuse at start, check refuses too
    sys.stdout.write(orjson.dumps(redacted(config), option=orjson.OPT_INDENT_2).decode() + "\n")
    warn_about(config, os.environ)
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
            if profile.exchanges:
                # Nothing to exchange without a user's token; the config itself was checked.
                results.lines.append(
                    f"skipped profile {profile.name}: grant = {profile.grant} exchanges "
                    "users' tokens; there is no user's token to probe with"
                )
                continue
            line = await _probe_one(profile, idp, verifier, clock)
            results.ok = results.ok and line.startswith("ok")
            results.lines.append(f"{line}")
    return results


async def _probe_one(
    profile: ProfileConfig, idp: IdPClient, verifier: TokenVerifier, clock: SystemClock
) -> str:
    """One refresh of ``profile`` down the daemon's own path (breaker, IdP, verify, issuance)."""
    minter = TokenMinter(
        profile,
        idp=idp,
        verifier=verifier,
        breaker=CircuitBreaker(
            clock, failures=profile.breaker.failures, reset=profile.breaker.reset
        ),
        clock=clock,
        rng=random.Random(),  # noqa: S311 - jitter only
    )
    try:
        token = await minter.mint(CredentialStore(profile).load())
    except RefreshError as exc:
        detail = ": ".join(p for p in (exc.error, exc.description) if p) or str(exc)
        return f"FAILED profile {profile.name}: {exc.kind}: {detail}"
    lifetime = int(token.lifetime)
    return f"ok profile {profile.name}: token {token.fingerprint} lives {lifetime}s"
