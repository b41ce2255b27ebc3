"""Profile the hot path: where a cached ``GET /v1/token/{profile}`` spends its time.

Three views, in one run:

1. ``py-spy`` (pip-installed into a private tools folder when missing; skipped
   with ``--no-install``) samples the sidecar process while ``wrk`` (or the
   Python generator) loads it at 64 connections; prints the top frames by
   own time and by inclusive time, and own time grouped by component.
2. With ``--cprofile``: the sidecar runs under ``cProfile`` instead and the
   top functions by own time are printed (heavier, but needs no tool).
3. A micro-benchmark, in this process, of each piece of the handler path on a
   mocked request: guards, the profile lookup and ``serve_now``, the metric
   increment, the JSON body, the response object, and the whole
   boundary+guards+handler against the ceiling's one-line handler.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import pstats
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import aiohttp
import benchlib as bl
import orjson
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from sidecar import token_api as api
from sidecar.config import ServerConfig
from sidecar.testing import SidecarProcess

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")
GROUPS = (
    ("sidecar/token_api.py", "sidecar token API (guards, handler, response body)"),
    ("sidecar/refresher.py", "sidecar refresher.serve_now"),
    ("sidecar/", "sidecar other"),
    ("prometheus_client", "prometheus_client (metric increment)"),
    ("web_protocol", "aiohttp web_protocol (connection, request loop)"),
    ("web_response", "aiohttp web_response (headers, write)"),
    ("web_app", "aiohttp web_app (middleware chain, dispatch)"),
    ("web_urldispatcher", "aiohttp router"),
    ("http_writer", "aiohttp http_writer"),
    ("web_request", "aiohttp web_request"),
    ("aiohttp", "aiohttp other"),
    ("asyncio", "asyncio event loop and transports"),
    ("selectors", "selectors (epoll)"),
)


def frame_key(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match.group("func"), match.group("file")


def short(file: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file.replace(str(bl.ROOT) + "/", "")


def summarize_collapsed(text: str, top: int) -> None:
    """Own and inclusive sample counts per function from py-spy ``--format raw`` output."""
    own: collections.Counter[tuple[str, str]] = collections.Counter()
    incl: collections.Counter[tuple[str, str]] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_key(f) for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        own[leaf] += count
        for key in set(frames):
            incl[key] += count
        groups[
            next(
                (label for needle, label in GROUPS if needle in leaf[1]), "other (C code, runtime)"
            )
        ] += count
    if not total:
        print("py-spy recorded no samples")
        return
    bl.print_table(
        f"py-spy: own time by component ({total:,} samples)",
        ["component", "share of samples"],
        [(label, f"{n / total:.1%}") for label, n in groups.most_common()],
    )
    bl.print_table(
        "py-spy: top frames by own time",
        ["function", "file", "own"],
        [(f, short(p), f"{n / total:.1%}") for (f, p), n in own.most_common(top)],
    )
    bl.print_table(
        "py-spy: top frames by inclusive time",
        ["function", "file", "inclusive"],
        [(f, short(p), f"{n / total:.1%}") for (f, p), n in incl.most_common(top)],
    )


async def load_sidecar(sidecar: SidecarProcess, seconds: float, core: int | None) -> str:
    """Drive the sidecar at 64 connections; returns a one-line summary."""
    wrk = bl.ensure_wrk(install=False)
    if wrk is None:
        result = await bl.run_load(
            connections=64, duration=seconds, path="/v1/token/bench", port=sidecar.port
        )
        return f"python generator: {result.rps:,.0f} req/s"
    proc = await asyncio.create_subprocess_exec(
        *bl.taskset(core),
        wrk,
        "-t1",
        "-c64",
        f"-d{round(seconds)}s",
        "-H",
        "Token-Sidecar: 1",
        f"http://127.0.0.1:{sidecar.port}/v1/token/bench",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    match = re.search(r"Requests/sec:\s+([\d.]+)", out.decode())
    return f"wrk: {float(match.group(1)) if match else 0:,.0f} req/s"


async def pyspy(args: argparse.Namespace, wd: Path, idp: bl.IdP) -> None:
    tools = bl.ensure_pip_tool("py-spy", install=not args.no_install)
    if tools is None:
        print("py-spy unavailable; use --cprofile")
        return
    server_core, load_core = bl.cores()
    sidecar = bl.sidecar_process(wd, bl.profile_toml(idp), core=server_core)
    out = wd / "pyspy.txt"
    try:
        await sidecar.start()
        await sidecar.wait_event("token.refreshed")
        print("unprofiled:", await load_sidecar(sidecar, 3, load_core))
        spy = await asyncio.create_subprocess_exec(
            *bl.taskset(load_core),
            str(tools / "bin" / "py-spy"),
            "record",
            "--pid",
            str(sidecar.pid),
            "--duration",
            str(round(args.duration)),
            "--rate",
            "250",
            "--nonblocking",
            "--format",
            "raw",
            "-o",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(0.5)
        print("under py-spy:", await load_sidecar(sidecar, args.duration - 1, load_core))
        _, err = await spy.communicate()
        if spy.returncode != 0:
            print(f"py-spy failed: {err.decode()[-500:]}")
            return
    finally:
        await sidecar.stop()
    summarize_collapsed(out.read_text(), args.top)


async def cprofile(args: argparse.Namespace, wd: Path, idp: bl.IdP) -> None:
    server_core, load_core = bl.cores()
    stats_file = wd / "sidecar.prof"
    sidecar = bl.sidecar_process(
        wd,
        bl.profile_toml(idp),
        core=server_core,
        python_args=("-m", "cProfile", "-o", str(stats_file), "-m", "sidecar"),
    )
    try:
        await sidecar.start()
        await sidecar.wait_event("token.refreshed")
        print("under cProfile:", await load_sidecar(sidecar, args.duration, load_core))
    finally:
        await sidecar.stop()
    stats = pstats.Stats(str(stats_file))
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[: args.top]  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    bl.print_table(
        "cProfile: top functions by own time",
        ["function", "file", "calls", "own s", "own share", "cumulative s"],
        [
            (f"{name}", f"{short(path)}:{line}", calls, tt, f"{tt / total:.1%}", ct)
            for (path, line, name), (_cc, calls, tt, ct, _callers) in rows
        ],
    )


# -- micro-benchmark ----------------------------------------------------------


async def _per_call(
    fn: Callable[[], Awaitable[Any]] | Callable[[], Any], n: int, *, is_async: bool
) -> float:
    """Microseconds per call, best of 5 batches."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        if is_async:
            for _ in range(n):
                await fn()  # type: ignore[misc]
        else:
            for _ in range(n):
                fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


