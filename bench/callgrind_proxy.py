"""Instructions per request under callgrind: the sidecar against its aiohttp ceilings.

Wall-clock req/s on a shared machine moves with whatever else runs there;
the number of instructions a server executes per request does not. This
script runs each server under ``valgrind --tool=callgrind`` with
instrumentation off, warms it up, switches instrumentation on
(``callgrind_control -i on``) only while a fixed closed-loop load runs
(``--requests`` keep-alive GETs over ``--connections`` connections, from this
process, which is not instrumented), dumps, and reads the ``totals:`` line.

Two comparisons (``--what``):

- ``proxy``: ``GET /v1/proxy/bench/item`` through the sidecar against the
  minimal aiohttp reverse proxy of ``bench/proxy.py --role ceiling`` (adds a
  fixed ``Authorization`` header, streams the answer), both in front of the
  same upstream (``bench/proxy.py --role upstream``, not instrumented). The
  ceiling runs twice: with a fixed header as long as the sidecar's real one
  (``bench/proxy.py``'s default) and with the 24-character one of the first runs;
- ``token``: a cached ``GET /v1/token/bench`` against ``bench/ceiling.py``
  (a one-line aiohttp handler returning the same bytes);
- ``exchange``: a cache hit of ``POST /v1/exchange/user`` (the body of
  ``bench/exchange.py``: a 678-byte user token) against the same sidecar's
  cached token GET (issue 14's comparison), and the ceiling's POST of the same
  body (it reads the body, answers fixed bytes) against its GET: the share a
  POST alone costs the framework. Give ``token`` too (``--what token exchange``).

Every server runs on asyncio's own event loop (none of them imports uvloop).
Callgrind counts are deterministic up to small noise (hash seeds, timers,
the interleaving of connections): repeat with ``--repeat`` to see it.

Usage: ``.venv/bin/python bench/callgrind_proxy.py [--what proxy token exchange]
[--requests 2000] [--connections 8] [--repeat 1] [--keep DIR]``.
Needs ``valgrind`` (Debian package) on the PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
import exchange as exchange_bench  # bench/exchange.py: its profile, user token and body
from benchlib import (
    HEADERS,
    PYTHON,
    ROOT,
    print_table,
    profile_toml,
    run_load,
    start_idp,
    tools_env,
    wait_ready,
)

from sidecar.testing import SidecarProcess, free_port

BENCH = Path(__file__).resolve().parent
#: Valgrind makes start-up 10 to 50 times slower.
START_TIMEOUT = 300.0
PROXY_PATH = "/v1/proxy/bench/item"
EXCHANGE_PATH = "/v1/exchange/user"
TOKEN_PATH = "/v1/token/bench"  # noqa: S105 - a path, not a secret


@dataclass
class Measured:
    """One instrumented load: what ran, and what it cost."""

    what: str
    server: str
    requests: int
    errors: int
    instructions: int

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests if self.requests else 0.0


def valgrind_prefix(out_dir: Path, name: str) -> list[str]:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    return [
        valgrind,
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/{name}.%p",
        f"--log-file={out_dir}/{name}.%p.log",
    ]


def callgrind_control(*args: str) -> None:
    subprocess.run(  # noqa: S603 - fixed tool, our own arguments
        ["callgrind_control", *args],  # noqa: S607 - installed with valgrind
        check=True,
        capture_output=True,
        timeout=120,
    )


def dumps_of(out_dir: Path, pid: int) -> set[Path]:
    """The numbered dumps (``NAME.PID.N``) callgrind wrote for ``pid`` so far."""
    return {p for p in out_dir.glob(f"*.{pid}.*") if p.suffix[1:].isdigit()}


def totals(path: Path) -> int:
    """The ``totals:`` instruction count of one callgrind dump."""
    text = path.read_text(errors="replace")
    match = re.search(r"^totals:\s*(\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no totals in {path}")
    return int(match.group(1))


async def instrumented_load(
    *,
    what: str,
    server: str,
    pid: int,
    port: int,
    path: str,
    out_dir: Path,
    args: argparse.Namespace,
    body: bytes | None = None,
) -> Measured:
    """Warm up, then count the instructions of exactly ``args.requests`` requests."""
    load = functools.partial(
        run_load, connections=args.connections, duration=600, path=path, port=port, body=body
    )
    await load(max_requests=args.warmup)
    before = await asyncio.to_thread(dumps_of, out_dir, pid)
    await asyncio.to_thread(callgrind_control, "--instr=on", str(pid))
    result = await load(max_requests=args.requests)
    await asyncio.to_thread(callgrind_control, "--instr=off", str(pid))
    await asyncio.to_thread(callgrind_control, "--dump", str(pid))
    dumps = (await asyncio.to_thread(dumps_of, out_dir, pid)) - before
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump for {server}")
    latest = max(dumps, key=lambda p: int(p.suffix[1:]))
    count = await asyncio.to_thread(totals, latest)
    return Measured(what, server, result.requests, result.errors, count)


@contextlib.asynccontextmanager
async def child(
    argv: Sequence[str], *, prefix: Sequence[str] = (), timeout: float = START_TIMEOUT
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A Python child of this folder that prints ``ready``; terminated on exit."""
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        PYTHON,
        *argv,
        stdout=asyncio.subprocess.PIPE,
        env=tools_env(),
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None  # noqa: S101 - spawned with a pipe
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if line.strip() != b"ready":
            raise RuntimeError(f"{argv} did not start")
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 60)


