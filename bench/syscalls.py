"""System calls per cached token GET: the sidecar against the aiohttp ceiling.

Instructions per request (``callgrind_proxy.py``) count only what runs in
user space. This counts what each server asks of the kernel: each process is
traced with ``strace -c -f`` while exactly ``--requests`` keep-alive GETs of
``/v1/token/bench`` over ``--connections`` connections run (after a warm-up
of 1,000), and the calls of each kind are divided by the requests. Counts do
not depend on the machine's load. Needs ``strace`` (Debian package).

Usage: ``.venv/bin/python bench/syscalls.py [--requests 5000] [--connections 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

from sidecar.testing import free_port

BENCH = Path(__file__).resolve().parent
PATH = "/v1/token/bench"
#: One row of ``strace -c``: % time, seconds, usecs/call, calls, [errors,] name.
ROW = re.compile(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$")


async def traced_load(pid: int, port: int, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """System calls of ``pid`` per request, by name, over a fixed load."""
    tracer = await asyncio.create_subprocess_exec(
        "strace", "-c", "-f", "-o", str(out), "-p", str(pid), stderr=subprocess.DEVNULL
    )
    await asyncio.sleep(0.5)  # strace attaches
    result = await bl.run_load(
        connections=args.connections, duration=600, path=PATH, port=port, max_requests=args.requests
    )
    tracer.send_signal(signal.SIGINT)
    await asyncio.wait_for(tracer.wait(), 60)
    counts = {}
    for line in (await asyncio.to_thread(out.read_text)).splitlines():
        match = ROW.match(line)
        if match and match.group(2) != "total":  # strace's own sum row
            counts[match.group(2)] = int(match.group(1)) / max(result.requests, 1)
    return counts


async def measure(args: argparse.Namespace, wd: Path) -> None:
    async with bl.start_idp() as idp, aiohttp.ClientSession() as http:
        sidecar = bl.sidecar_process(wd, bl.profile_toml(idp))
        await sidecar.start()
        try:
            await bl.wait_ready(http, sidecar, bl.START_TIMEOUT)
            async with http.get(f"{sidecar.url}{PATH}", headers=bl.HEADERS) as resp:
                body = await resp.read()
            (wd / "body.json").write_bytes(body)
            port = free_port()
            ceiling = await asyncio.create_subprocess_exec(
                bl.PYTHON,
                str(BENCH / "ceiling.py"),
                "--port",
                str(port),
                "--body-file",
                str(wd / "body.json"),
                stdout=asyncio.subprocess.PIPE,
            )
            try:
                assert ceiling.stdout is not None  # noqa: S101 - spawned with a pipe
                await ceiling.stdout.readline()  # "ready"
                rows = {}
                for name, pid, p in (
                    ("sidecar", sidecar.pid, sidecar.port),
                    ("ceiling", ceiling.pid, port),
                ):
                    await bl.run_load(
                        connections=args.connections,
                        duration=60,
                        path=PATH,
                        port=p,
                        max_requests=1000,
                    )
                    rows[name] = await traced_load(pid, p, wd / f"strace-{name}.txt", args)
            finally:
                ceiling.terminate()
                await ceiling.wait()
            await sidecar.stop()
        finally:
            await sidecar.kill()
    names = sorted({n for r in rows.values() for n in r}, key=lambda n: -rows["sidecar"].get(n, 0))
    bl.print_table(
        f"system calls per token GET ({args.requests} requests, {args.connections} connections)",
        ["call", "sidecar", "ceiling"],
        [
            ["total", sum(rows["sidecar"].values()), sum(rows["ceiling"].values())],
            *([n, rows["sidecar"].get(n, 0.0), rows["ceiling"].get(n, 0.0)] for n in names),
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    if shutil.which("strace") is None:
        raise SystemExit("strace is not installed (apt-get install strace)")
    with tempfile.TemporaryDirectory(prefix="tsb-strace-") as tmp:
        asyncio.run(measure(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
