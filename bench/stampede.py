"""Stampede: 10,000 concurrent requests on a cold profile with a 200 ms IdP.

The development IdP runs in this process with ``faults.delay`` (default
0.2 s) and a gate in front of its token endpoint. The sidecar starts cold:
its first IdP request is held at the gate. Every client connection is opened
and its ``GET /v1/token/bench`` sent while the profile is still cold, the
script waits until the sidecar's CPU goes idle (every request parsed and
waiting), and only then opens the gate, so all requests wait on one refresh.

Reported: IdP token requests (must be 1), failed requests (must be 0), and
the wait of each request, measured from the gate opening (the 200 ms IdP
round trip plus the time to wake and answer every waiter) and from the
moment the request was sent. ``--requests`` and ``--delay`` change the sizes;
``--no-gate`` fires the requests at a sidecar that is warming up on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time

import aiohttp
import benchlib as bl


async def one_request(
    port: int,
    request: bytes,
    connect_slots: asyncio.Semaphore,
    sent: asyncio.Event,
    timeout: float,
) -> tuple[int, float, float]:
    """One connection, one request: (status or -1, sent at, answered at)."""
    sent_at = 0.0
    try:
        async with connect_slots:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            sent_at = time.perf_counter()
        sent.set()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        done_at = time.perf_counter()
        match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        await reader.readexactly(int(match.group(1)) if match else 0)
        writer.close()
        return int(head[9:12]), sent_at, done_at
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return -1, sent_at, time.perf_counter()


async def wait_idle(pid: int, *, quiet: float = 0.01, window: float = 0.1, limit: float = 30.0):
    """Return once ``pid`` used under ``quiet`` CPU-seconds in two ``window``s in a row."""
    deadline = time.monotonic() + limit
    calm = 0
    while calm < 2 and time.monotonic() < deadline:
        before = bl.cpu_seconds(pid)
        await asyncio.sleep(window)
        calm = calm + 1 if bl.cpu_seconds(pid) - before < quiet else 0


async def main(args: argparse.Namespace) -> int:
    bl.print_machine()
    server_core, load_core = bl.cores()
    bl.pin_self(load_core)
    limit = bl.raise_nofile(args.requests + 2048)
    print(f"open-files limit: {limit}; server core: {server_core}, load core: {load_core}")
    if limit < args.requests + 256:
        print("the open-files limit is too low for this many connections", file=sys.stderr)
        return 1
    with bl.workdir() as wd:
        async with bl.start_idp(lifetime=3600, gated=not args.no_gate) as idp:
            idp.dev.faults.delay = args.delay
            wait_timeout = f'"{int(args.timeout)}s"'
            sidecar = bl.sidecar_process(
                wd, bl.profile_toml(idp, wait_timeout=wait_timeout), core=server_core
            )
            try:
                await sidecar.start()
                request = bl.request_bytes("/v1/token/bench")
                slots = asyncio.Semaphore(args.connect_concurrency)
                sent = [asyncio.Event() for _ in range(args.requests)]
                t0 = time.perf_counter()
                tasks = [
                    asyncio.create_task(
                        one_request(sidecar.port, request, slots, sent[i], args.timeout + 5)
                    )
                    for i in range(args.requests)
                ]
                await asyncio.gather(*(e.wait() for e in sent))
                all_sent = time.perf_counter()
                if not args.no_gate:
                    await wait_idle(sidecar.pid)
                cold = sidecar.count("token.refreshed") == 0
                gate_open = time.perf_counter()
                idp.gate.set()
                results = await asyncio.gather(*tasks)
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"{sidecar.ops}/metrics") as resp,
                ):
                    metrics = await resp.text()
            finally:
                await sidecar.stop()
            token_requests, jwks_requests = idp.dev.token_requests, idp.dev.jwks_requests
    failed = sum(1 for status, _, _ in results if status != 200)
    ok = [(s, d) for status, s, d in results if status == 200]
    from_gate = [d - gate_open for _, d in ok]
    from_send = [d - s for s, d in ok]
    served = re.search(r'token_requests_total\{outcome="served",profile="bench"\} (\S+)', metrics)
    served = served or re.search(
        r'token_requests_total\{profile="bench",outcome="served"\} (\S+)', metrics
    )
    bl.print_table(
        f"Stampede: {args.requests:,} concurrent requests, cold profile, IdP delay "
        f"{args.delay * 1000:.0f} ms "
        f"({'no gate' if args.no_gate else 'all queued before the IdP answers'})",
        ["figure", "value", "target"],
        [
            ("IdP token requests", token_requests, "1"),
            ("IdP JWKS requests", jwks_requests, "-"),
            ("requests failed", failed, "0"),
            ("requests answered 200", len(ok), f"{args.requests:,}"),
            ("served (sidecar metric)", served.group(1) if served else "?", "-"),
            ("profile still cold when all were sent", "yes" if cold else "no", "yes"),
            ("time to connect and send all (s)", all_sent - t0, "-"),
            ("first answer after gate open (ms)", min(from_gate, default=0) * 1e3, "-"),
            ("wait from gate open p50 (ms)", bl.percentile(from_gate, 50) * 1e3, "-"),
            ("wait from gate open p99 (ms)", bl.percentile(from_gate, 99) * 1e3, "-"),
            ("wait from gate open max (ms)", max(from_gate, default=0) * 1e3, "-"),
            ("wait from send p50 (ms)", bl.percentile(from_send, 50) * 1e3, "-"),
            ("wait from send p99 (ms)", bl.percentile(from_send, 99) * 1e3, "-"),
        ],
    )
    met = token_requests == 1 and failed == 0
    print(f"targets: IdP requests 1 and failures 0: {'met' if met else 'MISSED'}")
    return 0 if met else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000, help="concurrent requests")
    parser.add_argument("--delay", type=float, default=0.2, help="IdP delay in seconds")
    parser.add_argument("--timeout", type=float, default=60.0, help="sidecar wait_timeout")
    parser.add_argument(
        "--connect-concurrency", type=int, default=200, help="connects in flight at once"
    )
    parser.add_argument(
        "--no-gate", action="store_true", help="do not hold the IdP until all are queued"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
