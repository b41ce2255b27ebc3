"""Soak: steady moderate load on short tokens; memory, descriptors, refreshes, errors.

The sidecar gets ``--lifetime`` tokens (default 30 s, ``min_ttl`` 5 s, default
refresh policy) and ``--rate`` requests per second (default 200, spread over
``--callers`` keep-alive connections) for ``--duration`` seconds (default 60;
the issue's full size is ``--duration 600``). Every ``--sample`` seconds it
records the sidecar's RSS and open descriptors.

Reported: RSS at start (after warm-up) and end, growth (target under 5 MB),
descriptors at start, end and peak, refreshes counted from the daemon's
``token.refreshed`` events against the number of windows the policy
(``sidecar.policy.refresh_window`` and its jitter) allows, IdP requests, and
errors (target 0).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time

import aiohttp
import benchlib as bl

from sidecar.config import RefreshShare
from sidecar.policy import JITTER_SHARE, refresh_window


async def paced_caller(
    http: aiohttp.ClientSession, url: str, interval: float, deadline: float, tally: dict[str, int]
) -> None:
    """One connection asking every ``interval`` seconds until ``deadline`` (no catch-up bursts)."""
    next_at = time.monotonic()
    while next_at < deadline:
        try:
            async with http.get(url, headers=bl.HEADERS) as resp:
                await resp.read()
                tally["ok" if resp.status == 200 else "errors"] += 1
        except aiohttp.ClientError:
            tally["errors"] += 1
        next_at = max(next_at + interval, time.monotonic())
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def expected_refreshes(lifetime: float, min_ttl: float, duration: float) -> tuple[int, int]:
    """Fewest and most refreshes the default policy allows in ``duration`` seconds."""
    window = refresh_window(lifetime, RefreshShare(0.2), min_ttl)
    longest = lifetime - window  # no jitter
    # JWT exp is whole seconds, so the lifetime the sidecar sees may be up to 1 s shorter.
    short_life = lifetime - 1
    shortest = short_life - refresh_window(short_life, RefreshShare(0.2), min_ttl) * (
        1 + JITTER_SHARE
    )
    return math.floor(duration / longest), math.ceil(duration / shortest)


async def main(args: argparse.Namespace) -> int:
    bl.print_machine()
    server_core, load_core = bl.cores()
    bl.pin_self(load_core)
    samples: list[bl.Sample] = []
    tally = {"ok": 0, "errors": 0}
    with bl.workdir() as wd:
        async with bl.start_idp(lifetime=args.lifetime) as idp:
            extra = {"min_ttl": f'"{args.min_ttl}s"'}
            sidecar = bl.sidecar_process(wd, bl.profile_toml(idp, **extra), core=server_core)
            connector = aiohttp.TCPConnector(limit=args.callers)
            try:
                await sidecar.start()
                await sidecar.wait_event("token.refreshed")
                async with aiohttp.ClientSession(connector=connector) as http:
                    url = f"{sidecar.url}/v1/token/bench"
                    interval = args.callers / args.rate
                    warm = time.monotonic() + args.warmup
                    await asyncio.gather(
                        *(
                            paced_caller(http, url, interval, warm, tally)
                            for _ in range(args.callers)
                        )
                    )
                    base_refreshes = sidecar.count("token.refreshed")
                    base_idp = idp.dev.token_requests
                    tally.update(ok=0, errors=0)
                    start = time.monotonic()
                    deadline = start + args.duration
                    load = asyncio.gather(
                        *(
                            paced_caller(http, url, interval, deadline, tally)
                            for _ in range(args.callers)
                        )
                    )
                    samples += await bl.sample_until(sidecar.pid, start, deadline, args.sample)
                    await load
                    elapsed = time.monotonic() - start
                    samples.append(bl.process_sample(sidecar.pid, start))
                    refreshes = sidecar.count("token.refreshed") - base_refreshes
                    idp_requests = idp.dev.token_requests - base_idp
                    failed = sidecar.count("refresh.failed")
            finally:
                await sidecar.stop()
    low, high = expected_refreshes(args.lifetime, args.min_ttl, elapsed)
    rss0, rss1 = samples[0][1], samples[-1][1]
    growth_mb = (rss1 - rss0) / 1024
    fds = [s[2] for s in samples]
    bl.print_table(
        "RSS and descriptors over the soak",
        ["t (s)", "RSS MiB", "open fds"],
        [(round(t), kib / 1024, n) for t, kib, n in samples],
    )
    bl.print_table(
        f"Soak: {elapsed:.0f} s at {args.rate} req/s over {args.callers} connections, "
        f"{args.lifetime} s tokens",
        ["figure", "value", "target"],
        [
            ("requests answered 200", tally["ok"], "-"),
            ("achieved req/s", tally["ok"] / elapsed, f"{args.rate}"),
            ("errors", tally["errors"], "0"),
            ("RSS start (MiB)", rss0 / 1024, "-"),
            ("RSS end (MiB)", rss1 / 1024, "-"),
            ("RSS growth (MiB)", growth_mb, "< 5"),
            ("open fds start / end / max", f"{fds[0]} / {fds[-1]} / {max(fds)}", "stable"),
            ("refreshes (token.refreshed)", refreshes, f"{low}-{high} (policy)"),
            ("IdP token requests", idp_requests, f"{low}-{high}"),
            ("refresh.failed events", failed, "0"),
        ],
    )
    met = (
        tally["errors"] == 0
        and growth_mb < 5
        and low <= refreshes <= high
        and fds[-1] <= fds[0] + 2
    )
    print(
        "targets (errors 0, RSS growth < 5 MB, refreshes in range, fds stable): "
        f"{'met' if met else 'MISSED'}"
    )
    return 0 if met else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (issue: 600)")
    parser.add_argument("--rate", type=int, default=200, help="requests per second")
    parser.add_argument("--callers", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--lifetime", type=int, default=30, help="token lifetime, seconds")
    parser.add_argument("--min-ttl", type=int, default=5, help="profile min_ttl, seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="load before the start sample")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
