"""Shared pieces of the benchmarks: loopback servers, sidecar processes, load, tables.

Every benchmark script in this folder imports this module (it is not a
package: run the scripts as ``.venv/bin/python bench/NAME.py``). Everything
here binds to 127.0.0.1 or a Unix socket in a private temporary directory,
and every process started is stopped by the context that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
from aiohttp import web

from sidecar.clock import SystemClock
from sidecar.config import Config, InlineSecret, ProfileConfig, ServerConfig
from sidecar.devidp import DevClient, DevIdP
from sidecar.service import TokenService
from sidecar.testing import SidecarProcess, clean_environ, seed_token

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
#: Optional tools (py-spy, uvloop) are pip-installed here, never into the project venv.
TOOLS = Path(tempfile.gettempdir()) / "token-sidecar-bench-tools"
AUDIENCE = "https://api.example.com/"
CLIENT_ID = "bench-client"
SECRET = "bench-secret-not-real"  # noqa: S105 - a dev IdP secret that exists only in this run
HEADERS = {"Token-Sidecar": "1"}
START_TIMEOUT = 30.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_SOCKET_NUMBERS = itertools.count()


# -- machine, processes, limits ------------------------------------------------


def machine_info() -> dict[str, str]:
    """What the figures ran on: nproc, CPU model, Python and library versions, kernel."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "affinity": ",".join(map(str, sorted(os.sched_getaffinity(0)))),
        "cpu": model,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "kernel": platform.release(),
    }


def print_machine() -> None:
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def cores() -> tuple[int | None, int | None]:
    """(server core, load core) when at least two cores are available, else (None, None)."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2 or shutil.which("taskset") is None:
        return None, None
    return allowed[-1], allowed[0]


def taskset(core: int | None) -> list[str]:
    """The ``taskset`` prefix that pins a command to ``core`` (empty when not pinning)."""
    return [] if core is None else ["taskset", "-c", str(core)]


def pin_self(core: int | None) -> None:
    """Pin this process (the Python load generator) to ``core``."""
    if core is not None:
        os.sched_setaffinity(0, {core})


def raise_nofile(wanted: int) -> int:
    """Raise the soft open-files limit toward ``wanted`` (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


#: One sample of a process: seconds since the start of the run, RSS in KiB, open descriptors.
Sample = tuple[float, int, int]


def process_sample(pid: int, start: float) -> Sample:
    """RSS and open descriptors of ``pid`` now, stamped with the seconds since ``start``."""
    return (time.monotonic() - start, rss_kib(pid), open_fds(pid))


async def sample_until(pid: int, start: float, deadline: float, every: float) -> list[Sample]:
    """:func:`process_sample` every ``every`` seconds until ``deadline`` (``time.monotonic``)."""
    samples = []
    while time.monotonic() < deadline:
        samples.append(process_sample(pid, start))
        await asyncio.sleep(min(every, max(0.0, deadline - time.monotonic())))
    return samples


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def core_busy_seconds(core: int | None) -> float:
    """Busy (non-idle, non-iowait) CPU seconds of one core (all cores when None) so far."""
    label = "cpu" if core is None else f"cpu{core}"
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts[0] == label:
            ticks = [int(v) for v in parts[1:9]]
            return (sum(ticks) - ticks[3] - ticks[4]) / _CLK_TCK
    return 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table (it pastes straight into docs/performance.md)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n### {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # noqa: PLR0124 - NaN check
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


# -- optional tools ------------------------------------------------------------


def ensure_wrk(*, install: bool = True) -> str | None:
    """The path of ``wrk``; installs the Debian package when missing and running as root."""
    found = shutil.which("wrk")
    if found or not install or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    print("wrk missing: apt-get install -y wrk", file=sys.stderr)
    install_cmd = ["apt-get", "install", "-y", "wrk"]
    if run_quiet(install_cmd, 300).returncode != 0:
        run_quiet(["apt-get", "update"], 300)
        run_quiet(install_cmd, 300)
    return shutil.which("wrk")


def ensure_pip_tool(package: str, *, install: bool = True) -> Path | None:
    """``TOOLS`` after ``pip install --target TOOLS package`` (never the project venv)."""
    marker = next(TOOLS.glob(f"{package.replace('-', '_')}-*.dist-info"), None)
    if marker is not None:
        return TOOLS
    if not install:
        return None
    print(f"installing {package} into {TOOLS}", file=sys.stderr)
    done = subprocess.run(  # noqa: S603
        [PYTHON, "-m", "pip", "install", "-q", "--target", str(TOOLS), package],
        capture_output=True,
        check=False,
        timeout=300,
    )
    return TOOLS if done.returncode == 0 else None


def tools_env(*, uvloop: bool = False) -> dict[str, str]:
    """Environment for a child that may import packages from ``TOOLS``."""
    env = clean_environ()
    if uvloop:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TOOLS), env.get("PYTHONPATH")]))
    return env