async def micro(n: int) -> None:
    service = bl.seeded_service(mock.Mock(spec=aiohttp.ClientSession))
    app = api.make_token_app(service, ServerConfig())
    sock = SimpleNamespace(family=socket.AF_INET)
    # A plain stub, not a Mock: Mock calls cost microseconds and would swamp the guards.
    transport = SimpleNamespace(
        get_extra_info=lambda _name, _default=None: sock, is_closing=lambda: False
    )
    headers = {"Host": "127.0.0.1:8700", "Token-Sidecar": "1"}
    request = make_mocked_request(
        "GET",
        "/v1/token/bench",
        headers=headers,
        app=app,
        transport=transport,
        match_info={"profile": "bench"},
    )
    refresher = service.refresher_for("bench")
    served = refresher.serve_now()
    assert served is not None  # noqa: S101
    body = {
        "access_token": served.token.value,
        "token_type": "Bearer",
        "expires_in": 3599,
        "expires_at": 1_800_000_000,
        "scope": "read:tools",
        "profile": "bench",
        "stale": False,
    }
    encoded = orjson.dumps(body)
    no_store = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    counter = service.metrics.token_requests
    child = counter.labels("bench", "served")

    async def ceiling_handler() -> web.Response:
        return web.Response(body=encoded, headers=no_store, content_type="application/json")

    token_api = app[api.TOKEN_API]

    async def sidecar_path() -> web.StreamResponse:
        return await token_api.get_token(request)

    rows: list[tuple[str, float]] = [
        (
            "TokenApi.get_token: guards + handler (the whole app-level path)",
            await _per_call(sidecar_path, n, is_async=True),
        ),
        ("ceiling handler (constant bytes)", await _per_call(ceiling_handler, n, is_async=True)),
        (
            "guards (TokenApi.check_guards)",
            await _per_call(lambda: token_api.check_guards(request), n, is_async=False),
        ),
        (
            "service.refresher_for(name) + serve_now()",
            await _per_call(lambda: service.refresher_for("bench").serve_now(), n, is_async=False),
        ),
        (
            "metric: labels(profile, outcome).inc()",
            await _per_call(lambda: counter.labels("bench", "served").inc(), n, is_async=False),
        ),
        ("metric: pre-bound child .inc()", await _per_call(child.inc, n, is_async=False)),
        ("orjson.dumps(body)", await _per_call(lambda: orjson.dumps(body), n, is_async=False)),
        (
            "web.Response(body, headers, content_type)",
            await _per_call(
                lambda: web.Response(
                    body=encoded, status=200, headers=no_store, content_type="application/json"
                ),
                n,
                is_async=False,
            ),
        ),
        (
            "request.query.getall('min_ttl', [])",
            await _per_call(lambda: request.query.getall("min_ttl", []), n, is_async=False),
        ),
    ]
    bl.print_table(
        f"Micro-benchmark: microseconds per call (best of 5 x {n:,}), in-process, no I/O",
        ["piece of the path", "us / call"],
        rows,
    )


async def main(args: argparse.Namespace) -> int:
    bl.print_machine()
    if not args.no_micro:
        await micro(args.micro_n)
    if args.micro_only:
        return 0
    with bl.workdir() as wd:
        async with bl.start_idp(lifetime=86400) as idp:
            if args.cprofile:
                await cprofile(args, wd, idp)
            else:
                await pyspy(args, wd, idp)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of profiled load")
    parser.add_argument("--top", type=int, default=15, help="rows per table")
    parser.add_argument("--cprofile", action="store_true", help="cProfile instead of py-spy")
    parser.add_argument("--no-install", action="store_true", help="never pip-install py-spy")
    parser.add_argument("--no-micro", action="store_true", help="skip the micro-benchmark")
    parser.add_argument("--micro-only", action="store_true", help="only the micro-benchmark")
    parser.add_argument("--micro-n", type=int, default=20_000, help="calls per micro batch")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
