"""Proxy mode: the sidecar's /v1/proxy against a minimal aiohttp reverse proxy and nginx.

One upstream (a small aiohttp app in its own process) answers a fixed JSON
body and an SSE stream. In interleaved rounds, at 1, 16 and 64 keep-alive
connections, the Python load generator measures req/s and latency of:

- ``direct``: the upstream itself (for the latency the proxies add);
- ``ceiling``: a minimal aiohttp reverse proxy that adds a fixed
  ``Authorization`` header and streams the answer back (the framework's
  ceiling; this script started with ``--role ceiling``);
- ``sidecar``: ``token-sidecar serve`` with ``[upstreams.bench]``, the token of
  a dev-IdP profile attached;
- ``nginx``: ``proxy_pass`` with a fixed header and upstream keep-alive, one
  worker (the Debian package; installed with apt-get when missing and root,
  skipped otherwise or with ``--no-nginx``).

Then SSE: the upstream writes an event every ``--sse-interval`` seconds
carrying its send instant (CLOCK_MONOTONIC is shared by the processes of one
machine); the delay each event needs to reach the caller is measured directly
and through the sidecar, and the table shows p50/p99 of both and the added
delay.

The fixed header of the ceiling and nginx is as long as the sidecar's real
token (``Bearer`` and a JWT of the dev IdP, 740 characters): writing a header
costs the same per byte whoever sends it, so all three carry the same bytes.
``--short-fixed-header`` sends ``Bearer bench-fixed-token`` instead (24
characters; the comparison of the first runs).

Targets (issue 13): sidecar >= 0.9 of the ceiling's req/s, added p50 <= 0.5 ms
at 1 connection, SSE added p99 < 5 ms; nginx's ratio is reported as it is.
Usage: ``.venv/bin/python bench/proxy.py [--rounds 5 --duration 10]``;
``--quick`` for a short check that everything runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (
    PYTHON,
    cores,
    percentile,
    pin_self,
    print_machine,
    print_table,
    profile_toml,
    run_load,
    run_quiet,
    sidecar_process,
    start_idp,
    wait_ready,
    workdir,
)

from sidecar.testing import SidecarProcess, free_port

BODY = b'{"id": 42, "name": "invoice", "lines": [1, 2, 3], "status": "paid"}' * 3
SHORT_FIXED = "Bearer bench-fixed-token"


def fixed_header(length: int) -> str:
    """A fixed ``Authorization`` value of ``length`` characters (at least the short one)."""
    return SHORT_FIXED + "x" * max(0, length - len(SHORT_FIXED))


PREFIX = "/v1/proxy/bench"


# -- the child roles: upstream and ceiling ---------------------------------------------


def upstream_app(interval: float) -> web.Application:
    """The upstream: a fixed JSON body on every path, and ``/events`` (SSE, timestamped)."""

    async def item(_request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    async def events(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:
                await answer.write(f"data: {time.monotonic():.9f}\n\n".encode())
                await asyncio.sleep(interval)
        return answer

    app = web.Application()
    app.router.add_get("/events", events)
    app.router.add_route("*", "/{tail:.*}", item)
    return app


def ceiling_app(upstream_port: int, fixed: str = SHORT_FIXED) -> web.Application:
    """A minimal streaming reverse proxy adding a fixed header: the aiohttp ceiling."""
    session: dict[str, aiohttp.ClientSession] = {}

    async def client(_app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(auto_decompress=False) as opened:
            session["s"] = opened
            yield

    async def forward(request: web.Request) -> web.StreamResponse:
        url = f"http://127.0.0.1:{upstream_port}{request.raw_path.removeprefix(PREFIX)}"
        headers = {"Authorization": fixed}
        async with session["s"].get(url, headers=headers, allow_redirects=False) as up:
            answer = web.StreamResponse(status=up.status, headers=up.headers)
            await answer.prepare(request)
            async for chunk in up.content.iter_any():
                await answer.write(chunk)
            await answer.write_eof()
            return answer

    app = web.Application()
    app.cleanup_ctx.append(client)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve_role(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


@contextlib.contextmanager
def child(role: str, port: int, *extra: str, core: int | None) -> Iterator[None]:
    """This script in another ``role``, pinned to ``core``; waits for its "ready" line."""
    pin = ["taskset", "-c", str(core)] if core is not None else []
    proc = subprocess.Popen(  # noqa: S603 - our own script
        [*pin, PYTHON, __file__, "--role", role, "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None  # noqa: S101
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{role} did not start")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


# -- nginx -----------------------------------------------------------------------------


def ensure_nginx(*, install: bool) -> str | None:
    """The nginx binary; installed from Debian when missing, allowed and root."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found or not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    run_quiet(["apt-get", "install", "-y", "--no-install-recommends", "nginx-light"], 600)
    if not Path("/usr/sbin/nginx").exists():
        run_quiet(["apt-get", "install", "-y", "--no-install-recommends", "nginx"], 600)
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None


