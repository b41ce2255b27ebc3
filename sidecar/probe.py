"""``token-sidecar check --probe``: fetch and verify one token per profile, once."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import aiohttp

from sidecar.breaker import CircuitBreaker
from sidecar.clock import SystemClock
from sidecar.config import Config, ProfileConfig
from sidecar.credentials import CredentialStore
from sidecar.errors import RefreshError
from sidecar.idp import IdPClient
from sidecar.minter import TokenMinter
from sidecar.verify import TokenVerifier


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