# -- the development IdP -------------------------------------------------------


@dataclass
class IdP:
    """A :class:`DevIdP` served on loopback, optionally behind a gate on the token endpoint."""

    dev: DevIdP
    runner: web.AppRunner
    gate: asyncio.Event

    @property
    def base_url(self) -> str:
        assert self.dev.base_url is not None  # noqa: S101 - set in start_idp
        return self.dev.base_url


@contextlib.asynccontextmanager
async def start_idp(lifetime: int = 3600, *, gated: bool = False) -> AsyncIterator[IdP]:
    """Serve a development IdP on 127.0.0.1; with ``gated``, token requests wait for ``gate``."""
    dev = DevIdP(audience=AUDIENCE, token_lifetime=lifetime)
    dev.add_client(
        DevClient(client_id=CLIENT_ID, client_secret=SECRET, audiences={AUDIENCE: ("read:tools",)})
    )
    gate = asyncio.Event()
    if not gated:
        gate.set()

    @web.middleware
    async def gate_token_endpoint(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/oauth/token":
            await gate.wait()
        return await handler(request)

    app = dev.make_app()
    app.middlewares.append(gate_token_endpoint)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    host, port = runner.addresses[0][:2]
    dev.set_base_url(f"http://{host}:{port}")
    try:
        yield IdP(dev, runner, gate)
    finally:
        gate.set()
        dev.release_hang()
        await runner.cleanup()


def profile_toml(idp: IdP, name: str = "bench", **extra: str) -> str:
    """One ``[profiles.NAME]`` table against ``idp``; ``extra`` values are TOML literals."""
    lines = [
        f"[profiles.{name}]",
        f'token_url = "{idp.base_url}/oauth/token"',
        f'issuer = "{idp.dev.issuer}"',
        f'jwks_url = "{idp.base_url}/.well-known/jwks.json"',
        f'client_id = "{CLIENT_ID}"',
        f'client_secret = "{SECRET}"',
        f'audience = "{AUDIENCE}"',
        'scope = "read:tools"',
        *(f"{k} = {v}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"


# -- the sidecar as a real process --------------------------------------------


def sidecar_process(
    wd: Path,
    profiles: str,
    *,
    core: int | None = None,
    socket: bool = False,
    python_args: Sequence[str] = ("-m", "sidecar"),
    env: dict[str, str] | None = None,
) -> SidecarProcess:
    """A sidecar child for a benchmark: pinned to ``core``, run from the repository root.

    ``python_args`` replaces ``-m sidecar`` (for example ``-c`` code that
    installs uvloop first, or ``-m cProfile -o FILE -m sidecar``); ``socket``
    adds a Unix socket in ``wd``.
    """
    return SidecarProcess(
        wd,
        profiles,
        socket_path=wd / f"s{next(_SOCKET_NUMBERS)}.sock" if socket else None,
        command_prefix=taskset(core),
        python_args=python_args,
        env=env if env is not None else tools_env(),
        cwd=ROOT,
        timeout=START_TIMEOUT,
    )


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A short private directory (Unix socket paths are limited to about 100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="tsb-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def wait_ready(http: aiohttp.ClientSession, sidecar: SidecarProcess, timeout: float) -> float:
    """Poll ``/readyz`` every 5 ms until 200; returns seconds since the process was spawned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{sidecar.ops}/readyz") as resp:
                if resp.status == 200:
                    return time.monotonic() - sidecar.spawned_at
        await asyncio.sleep(0.005)
    raise TimeoutError("sidecar not ready")


# -- a small HTTP/1.1 keep-alive load generator --------------------------------


@dataclass
class LoadResult:
    """What one load run saw: counts, latencies in seconds, wall time."""

    requests: int = 0
    errors: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


def request_bytes(path: str, host: str = "127.0.0.1") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nToken-Sidecar: 1\r\n\r\n".encode()


def post_bytes(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    """A guarded ``POST path`` with a JSON ``body``, as one HTTP/1.1 keep-alive request."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nToken-Sidecar: 1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending the same request, one at a time, until told to stop."""

    def __init__(
        self, request: bytes, result: LoadResult, deadline: float, budget: list[int]
    ) -> None:
        self.request = request
        self.result = result
        self.deadline = deadline
        self.budget = budget
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None  # noqa: S101
        if time.perf_counter() >= self.deadline or self.budget[0] <= 0:
            self.transport.close()
            return
        self.budget[0] -= 1
        self.sent_at = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            length = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            now = time.perf_counter()
            status = int(head[9:12])
            self.result.requests += 1
            self.result.statuses[status] += 1
            self.result.latencies.append(now - self.sent_at)
            if status != 200:
                self.result.errors += 1
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.result.errors += 1
        if not self.done.done():
            self.done.set_result(None)


async def run_load(
    *,
    connections: int,
    duration: float,
    path: str,
    port: int | None = None,
    unix: Path | None = None,
    max_requests: int = 10_000_000,
    body: bytes | None = None,
) -> LoadResult:
    """Closed-loop load: ``connections`` keep-alive connections, each one request at a time.

    Each request is ``GET path``, or with ``body`` a ``POST path`` carrying it
    (JSON). Stops at ``duration`` seconds or ``max_requests`` requests,
    whichever comes first.
    """
    loop = asyncio.get_running_loop()
    result = LoadResult()
    budget = [max_requests]
    host = "localhost" if unix is not None else "127.0.0.1"
    request = request_bytes(path, host) if body is None else post_bytes(path, body, host)
    start = time.perf_counter()
    deadline = start + duration
    conns: list[_Connection] = []

    def factory() -> _Connection:
        conn = _Connection(request, result, deadline, budget)
        conns.append(conn)
        return conn

    for _ in range(connections):
        if unix is not None:
            await loop.create_unix_connection(factory, str(unix))
        else:
            await loop.create_connection(factory, "127.0.0.1", port)
    await asyncio.wait_for(asyncio.gather(*(c.done for c in conns)), duration + 30)
    result.elapsed = time.perf_counter() - start
    return result


async def fetch_json(
    http: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with http.get(url, **kwargs) as resp:
        return resp.status, await resp.json(content_type=None)


def run_quiet(cmd: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        list(cmd), capture_output=True, text=True, check=False, timeout=timeout
    )


def seeded_service(session: aiohttp.ClientSession) -> TokenService:
    """A token service with one profile ``bench`` holding a cached 1-hour token (no IdP)."""
    profile = ProfileConfig(
        name="bench",
        token_url="http://127.0.0.1:1/oauth/token",  # noqa: S106 - a URL, not a secret
        client_id=InlineSecret("x"),
    )
    config = Config(profiles=MappingProxyType({"bench": profile}), server=ServerConfig())
    service = TokenService(config, session, rng=random.Random(1))
    seed_token(
        service.refreshers["bench"],
        "eyJ" + "x" * 700,
        lifetime=3600,
        clock=SystemClock(),
        refresh_in=3000,
        scope="read:tools",
    )
    return service