@dataclass(frozen=True)
class Ceiling:
    """A ceiling server: what it is compared on, its name and how this script starts it."""

    what: str  # "proxy" or "token"
    name: str
    argv: tuple[str, ...]


def ceilings(args: argparse.Namespace, up_port: int, header: int, body_file: Path) -> list[Ceiling]:
    """The ceilings to measure: the proxy's (same-length and short header) and the token GET's."""
    proxy = (str(BENCH / "proxy.py"), "--role", "ceiling", "--upstream-port", str(up_port))
    found = []
    if "proxy" in args.what:
        found.append(Ceiling("proxy", "ceiling", (*proxy, "--fixed-length", str(header))))
        found.append(Ceiling("proxy", "ceiling, short header", (*proxy, "--fixed-length", "0")))
    token_ceiling = (str(BENCH / "ceiling.py"), "--body-file", str(body_file))
    if "token" in args.what:
        found.append(Ceiling("token", "ceiling", token_ceiling))
    if "exchange" in args.what:
        found.append(Ceiling("exchange", "ceiling", token_ceiling))
    return found


async def measure(args: argparse.Namespace, out_dir: Path) -> list[Measured]:
    results: list[Measured] = []
    up_port = free_port()
    paths = {"proxy": PROXY_PATH, "token": TOKEN_PATH, "exchange": EXCHANGE_PATH}
    bodies: dict[str, bytes] = {}
    async with (
        start_idp() as idp,
        aiohttp.ClientSession() as http,
        child([str(BENCH / "proxy.py"), "--role", "upstream", "--port", str(up_port)], timeout=30),
    ):
        upstream = (
            f'[upstreams.bench]\nbase_url = "http://127.0.0.1:{up_port}"\n'
            'profile = "bench"\nallow_http = true\nallow_private = true\n'
        )
        exchange_profile = ""
        if "exchange" in args.what:
            exchange_bench.allow_exchange(idp)
            exchange_profile = exchange_bench.exchange_toml(idp, 10_000)
        sidecar = SidecarProcess(
            out_dir,
            profile_toml(idp) + upstream + exchange_profile,
            command_prefix=valgrind_prefix(out_dir, "sidecar"),
            env=tools_env(),
            cwd=ROOT,
            timeout=START_TIMEOUT,
        )
        await sidecar.start()
        try:
            await wait_ready(http, sidecar, START_TIMEOUT)
            async with http.get(f"{sidecar.url}{TOKEN_PATH}", headers=HEADERS) as resp:
                body = await resp.read()
                token = await resp.json()
            body_file = out_dir / "token-body.json"
            await asyncio.to_thread(body_file.write_bytes, body)
            header = len(f"{token['token_type']} {token['access_token']}")
            print(f"Authorization value the sidecar sends: {header} characters", file=sys.stderr)
            if "exchange" in args.what:
                user = idp.dev.issue_user_token(
                    "alice", exchange_bench.MCP_AUDIENCE, exchange_bench.USER_TOKEN_LIFETIME
                )
                await exchange_bench.post_exchange(http, sidecar, user)  # the one miss
                bodies["exchange"] = orjson.dumps({"subject_token": user})
            async with contextlib.AsyncExitStack() as stack:
                servers: list[tuple[str, str, int, int]] = [
                    (what, "sidecar", sidecar.pid, sidecar.port) for what in args.what
                ]
                for ceiling in (
                    [] if args.sidecar_only else ceilings(args, up_port, header, body_file)
                ):
                    port = free_port()
                    proc = await stack.enter_async_context(
                        child(
                            [*ceiling.argv, "--port", str(port)],
                            prefix=valgrind_prefix(out_dir, f"{ceiling.what}-ceiling"),
                        )
                    )
                    servers.append((ceiling.what, ceiling.name, proc.pid, port))
                for _ in range(args.repeat):
                    for what, server, pid, port in servers:
                        measured = await instrumented_load(
                            what=what,
                            server=server,
                            pid=pid,
                            port=port,
                            path=paths[what],
                            out_dir=out_dir,
                            args=args,
                            body=bodies.get(what),
                        )
                        results.append(measured)
                        print(
                            f"{what:5} {server:22} {measured.requests} requests, "
                            f"{measured.errors} errors, "
                            f"{measured.per_request:,.0f} instructions/request",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            await sidecar.stop()
    return results


def report(results: list[Measured], args: argparse.Namespace) -> None:
    """Medians over the runs: instructions per request and each ceiling's share of the sidecar's."""
    rows = []
    for what in args.what:
        mine = statistics.median(
            m.per_request for m in results if m.what == what and m.server == "sidecar"
        )
        if what == "exchange":
            # The exchange hit against the token GET of the same server.
            for name in dict.fromkeys(m.server for m in results if m.what == what):
                post = statistics.median(
                    m.per_request for m in results if m.what == what and m.server == name
                )
                get = [m.per_request for m in results if m.what == "token" and m.server == name]
                runs = [m for m in results if m.what == what and m.server == name]
                rows.append(
                    [
                        what,
                        f"{name}: GET / POST",
                        len(runs),
                        round(post),
                        statistics.median(get) / post if get else "-",
                        sum(m.errors for m in runs),
                    ]
                )
            continue
        names = dict.fromkeys(m.server for m in results if m.what == what)
        for name in names:
            runs = [m for m in results if m.what == what and m.server == name]
            per_request = statistics.median(m.per_request for m in runs)
            rows.append(
                [
                    what,
                    name,
                    len(runs),
                    round(per_request),
                    "-" if name == "sidecar" else per_request / mine,
                    sum(m.errors for m in runs),
                ]
            )
    print_table(
        f"instructions per request under callgrind ({args.requests} requests, "
        f"{args.connections} keep-alive connections, after {args.warmup} warm-up requests)",
        ["path", "server", "runs", "instructions / request", "ceiling / sidecar", "errors"],
        rows,
    )
    uptime = subprocess.run(
        ["uptime"],  # noqa: S607 - procps
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(f"uptime: {uptime}  (callgrind counts do not depend on the machine's load)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--what", nargs="+", choices=("proxy", "token", "exchange"), default=["proxy", "token"]
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--sidecar-only", action="store_true", help="measure only the sidecar (quicker)"
    )
    parser.add_argument("--keep", type=Path, help="keep the callgrind dumps in this folder")
    args = parser.parse_args()
    started = time.monotonic()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        results = asyncio.run(measure(args, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="tsb-cg-", dir="/tmp") as tmp:
            results = asyncio.run(measure(args, Path(tmp)))
    report(results, args)
    print(f"took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
