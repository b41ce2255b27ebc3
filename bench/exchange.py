"""Token exchange: the cache-hit path's throughput, and memory per cached user token.

Two parts, each against a real ``serve`` child and the development IdP in this
process (its client allowed the token-exchange grant for the MCP server's
audience):

- ``throughput``: ``POST /v1/exchange/{profile}`` answered from the per-user
  cache (one user's token, exchanged once before the run) against
  ``GET /v1/token/{profile}`` on a cached client-credentials token, same
  sidecar, same load generator (``benchlib.run_load``, closed loop, keep-alive),
  in interleaved rounds whose order alternates. The figure is the median of
  the per-round ratios exchange/token (target >= 0.8: the exchange hashes
  the subject and parses a JSON body). Wall-clock figures depend on the
  machine and its load: compare the ratio only, on a quiet machine.
- ``memory``: 10,000 distinct users' tokens minted by the IdP, exchanged
  through a fresh sidecar (32 at a time); its RSS is read before and every
  ``--step`` users, giving RSS growth per cached entry. Run again with
  ``cache_max_entries`` below the number of users (``--bound``, default
  2,000): the entries stop at the bound and RSS stops growing with them.

``uptime`` (load average) is printed before and after each part.
``--quick`` checks that everything runs (small sizes, short cells).

    .venv/bin/python bench/exchange.py                 # both parts
    .venv/bin/python bench/exchange.py --part memory   # the memory part alone
    .venv/bin/python bench/exchange.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import benchlib as bl
import orjson

from sidecar.devidp import TOKEN_EXCHANGE_GRANT
from sidecar.testing import SidecarProcess

#: The MCP server's own identifier: the audience of the users' tokens.
MCP_AUDIENCE = "https://mcp.example.com/"
#: Users' tokens live an hour: no entry expires during a run.
USER_TOKEN_LIFETIME = 3600
EXCHANGE = "user"
CLIENT_PROFILE = "bench"


def uptime() -> str:
    """The ``uptime`` line (load averages), or the kernel's when the command is missing."""
    try:
        return subprocess.run(
            ["uptime"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + Path("/proc/loadavg").read_text().strip()


def exchange_toml(idp: bl.IdP, cache_max_entries: int) -> str:
    """An exchange profile ``user`` against ``idp``; users' tokens checked with its JWKS."""
    subject = (
        f'{{ issuer = "{idp.dev.issuer}", jwks_url = "{idp.base_url}/.well-known/jwks.json", '
        f'audience = "{MCP_AUDIENCE}" }}'
    )
    return bl.profile_toml(
        idp,
        EXCHANGE,
        grant='"token_exchange"',
        cache_max_entries=str(cache_max_entries),
        subject=subject,
    )


def allow_exchange(idp: bl.IdP) -> None:
    """Let the bench client exchange users' tokens issued for the MCP server."""
    client = idp.dev.clients[bl.CLIENT_ID]
    client.grant_types = ("client_credentials", TOKEN_EXCHANGE_GRANT)
    client.subject_audiences = (MCP_AUDIENCE,)


async def post_exchange(
    http: aiohttp.ClientSession, sidecar: SidecarProcess, subject: str
) -> dict[str, object]:
    """One exchange through ``sidecar``; raises unless it is a 200."""
    async with http.post(
        f"{sidecar.url}/v1/exchange/{EXCHANGE}",
        data=orjson.dumps({"subject_token": subject}),
        headers=bl.HEADERS,
    ) as resp:
        body: dict[str, object] = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"exchange answered {resp.status}: {body.get('error')}")
        return body


async def exchange_status(http: aiohttp.ClientSession, sidecar: SidecarProcess) -> dict[str, int]:
    """The exchange profile's ``/status`` counters."""
    _, status = await bl.fetch_json(http, f"{sidecar.ops}/status")
    profile = status["profiles"][EXCHANGE]
    return {k: profile[k] for k in ("entries", "max_entries", "hits", "misses")}


# -- part 1: the cache-hit path against the token GET ---------------------------------


async def throughput(args: argparse.Namespace, idp: bl.IdP, http: aiohttp.ClientSession) -> None:
    print(f"\n## throughput (cache hit) - before: {uptime()}")
    server_core, _ = bl.cores()
    levels = [int(c) for c in args.connections.split(",")]
    bl.raise_nofile(4 * max(levels) + 1024)
    with bl.workdir() as wd:
        sidecar = bl.sidecar_process(
            wd, bl.profile_toml(idp) + exchange_toml(idp, 10_000), core=server_core
        )
        await sidecar.start()
        try:
            await bl.wait_ready(http, sidecar, bl.START_TIMEOUT)
            user = idp.dev.issue_user_token("alice", MCP_AUDIENCE, USER_TOKEN_LIFETIME)
            first = await post_exchange(http, sidecar, user)
            assert first["cached"] is False  # noqa: S101
            body = orjson.dumps({"subject_token": user})
            print(f"subject token {len(user)} bytes, request body {len(body)} bytes")
            cells: dict[tuple[int, str], list[bl.LoadResult]] = {}
            ratios: dict[int, list[float]] = {c: [] for c in levels}
            for n in range(args.rounds):
                for connections in levels:
                    kinds = ("token", "exchange") if n % 2 == 0 else ("exchange", "token")
                    got: dict[str, bl.LoadResult] = {}
                    for kind in kinds:
                        got[kind] = await bl.run_load(
                            connections=connections,
                            duration=args.duration,
                            path=f"/v1/exchange/{EXCHANGE}"
                            if kind == "exchange"
                            else f"/v1/token/{CLIENT_PROFILE}",
                            port=sidecar.port,
                            body=body if kind == "exchange" else None,
                        )
                        cells.setdefault((connections, kind), []).append(got[kind])
                    if got["token"].rps:
                        ratios[connections].append(got["exchange"].rps / got["token"].rps)
            rows = []
            for connections in levels:
                token = cells[(connections, "token")]
                exchange = cells[(connections, "exchange")]
                rows.append(
                    (
                        connections,
                        statistics.median(r.rps for r in token),
                        statistics.median(r.rps for r in exchange),
                        statistics.median(ratios[connections]),
                        min(ratios[connections]),
                        max(ratios[connections]),
                        sum(r.errors for r in token + exchange),
                    )
                )
            bl.print_table(
                f"exchange hit vs token GET, {args.rounds} interleaved rounds of "
                f"{args.duration:g}s (ratio: median of per-round ratios; target >= 0.8)",
                (
                    "connections",
                    "token req/s",
                    "exchange req/s",
                    "ratio",
                    "min ratio",
                    "max ratio",
                    "errors",
                ),
                rows,
            )
            counts = await exchange_status(http, sidecar)
            print(f"\nexchange profile: {counts} (one miss: every answer above was a hit)")
            await sidecar.stop()
        finally:
            await sidecar.kill()
    print(f"after: {uptime()}")


# -- part 2: RSS per cached entry ------------------------------------------------------


async def exchange_all(
    http: aiohttp.ClientSession, sidecar: SidecarProcess, subjects: Sequence[str], width: int
) -> None:
    """Exchange every subject once, ``width`` at a time; each must be a new entry (a miss)."""
    queue = iter(subjects)

    async def worker() -> None:
        for subject in queue:
            body = await post_exchange(http, sidecar, subject)
            if body["cached"] is not False:
                raise RuntimeError("a distinct subject was answered from the cache")

    await asyncio.gather(*(worker() for _ in range(width)))


async def memory_run(
    idp: bl.IdP,
    http: aiohttp.ClientSession,
    subjects: Sequence[str],
    warmup: Sequence[str],
    *,
    bound: int,
    step: int,
) -> list[tuple[object, ...]]:
    """Rows (users, entries, RSS MiB, growth MiB, growth per entry) for one bound.

    Growth per entry is shown only while no entry was evicted.
    """
    rows: list[tuple[object, ...]] = []
    with bl.workdir() as wd:
        sidecar = bl.sidecar_process(wd, exchange_toml(idp, bound))
        await sidecar.start()
        try:
            # Warm up: code paths, the JWKS, the connection pool, the first allocations.
            await exchange_all(http, sidecar, warmup, 8)
            base_entries = (await exchange_status(http, sidecar))["entries"]
            base = bl.rss_kib(sidecar.pid)
            rows.append((0, base_entries, base / 1024, 0.0, math.nan))
            for start in range(0, len(subjects), step):
                await exchange_all(http, sidecar, subjects[start : start + step], 32)
                entries = (await exchange_status(http, sidecar))["entries"]
                rss = bl.rss_kib(sidecar.pid)
                added = entries - base_entries
                # Per entry only while nothing was evicted: then every user added one.
                evicted = entries < base_entries + min(start + step, len(subjects))
                per_entry = (rss - base) * 1024 / added if added > 0 and not evicted else math.nan
                users = min(start + step, len(subjects))
                rows.append((users, entries, rss / 1024, (rss - base) / 1024, per_entry))
            counts = await exchange_status(http, sidecar)
            if counts["entries"] > bound:
                raise RuntimeError(f"{counts['entries']} entries above the bound {bound}")
            await sidecar.stop()
        finally:
            await sidecar.kill()
    return rows


async def memory(args: argparse.Namespace, idp: bl.IdP, http: aiohttp.ClientSession) -> None:
    print(f"\n## memory per cached entry - before: {uptime()}")
    started = time.monotonic()
    subjects = [
        idp.dev.issue_user_token(f"user-{n}", MCP_AUDIENCE, USER_TOKEN_LIFETIME)
        for n in range(args.users)
    ]
    warmup = [
        idp.dev.issue_user_token(f"warmup-{n}", MCP_AUDIENCE, USER_TOKEN_LIFETIME)
        for n in range(args.warmup)
    ]
    print(
        f"minted {len(subjects)} user tokens ({len(subjects[0])} bytes each) "
        f"in {time.monotonic() - started:.1f}s"
    )
    headers = ("users exchanged", "entries", "RSS MiB", "growth MiB", "bytes per entry")
    for bound in (args.warmup + args.users, args.bound):  # room for all, then too little
        rows = await memory_run(idp, http, subjects, warmup, bound=bound, step=args.step)
        bl.print_table(
            f"cache_max_entries = {bound:,}: {args.users:,} distinct users "
            f"after {args.warmup} warm-up users",
            headers,
            rows,
        )
    issued = len(idp.dev.issued_tokens[-1]) if idp.dev.issued_tokens else 0
    print(f"\nissued (exchanged) token: {issued} bytes; after: {uptime()}")


async def main(args: argparse.Namespace) -> int:
    bl.print_machine()
    _, load_core = bl.cores()
    bl.pin_self(load_core)
    async with bl.start_idp(lifetime=86400) as idp, aiohttp.ClientSession() as http:
        allow_exchange(idp)
        if args.part in ("all", "throughput"):
            await throughput(args, idp, http)
        if args.part in ("all", "memory"):
            await memory(args, idp, http)
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--part", choices=("all", "throughput", "memory"), default="all")
    parser.add_argument("--connections", default="1,16,64", help="comma-separated levels")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--users", type=int, default=10_000, help="distinct users' tokens")
    parser.add_argument("--bound", type=int, default=2_000, help="the smaller cache_max_entries")
    parser.add_argument("--step", type=int, default=2_500, help="users between RSS readings")
    parser.add_argument("--warmup", type=int, default=200, help="users exchanged before the base")
    parser.add_argument("--quick", action="store_true", help="small sizes: check that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.connections, args.duration, args.rounds = "16", 0.5, 2
        args.users, args.bound, args.step, args.warmup = 600, 200, 300, 20
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
