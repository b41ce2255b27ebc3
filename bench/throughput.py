"""Throughput and latency of ``GET /v1/token/{profile}`` on a cached token.

In one run, at each connection count (default 1, 16, 64, 256), loads in turn:

- the sidecar over TCP with ``wrk`` (installed from Debian when missing and
  running as root; skipped otherwise);
- the sidecar over TCP and over its Unix socket with the Python generator of
  ``benchlib`` (wrk cannot speak to a Unix socket; the TCP run gives a
  same-generator comparison);
- the framework ceiling (``ceiling.py``: a bare aiohttp handler returning the
  same bytes) the same three ways.

The server processes are pinned to one core and the load generator to another
(``taskset``) when two cores are available. It prints requests/s, p50, p99 and
the server's CPU use per run, then the ratios sidecar/ceiling and Unix/TCP.
``--uvloop`` adds rows for the sidecar and the ceiling run on uvloop (the
sidecar has no ``[server] loop`` option; the bench installs the policy in a
wrapper, to tell whether such an option would earn its place).

Quick default: 3 interleaved rounds of 1 s cells (about 80 s in all); ratios are the
median of per-round ratios. ``--duration 5 --rounds 5`` for steadier figures.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import benchlib as bl

from sidecar.testing import SidecarProcess, free_port

UVLOOP_WRAPPER = (
    "-c",
    (
        "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
        "from sidecar.cli import main; sys.exit(main(sys.argv[1:]))"
    ),
)
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass
class Target:
    """One server under test."""

    name: str
    pid: int
    port: int
    socket: Path | None


@dataclass
class Row:
    """One measured cell."""

    connections: int
    target: str
    client: str
    transport: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_share: float
    errors: int
    foreign: float = 0.0  # CPU share of other processes on the server core during the cell


def parse_wrk(output: str) -> tuple[float, float, float, int]:
    """(requests/s, p50 s, p99 s, errors) from ``wrk --latency`` output."""

    def seconds(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
        return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")

    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    sock = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if sock:
        errors += sum(int(g) for g in sock.groups())
    return float(rps_match.group(1)) if rps_match else 0.0, seconds("50"), seconds("99"), errors


async def run_wrk(
    wrk: str, target: Target, connections: int, duration: float, core: int | None
) -> Row:
    cpu0 = bl.cpu_seconds(target.pid)
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *bl.taskset(core),
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "5s",
        "--latency",
        "-H",
        "Token-Sidecar: 1",
        f"http://127.0.0.1:{target.port}/v1/token/bench",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), duration + 30)
    elapsed = time.monotonic() - start
    cpu = (bl.cpu_seconds(target.pid) - cpu0) / elapsed
    rps, p50, p99, errors = parse_wrk(out.decode())
    return Row(connections, target.name, "wrk", "tcp", rps, p50 * 1e3, p99 * 1e3, cpu, errors)


async def run_py(target: Target, connections: int, duration: float, *, unix: bool) -> Row:
    cpu0 = bl.cpu_seconds(target.pid)
    result = await bl.run_load(
        connections=connections,
        duration=duration,
        path="/v1/token/bench",
        port=None if unix else target.port,
        unix=target.socket if unix else None,
    )
    cpu = (bl.cpu_seconds(target.pid) - cpu0) / result.elapsed
    return Row(
        connections,
        target.name,
        "py",
        "unix" if unix else "tcp",
        result.rps,
        result.p(50) * 1e3,
        result.p(99) * 1e3,
        cpu,
        result.errors,
    )


async def start_ceiling(
    workdir: Path, body: bytes, core: int | None, *, uvloop: bool
) -> tuple[asyncio.subprocess.Process, Target]:
    body_file = workdir / "body.json"
    body_file.write_bytes(body)
    port = free_port()
    sock = workdir / f"c{port}.sock"
    args = ["--port", str(port), "--socket", str(sock), "--body-file", str(body_file)]
    proc = await asyncio.create_subprocess_exec(
        *bl.taskset(core),
        bl.PYTHON,
        str(Path(__file__).with_name("ceiling.py")),
        *args,
        *(["--uvloop"] if uvloop else []),
        stdout=asyncio.subprocess.PIPE,
        env=bl.tools_env(uvloop=uvloop),
    )
    assert proc.stdout is not None  # noqa: S101
    line = await asyncio.wait_for(proc.stdout.readline(), bl.START_TIMEOUT)
    if line.strip() != b"ready":
        raise RuntimeError("ceiling server did not start")
    name = "ceiling+uvloop" if uvloop else "ceiling"
    return proc, Target(name, proc.pid, port, sock)


async def measure(
    cell: Awaitable[Row], server_core: int | None, rounds: dict[tuple[object, ...], list[Row]]
) -> None:
    """Run one cell and note how much of the server core other processes took meanwhile."""
    busy0, start = bl.core_busy_seconds(server_core), time.monotonic()
    row = await cell
    elapsed = time.monotonic() - start
    if server_core is not None:
        busy = (bl.core_busy_seconds(server_core) - busy0) / elapsed
        row.foreign = max(0.0, busy - row.cpu_share)
    key = (row.connections, row.target, row.client, row.transport)
    rounds.setdefault(key, []).append(row)


async def main(args: argparse.Namespace) -> int:  # noqa: C901, PLR0912 - one linear run
    bl.print_machine()
    server_core, load_core = bl.cores()
    print(f"server core: {server_core}, load core: {load_core}")
    bl.pin_self(load_core)
    wrk = None if args.no_wrk else bl.ensure_wrk(install=not args.no_install)
    uvloop_ok = args.uvloop and bl.ensure_pip_tool("uvloop", install=not args.no_install)
    if args.uvloop and not uvloop_ok:
        print("uvloop unavailable: skipping the uvloop rows", file=sys.stderr)
    levels = [int(c) for c in args.connections.split(",")]
    bl.raise_nofile(4 * max(levels) + 1024)
    rounds: dict[tuple[object, ...], list[Row]] = {}
    ceilings: list[asyncio.subprocess.Process] = []
    sidecars: list[SidecarProcess] = []
    with bl.workdir() as wd:
        async with bl.start_idp(lifetime=86400) as idp, aiohttp.ClientSession() as http:
            try:
                targets: list[Target] = []
                variants = [False, True] if uvloop_ok else [False]
                for uv in variants:
                    sidecar = bl.sidecar_process(
                        wd,
                        bl.profile_toml(idp),
                        socket=True,
                        core=server_core,
                        python_args=UVLOOP_WRAPPER if uv else ("-m", "sidecar"),
                        env=bl.tools_env(uvloop=uv),
                    )
                    sidecars.append(sidecar)
                    await sidecar.start()
                    await sidecar.wait_event("token.refreshed")
                    name = "sidecar+uvloop" if uv else "sidecar"
                    targets.append(Target(name, sidecar.pid, sidecar.port, sidecar.socket_path))
                async with http.get(
                    f"{sidecars[0].url}/v1/token/bench", headers=bl.HEADERS
                ) as resp:
                    body = await resp.read()
                for uv in variants:
                    proc, target = await start_ceiling(wd, body, server_core, uvloop=uv)
                    ceilings.append(proc)
                    targets.append(target)
                for target in targets:  # warm up every server once
                    await run_py(target, 16, 1.0, unix=False)
                for level in levels:
                    # Interleave: each round loads every server once per client, so slow
                    # phases of a shared machine hit sidecar and ceiling alike.
                    for _ in range(args.rounds):
                        for target in targets:
                            if wrk is not None:
                                cell = run_wrk(wrk, target, level, args.duration, load_core)
                                await measure(cell, server_core, rounds)
                            if "uvloop" in target.name and not args.uvloop_py:
                                continue
                            for unix in (False, True):
                                cell = run_py(target, level, args.duration, unix=unix)
                                await measure(cell, server_core, rounds)
            finally:
                for proc in ceilings:
                    proc.terminate()
                    await proc.wait()
                for sidecar in sidecars:
                    await sidecar.stop()
    report(rounds, levels)
    return 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired(a: list[Row], b: list[Row], attr: str) -> float:
    """Median over rounds of a/b for one attribute (rounds ran back to back)."""
    ratios = [
        getattr(x, attr) / getattr(y, attr) for x, y in zip(a, b, strict=False) if getattr(y, attr)
    ]
    return median(ratios)


def report(rounds: dict[tuple[object, ...], list[Row]], levels: list[int]) -> None:
    bl.print_table(
        "Runs: median of the rounds (cached token; server and load on separate cores)",
        [
            "conns",
            "server",
            "client",
            "transport",
            "req/s",
            "p50 ms",
            "p99 ms",
            "server CPU",
            "other CPU on core",
            "errors",
        ],
        [
            (
                key[0],
                key[1],
                key[2],
                key[3],
                median([r.rps for r in rows]),
                median([r.p50_ms for r in rows]),
                median([r.p99_ms for r in rows]),
                f"{median([r.cpu_share for r in rows]):.0%}",
                f"{max(r.foreign for r in rows):.0%}",
                sum(r.errors for r in rows),
            )
            for key, rows in rounds.items()
        ],
    )
    ratio_rows = []
    for level in levels:
        for client, transport in (("wrk", "tcp"), ("py", "tcp"), ("py", "unix")):
            for server, ceiling in (("sidecar", "ceiling"), ("sidecar+uvloop", "ceiling+uvloop")):
                s = rounds.get((level, server, client, transport))
                c = rounds.get((level, ceiling, client, transport))
                if not s or not c:
                    continue
                base = rounds.get((level, "sidecar", client, transport))
                ratio_rows.append(
                    (
                        level,
                        f"{server}/{ceiling}",
                        f"{client}/{transport}",
                        paired(s, c, "rps"),
                        paired(s, c, "p99_ms"),
                        paired(s, base, "rps") if base else float("nan"),
                    )
                )
    bl.print_table(
        "Ratios (median of per-round ratios)",
        ["conns", "pair", "client", "req/s ratio", "p99 ratio", "req/s vs default-loop sidecar"],
        ratio_rows,
    )
    unix_rows = []
    for level in levels:
        for server in ("sidecar", "ceiling"):
            tcp = rounds.get((level, server, "py", "tcp"))
            unix = rounds.get((level, server, "py", "unix"))
            if tcp and unix:
                unix_rows.append(
                    (level, server, paired(unix, tcp, "rps"), paired(unix, tcp, "p99_ms"))
                )
    bl.print_table(
        "Unix socket vs TCP (Python generator, median of per-round ratios)",
        ["conns", "server", "req/s unix/tcp", "p99 unix/tcp"],
        unix_rows,
    )
    for level, pair, client, rps_ratio, p99_ratio, _ in ratio_rows:
        if level != 64 or pair != "sidecar/ceiling":
            continue
        print(
            f"targets at 64 connections ({client}): throughput {rps_ratio:.2f} of ceiling "
            f"({'met' if rps_ratio >= 0.9 else 'MISSED'}, target >= 0.9); "
            f"p99 {p99_ratio:.2f} of ceiling ({'met' if p99_ratio <= 1.2 else 'MISSED'}, <= 1.2)"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per cell (1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per level (3)")
    parser.add_argument("--connections", default="1,16,64,256", help="comma-separated levels")
    parser.add_argument("--uvloop", action="store_true", help="add uvloop rows (wrk only)")
    parser.add_argument(
        "--uvloop-py", action="store_true", help="with --uvloop, also Python-generator rows"
    )
    parser.add_argument("--no-wrk", action="store_true", help="Python generator only")
    parser.add_argument("--no-install", action="store_true", help="never install wrk or uvloop")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