@contextlib.contextmanager
def nginx(  # noqa: PLR0917 - the places and the header of one server
    binary: str, wd: Path, port: int, upstream_port: int, core: int | None, fixed: str
) -> Iterator[None]:
    conf = wd / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {wd}/nginx.pid;
error_log {wd}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {wd}/body;
  proxy_temp_path {wd}/proxy;
  upstream api {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location {PREFIX}/ {{
      proxy_pass http://api/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "{fixed}";
      proxy_buffering off;
    }}
  }}
}}
"""
    )
    pin = ["taskset", "-c", str(core)] if core is not None else []
    proc = subprocess.Popen([*pin, binary, "-c", str(conf), "-p", str(wd)])  # noqa: S603
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


# -- measurements ----------------------------------------------------------------------


async def sse_delays(url: str, count: int, headers: dict[str, str]) -> list[float]:
    """Seconds from each event's send instant (in its body) to its arrival here."""
    delays: list[float] = []
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        assert resp.status == 200, resp.status  # noqa: S101
        while len(delays) < count:
            line = await resp.content.readline()
            if line.startswith(b"data: "):
                delays.append(time.monotonic() - float(line[6:]))
    return delays[5:]  # the first events include connection set-up


async def token_header_length(http: aiohttp.ClientSession, sidecar: SidecarProcess) -> int:
    """The length of the ``Authorization`` value the sidecar sends (``Bearer`` and its token)."""
    async with http.get(f"{sidecar.url}/v1/token/bench", headers={"Token-Sidecar": "1"}) as resp:
        body = await resp.json()
    return len(f"{body['token_type']} {body['access_token']}")


async def measure(args: argparse.Namespace) -> None:
    print_machine()
    server_core, load_core = cores()
    pin_self(load_core)
    nginx_bin = None if args.no_nginx else ensure_nginx(install=not args.no_install)
    up_port, ceil_port, nginx_port = free_port(), free_port(), free_port()
    interval = str(args.sse_interval)
    with workdir() as wd, child("upstream", up_port, "--sse-interval", interval, core=load_core):
        async with start_idp() as idp, aiohttp.ClientSession() as http:
            upstream = (
                f'[upstreams.bench]\nbase_url = "http://127.0.0.1:{up_port}"\n'
                'profile = "bench"\nallow_http = true\nallow_private = true\n'
            )
            sidecar = sidecar_process(wd, profile_toml(idp) + upstream, core=server_core)
            await sidecar.start()
            try:
                await wait_ready(http, sidecar, 30)
                length = 0 if args.short_fixed_header else await token_header_length(http, sidecar)
                fixed = fixed_header(length)
                print(f"fixed Authorization header of ceiling and nginx: {len(fixed)} characters")
                with (
                    child(
                        "ceiling",
                        ceil_port,
                        "--upstream-port",
                        str(up_port),
                        "--fixed-length",
                        str(len(fixed)),
                        core=server_core,
                    ),
                    nginx(nginx_bin, wd, nginx_port, up_port, server_core, fixed)
                    if nginx_bin
                    else contextlib.nullcontext(),
                ):
                    targets = {
                        "direct": (up_port, "/item"),
                        "ceiling": (ceil_port, f"{PREFIX}/item"),
                        "sidecar": (sidecar.port, f"{PREFIX}/item"),
                    }
                    if nginx_bin:
                        targets["nginx"] = (nginx_port, f"{PREFIX}/item")
                    await throughput(targets, args)
                await sse(up_port, sidecar, args)
            finally:
                await sidecar.stop()


