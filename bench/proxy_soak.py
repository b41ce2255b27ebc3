"""Proxy soak: SSE streams held open and steady requests through /v1/proxy; memory, descriptors.

A loopback upstream (an aiohttp app in this process) serves ``/events``, an
SSE stream writing one event every ``--event-interval`` milliseconds until
the caller goes away, and a small JSON body on every other path; it answers
403 to any request that arrives without a bearer ``Authorization`` header, so
a request forwarded without a token counts as an error. The sidecar proxies
it as ``[upstreams.bench]`` with the token of a dev-IdP profile.

``--streams`` SSE streams (default 100) are opened through
``/v1/proxy/bench/events`` and kept open for the whole run; a stream that
ends, fails or stays silent for ``--stall`` seconds counts as an error and is
reopened. Meanwhile ``--rate`` paced GET requests per second (default 100,
over ``--callers`` keep-alive connections) go through the proxy for
``--duration`` seconds (default 60; the issue's full size is
``--duration 600``). Every ``--sample`` seconds it records the sidecar's RSS
and open descriptors.

Reported: the load average at the start and end, RSS after warm-up and at
the end, growth (target under 5 MB), peak RSS over the samples, descriptors
at start, end and peak, events received against the number the upstream's
interval gives (target at least 90 %), the longest gap between two events of
one stream, stream errors and request errors (target 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import benchlib as bl
from aiohttp import web
from soak import paced_caller

BODY = b'{"id": 42, "name": "invoice", "lines": [1, 2, 3], "status": "paid"}'
PREFIX = "/v1/proxy/bench"
#: Streams stay open this long after the last sample, so that sample sees them all.
STREAM_GRACE = 1.0


def upstream_app(interval: float) -> web.Application:
    """``/events``: an event every ``interval`` seconds, forever; a small JSON body elsewhere."""

    @web.middleware
    async def bearer_only(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return web.json_response({"error": "no bearer token"}, status=403)
        return await handler(request)

    async def item(_request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    async def events(request: web.Request) -> web.StreamResponse:
        answer = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await answer.prepare(request)
        sent = 0
        with contextlib.suppress(ConnectionError):
            while True:
                sent += 1
                await answer.write(f"data: {sent}\n\n".encode())
                await asyncio.sleep(interval)
        return answer

    app = web.Application(middlewares=[bearer_only])
    app.router.add_get("/events", events)
    app.router.add_get("/{tail:.*}", item)
    return app


@contextlib.asynccontextmanager
async def serve_upstream(interval: float) -> AsyncIterator[int]:
    """The upstream on 127.0.0.1; yields its port. Streams still open end at cleanup."""
    runner = web.AppRunner(upstream_app(interval), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


class Streams:
    """What the SSE streams saw: events, errors, the longest silence of one stream."""

    def __init__(self) -> None:
        self.events = 0
        self.errors = 0
        self.opened = 0
        self.open = 0
        self.max_gap = 0.0

    def reset(self) -> None:
        self.events = self.errors = self.opened = 0
        self.max_gap = 0.0


async def hold_stream(
    http: aiohttp.ClientSession,
    url: str,
    deadline: float,
    seen: Streams,
    *,
    stall: float,
    retry_pause: float,
) -> None:
    """Keep one SSE stream open until ``deadline``, counting events; reopen it if it ends."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=stall, sock_read=stall)
    while time.monotonic() < deadline:
        try:
            async with http.get(url, headers=bl.HEADERS, timeout=timeout) as resp:
                if resp.status != 200:
                    await resp.read()
                    seen.errors += 1
                    await asyncio.sleep(retry_pause)
                    continue
                seen.opened += 1
                seen.open += 1
                try:
                    last = time.monotonic()
                    async for line in resp.content:
                        if not line.startswith(b"data: "):
                            continue
                        now = time.monotonic()
                        seen.events += 1
                        seen.max_gap = max(seen.max_gap, now - last)
                        last = now
                        if now >= deadline:
                            return
                finally:
                    seen.open -= 1
            seen.errors += 1  # the stream ended before the deadline
        except (aiohttp.ClientError, TimeoutError):
            seen.errors += 1
            await asyncio.sleep(retry_pause)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def main(args: argparse.Namespace) -> int:
    bl.print_machine()
    print(f"load average (1, 5, 15 min) at start: {loadavg()}")
    bl.raise_nofile(4 * args.streams + 1024)
    server_core, load_core = bl.cores()
    bl.pin_self(load_core)
    samples: list[bl.Sample] = []
    tally = {"ok": 0, "errors": 0}
    seen = Streams()
    interval = args.event_interval / 1000
    with bl.workdir() as wd:
        async with bl.start_idp() as idp, serve_upstream(interval) as up_port:
            upstream = (
                f'[upstreams.bench]\nbase_url = "http://127.0.0.1:{up_port}"\n'
                'profile = "bench"\nallow_http = true\nallow_private = true\n'
            )
            sidecar = bl.sidecar_process(wd, bl.profile_toml(idp) + upstream, core=server_core)
            try:
                await sidecar.start()
                async with (
                    aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=args.streams)
                    ) as streams_http,
                    aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=args.callers)
                    ) as http,
                ):
                    await bl.wait_ready(http, sidecar, bl.START_TIMEOUT)
                    start = time.monotonic() + args.warmup
                    deadline = start + args.duration
                    holders = asyncio.gather(
                        *(
                            hold_stream(
                                streams_http,
                                f"{sidecar.url}{PREFIX}/events",
                                deadline + STREAM_GRACE,
                                seen,
                                stall=args.stall,
                                retry_pause=interval,
                            )
                            for _ in range(args.streams)
                        )
                    )
                    url = f"{sidecar.url}{PREFIX}/item"
                    pace = args.callers / args.rate
                    await asyncio.gather(
                        *(paced_caller(http, url, pace, start, tally) for _ in range(args.callers))
                    )
                    open_after_warmup = seen.open
                    tally.update(ok=0, errors=0)
                    seen.reset()
                    start = time.monotonic()
                    load = asyncio.gather(
                        *(
                            paced_caller(http, url, pace, deadline, tally)
                            for _ in range(args.callers)
                        )
                    )
                    samples += await bl.sample_until(sidecar.pid, start, deadline, args.sample)
                    # The last sample while every stream is still open (they end a second later).
                    elapsed = time.monotonic() - start
                    samples.append(bl.process_sample(sidecar.pid, start))
                    events, max_gap = seen.events, seen.max_gap
                    await load
                    await asyncio.wait_for(holders, args.stall + 10)
            finally:
                await sidecar.stop()
    print(f"\nload average (1, 5, 15 min) at end: {loadavg()}")
    rss0, rss1 = samples[0][1], samples[-1][1]
    growth_mb = (rss1 - rss0) / 1024
    fds = [s[2] for s in samples]
    expected = round(args.streams * elapsed / interval)
    bl.print_table(
        "RSS and descriptors over the proxy soak",
        ["t (s)", "RSS MiB", "open fds"],
        [(round(t), kib / 1024, n) for t, kib, n in samples],
    )
    bl.print_table(
        f"Proxy soak: {elapsed:.0f} s, {args.streams} SSE streams (an event every "
        f"{args.event_interval:g} ms), {args.rate} req/s over {args.callers} connections",
        ["figure", "value", "target"],
        [
            ("streams open after warm-up", open_after_warmup, f"{args.streams}"),
            ("SSE events received", events, f">= {round(expected * 0.9)} (90 %)"),
            ("longest gap between events (ms)", max_gap * 1e3, f"< {args.stall * 1e3:g}"),
            ("stream errors (ended, failed, stalled)", seen.errors, "0"),
            ("requests answered 200", tally["ok"], "-"),
            ("achieved req/s", tally["ok"] / elapsed, f"{args.rate}"),
            ("request errors", tally["errors"], "0"),
            ("RSS after warm-up (MiB)", rss0 / 1024, "-"),
            ("RSS end (MiB)", rss1 / 1024, "-"),
            ("RSS growth (MiB)", growth_mb, "< 5"),
            ("RSS peak of samples (MiB)", max(s[1] for s in samples) / 1024, "-"),
            ("open fds start / end / max", f"{fds[0]} / {fds[-1]} / {max(fds)}", "stable"),
        ],
    )
    met = (
        open_after_warmup == args.streams
        and seen.errors == 0
        and events >= expected * 0.9
        and tally["errors"] == 0
        and growth_mb < 5
        and fds[-1] <= fds[0] + 2
    )
    print(
        "targets (all streams open, errors 0, events >= 90 %, RSS growth < 5 MB, fds stable): "
        f"{'met' if met else 'MISSED'}"
    )
    return 0 if met else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (issue: 600)")
    parser.add_argument("--streams", type=int, default=100, help="concurrent SSE streams")
    parser.add_argument(
        "--event-interval", type=float, default=100.0, help="ms between events of one stream"
    )
    parser.add_argument("--rate", type=int, default=100, help="proxied GET requests per second")
    parser.add_argument("--callers", type=int, default=8, help="keep-alive request connections")
    parser.add_argument("--warmup", type=float, default=5.0, help="load before the start sample")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--stall", type=float, default=5.0, help="a stream silent this long is an error"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
