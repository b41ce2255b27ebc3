"""Candidate hot-path changes, measured against the shipped token app in one run.

Each variant is served by a child process of this script (``--serve NAME``)
from the sidecar's own code with a cached token injected (no IdP, no refresh
loop), pinned to the server core, and loaded with ``wrk`` at ``--connections``
in interleaved rounds:

- ``shipped``: ``sidecar.token_api.make_token_app`` as the daemon serves it;
- ``no-middleware``: the same guards, handler and error mapping, applied by a
  wrapper around each handler instead of an aiohttp middleware (aiohttp then
  skips its middleware chain per request);
- ``prebound``: ``no-middleware`` plus a handler that increments a metric
  child bound once per profile instead of calling ``labels()`` per request;
- ``ceiling``: the bare handler of ``ceiling.py`` returning fixed bytes.

These variants live here only, as evidence; the product code is not changed.
"""

# This script measures the sidecar's own internals on purpose.
# ruff: noqa: SLF001

from __future__ import annotations

import argparse
import asyncio
import math
import re
import signal
import statistics
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import benchlib as bl
from aiohttp import web

from sidecar import token_api as api
from sidecar.config import ServerConfig
from sidecar.responses import json_response
from sidecar.service import TokenService
from sidecar.testing import free_port

SELF = Path(__file__).resolve()
VARIANTS = ("shipped", "no-middleware", "prebound", "ceiling")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def boundary_wrapper(handler: Handler) -> Handler:
    """``api._boundary`` as a per-route wrapper instead of an app middleware."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        return await api._boundary(request, handler)

    return wrapped


def make_app(name: str, service: TokenService) -> web.Application:
    if name == "shipped":
        return api.make_token_app(service, ServerConfig())
    app = web.Application()
    app[api.SERVICE] = service
    app[api.SERVER] = ServerConfig()
    if name == "no-middleware":
        app.router.add_get(
            "/v1/token/{profile}", boundary_wrapper(api._get_token), allow_head=False
        )
        return app
    served = {n: service.metrics.token_requests.labels(n, "served") for n in service.refreshers}

    async def get_token(request: web.Request) -> web.Response:
        refresher = service.refresher_for(request.match_info["profile"])
        min_ttl = api._min_ttl(request, refresher)
        result = refresher.serve_now(min_ttl)
        if result is None:
            result = await refresher.get(min_ttl)
        if result.stale:
            return api._token_response(service, refresher.name, result)
        served[refresher.name].inc()
        token = result.token
        body = {
            "access_token": token.value,
            "token_type": "Bearer",
            "expires_in": token.expires_in(service.clock.monotonic()),
            "expires_at": math.floor(token.expires_at_wall),
            "scope": token.scope,
            "profile": refresher.name,
            "stale": False,
        }
        return json_response(body, status=200)

    app.router.add_get("/v1/token/{profile}", boundary_wrapper(get_token), allow_head=False)
    return app


def make_ceiling(body: bytes) -> web.Application:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}

    async def token(_request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/token/{profile}", token, allow_head=False)
    return app


async def serve(name: str, port: int) -> None:
    async with aiohttp.ClientSession() as session:
        await _serve(name, port, bl.seeded_service(session))


async def _serve(name: str, port: int, service: TokenService) -> None:
    if name == "ceiling":
        probe = make_app("shipped", service)
        runner = web.AppRunner(probe, access_log=None)
        await runner.setup()
        scratch = free_port()
        await web.TCPSite(runner, "127.0.0.1", scratch).start()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{scratch}/v1/token/bench", headers=bl.HEADERS) as resp,
        ):
            body = await resp.read()
        await runner.cleanup()
        app = make_ceiling(body)
    else:
        app = make_app(name, service)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


async def wrk_once(
    wrk: str, port: int, connections: int, seconds: float, core: int | None
) -> tuple[float, float]:
    proc = await asyncio.create_subprocess_exec(
        *bl.taskset(core),
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-H",
        "Token-Sidecar: 1",
        f"http://127.0.0.1:{port}/v1/token/bench",
        stdout=asyncio.subprocess.PIPE,
    )
    out = (await proc.communicate())[0].decode()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    return (
        float(rps.group(1)) if rps else 0.0,
        float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
    )


async def main(args: argparse.Namespace) -> int:
    bl.print_machine()
    wrk = bl.ensure_wrk(install=not args.no_install)
    if wrk is None:
        print("wrk is required for this comparison", file=sys.stderr)
        return 1
    server_core, load_core = bl.cores()
    bl.pin_self(load_core)
    procs: dict[str, tuple[asyncio.subprocess.Process, int]] = {}
    results: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    try:
        for name in VARIANTS:
            port = free_port()
            proc = await asyncio.create_subprocess_exec(
                *bl.taskset(server_core),
                bl.PYTHON,
                str(SELF),
                "--serve",
                name,
                "--port",
                str(port),
                stdout=asyncio.subprocess.PIPE,
                cwd=str(bl.ROOT),
            )
            assert proc.stdout is not None  # noqa: S101
            if (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() != b"ready":
                raise RuntimeError(f"{name} did not start")
            procs[name] = (proc, port)
            await wrk_once(wrk, port, args.connections, 1, load_core)  # warm-up
        for _ in range(args.rounds):
            for name in VARIANTS:
                results[name].append(
                    await wrk_once(wrk, procs[name][1], args.connections, args.duration, load_core)
                )
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            await proc.wait()
    shipped = results["shipped"]
    ceiling = results["ceiling"]
    rows = []
    for name in VARIANTS:
        runs = results[name]
        rows.append(
            (
                name,
                statistics.median(r[0] for r in runs),
                statistics.median(r[1] for r in runs),
                statistics.median(a[0] / b[0] for a, b in zip(runs, shipped, strict=True)),
                statistics.median(a[0] / c[0] for a, c in zip(runs, ceiling, strict=True)),
                statistics.median(a[1] / c[1] for a, c in zip(runs, ceiling, strict=True)),
            )
        )
    bl.print_table(
        f"Hot-path variants: wrk, {args.connections} connections, {args.rounds} interleaved rounds "
        f"of {args.duration:.0f} s (ratios: median of per-round ratios)",
        ["variant", "req/s", "p99 ms", "vs shipped", "vs ceiling", "p99 vs ceiling"],
        rows,
    )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--no-install", action="store_true", help="never install wrk")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        asyncio.run(serve(arguments.serve, arguments.port))
        sys.exit(0)
    sys.exit(asyncio.run(main(arguments)))
