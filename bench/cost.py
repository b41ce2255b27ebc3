"""Cost: idle memory, start-to-ready time, and CPU per 1,000 token requests.

- Start to ready: from spawning ``python -m sidecar serve`` to the first 200
  of ``/readyz`` (polled every 5 ms), with 1 and with ``--profiles`` (50)
  profiles, ``--repeats`` times each; the IdP round trip (a direct token
  request to the same development IdP) is measured alongside, since the
  target is "under 1 s plus one IdP round trip". The time to ``sidecar.started``
  (interpreter up, imports done, listeners open) is shown too.
- Idle RSS and open descriptors ``--settle`` seconds after ready.
- CPU per 1,000 requests: the sidecar's user+system CPU time over a
  saturating run (Python generator, 16 connections) and over a paced run
  (200 req/s), divided by the requests answered.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

import aiohttp
import benchlib as bl


async def idp_round_trip(http: aiohttp.ClientSession, idp: bl.IdP, repeats: int) -> float:
    """Median seconds of one client-credentials request straight to the IdP."""
    times = []
    form = {
        "grant_type": "client_credentials",
        "client_id": bl.CLIENT_ID,
        "client_secret": bl.SECRET,
        "audience": bl.AUDIENCE,
    }
    for _ in range(repeats):
        start = time.perf_counter()
        async with http.post(f"{idp.base_url}/oauth/token", data=form) as resp:
            await resp.read()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def start_once(
    wd: bl.Path,
    *,
    idp: bl.IdP,
    http: aiohttp.ClientSession,
    profiles: int,
    core: int | None,
    settle: float,
) -> tuple[float, float, int, int]:
    """(seconds to sidecar.started, seconds to ready, idle RSS KiB, open fds)."""
    toml = "".join(bl.profile_toml(idp, name=f"p{i:02d}") for i in range(profiles))
    sidecar = bl.sidecar_process(wd, toml, core=core)
    try:
        await sidecar.start(wait_for=None)
        ready = await bl.wait_ready(http, sidecar, bl.START_TIMEOUT)
        started = await sidecar.wait_event("sidecar.started")
        await asyncio.sleep(settle)
        return (
            started.received_at - sidecar.spawned_at,
            ready,
            bl.rss_kib(sidecar.pid),
            bl.open_fds(sidecar.pid),
        )
    finally:
        await sidecar.stop()


async def paced(url: str, rate: int, seconds: float, callers: int = 8) -> int:
    answered = 0
    interval = callers / rate
    deadline = time.monotonic() + seconds

    async def one(http: aiohttp.ClientSession) -> None:
        nonlocal answered
        next_at = time.monotonic()
        while next_at < deadline:
            async with http.get(url, headers=bl.HEADERS) as resp:
                await resp.read()
                answered += resp.status == 200
            next_at = max(next_at + interval, time.monotonic())
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=callers)) as http:
        await asyncio.gather(*(one(http) for _ in range(callers)))
    return answered


async def main(args: argparse.Namespace) -> int:
    bl.print_machine()
    server_core, load_core = bl.cores()
    bl.pin_self(load_core)
    start_rows = []
    with bl.workdir() as wd:
        async with bl.start_idp(lifetime=86400) as idp, aiohttp.ClientSession() as http:
            rtt = await idp_round_trip(http, idp, 7)
            for count in (1, args.profiles):
                runs = [
                    await start_once(
                        wd, idp=idp, http=http, profiles=count, core=server_core, settle=args.settle
                    )
                    for _ in range(args.repeats)
                ]
                start_rows.append(
                    (
                        count,
                        statistics.median(r[0] for r in runs),
                        statistics.median(r[1] for r in runs),
                        max(r[1] for r in runs),
                        statistics.median(r[2] for r in runs) / 1024,
                        statistics.median(r[3] for r in runs),
                    )
                )
            sidecar = bl.sidecar_process(wd, bl.profile_toml(idp), core=server_core)
            try:
                await sidecar.start()
                await sidecar.wait_event("token.refreshed")
                url = f"{sidecar.url}/v1/token/bench"
                cpu0 = bl.cpu_seconds(sidecar.pid)
                load = await bl.run_load(
                    connections=16,
                    duration=args.load_seconds,
                    path="/v1/token/bench",
                    port=sidecar.port,
                )
                cpu_sat = bl.cpu_seconds(sidecar.pid) - cpu0
                cpu0 = bl.cpu_seconds(sidecar.pid)
                slow_start = time.monotonic()
                answered = await paced(url, 200, args.load_seconds)
                slow_elapsed = time.monotonic() - slow_start
                cpu_paced = bl.cpu_seconds(sidecar.pid) - cpu0
                cpu0 = bl.cpu_seconds(sidecar.pid)
                await asyncio.sleep(args.load_seconds)
                cpu_idle = (bl.cpu_seconds(sidecar.pid) - cpu0) / args.load_seconds
            finally:
                await sidecar.stop()
    bl.print_table(
        "Start to ready and idle memory (median of repeats)",
        [
            "profiles",
            "to sidecar.started (s)",
            "to ready p50 (s)",
            "to ready max (s)",
            "idle RSS MiB",
            "fds",
        ],
        start_rows,
    )
    bl.print_table(
        "CPU per 1,000 token requests",
        ["load", "requests", "req/s", "sidecar CPU s", "CPU ms / 1,000 req"],
        [
            (
                "saturating, 16 connections",
                load.requests,
                load.rps,
                cpu_sat,
                cpu_sat / load.requests * 1e6,
            ),
            (
                "paced 200 req/s, 8 connections",
                answered,
                answered / slow_elapsed,
                cpu_paced,
                cpu_paced / max(1, answered) * 1e6,
            ),
            ("idle (CPU share)", 0, 0.0, cpu_idle, float("nan")),
        ],
    )
    ready_50 = start_rows[-1][2]
    rss_50 = start_rows[-1][4]
    print(f"IdP round trip (direct, median): {rtt * 1e3:.1f} ms")
    print(
        f"targets: idle RSS with {args.profiles} profiles {rss_50:.1f} MiB "
        f"({'met' if rss_50 < 60 else 'MISSED'}, < 60 MB); start to ready with 1 profile "
        f"{start_rows[0][2]:.2f} s ({'met' if start_rows[0][2] < 1 + rtt else 'MISSED'}, < 1 s + "
        f"{rtt:.3f} s); with {args.profiles}: {ready_50:.2f} s"
    )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=50, help="the many-profiles case")
    parser.add_argument("--repeats", type=int, default=3, help="starts per case")
    parser.add_argument("--settle", type=float, default=2.0, help="idle seconds before RSS")
    parser.add_argument("--load-seconds", type=float, default=5.0, help="seconds per CPU run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