async def sse(up_port: int, sidecar: SidecarProcess, args: argparse.Namespace) -> None:
    """The delay the sidecar adds to each SSE event: p50 and p99, direct and through it."""
    direct = await sse_delays(f"http://127.0.0.1:{up_port}/events", args.sse_events, {})
    proxied = await sse_delays(
        f"{sidecar.url}{PREFIX}/events", args.sse_events, {"Token-Sidecar": "1"}
    )
    rows = [
        [name, len(d), percentile(d, 50) * 1e3, percentile(d, 99) * 1e3]
        for name, d in (("direct", direct), ("sidecar", proxied))
    ]
    added = [
        "added",
        "",
        (percentile(proxied, 50) - percentile(direct, 50)) * 1e3,
        (percentile(proxied, 99) - percentile(direct, 99)) * 1e3,
    ]
    print_table("SSE event delay (ms)", ["path", "events", "p50", "p99"], [*rows, added])


async def throughput(targets: dict[str, tuple[int, str]], args: argparse.Namespace) -> None:
    """Interleaved rounds: every target at every connection count in each round.

    The order of the targets is reversed every other round, each round is
    printed as it ends, and a target's ratio is the median of its per-round
    ratios to the ceiling of the same round (req/s is the median of rounds).
    """
    rps: dict[tuple[str, int], list[float]] = defaultdict(list)
    p50: dict[tuple[str, int], list[float]] = defaultdict(list)
    ratios: dict[tuple[str, int], list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    for n in range(args.rounds):
        order = list(targets) if n % 2 == 0 else list(reversed(targets))
        for conns in args.connections:
            got: dict[str, float] = {}
            for name in order:
                port, path = targets[name]
                result = await run_load(
                    connections=conns, duration=args.duration, path=path, port=port
                )
                got[name] = result.rps
                rps[name, conns].append(result.rps)
                p50[name, conns].append(result.p(50))
                errors[name] += result.errors
            for name, value in got.items():
                if got["ceiling"]:
                    ratios[name, conns].append(value / got["ceiling"])
            share = got["sidecar"] / got["ceiling"] if got["ceiling"] else 0.0
            listed = ", ".join(f"{name} {got[name]:.0f}" for name in targets)
            print(
                f"round {n + 1}, {conns} conns: {listed} req/s; sidecar/ceiling {share:.3f}",
                file=sys.stderr,
                flush=True,
            )
    rows = []
    for conns in args.connections:
        for name in targets:
            each = ratios[name, conns]
            rows.append(
                [
                    conns,
                    name,
                    round(statistics.median(rps[name, conns])),
                    statistics.median(p50[name, conns]) * 1e3,
                    statistics.median(each) if each else 0.0,
                    f"{min(each):.3f}-{max(each):.3f}" if each else "",
                    errors[name],
                ]
            )
    print_table(
        f"proxied GET, {args.rounds} interleaved rounds of {args.duration:g}s (order reversed "
        "every other round; req/s and p50: medians of rounds; of ceiling: median of per-round "
        "ratios)",
        ["conns", "target", "req/s", "p50 ms", "of ceiling", "range", "errors"],
        rows,
    )
    one = (
        {name: statistics.median(p50[name, 1]) for name in targets} if 1 in args.connections else {}
    )
    if one:
        print(
            "added p50 at 1 connection over direct (ms): "
            + ", ".join(
                f"{n}={(v - one['direct']) * 1e3:.3f}" for n, v in one.items() if n != "direct"
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("bench", "upstream", "ceiling"), default="bench")
    parser.add_argument("--port", type=int)
    parser.add_argument("--upstream-port", type=int)
    parser.add_argument("--fixed-length", type=int, default=0, help="ceiling role: header length")
    parser.add_argument(
        "--short-fixed-header",
        action="store_true",
        help="ceiling and nginx send the 24-character fixed header, not one as long as the token",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--sse-interval", type=float, default=0.01)
    parser.add_argument("--sse-events", type=int, default=1000)
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument("--no-install", action="store_true", help="never apt-get install nginx")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s, 100 SSE events")
    args = parser.parse_args()
    if args.role == "upstream":
        asyncio.run(serve_role(upstream_app(args.sse_interval), args.port))
    elif args.role == "ceiling":
        fixed = fixed_header(args.fixed_length)
        asyncio.run(serve_role(ceiling_app(args.upstream_port, fixed), args.port))
    else:
        if args.quick:
            args.rounds, args.duration, args.sse_events = 1, 1.0, 100
        asyncio.run(measure(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
