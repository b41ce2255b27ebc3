"""A ``token-sidecar serve`` child process for tests and benchmarks, awaited through its log.

The child writes one JSON log event per line to stderr; a reader task keeps
them in order, and waits re-check their condition at every event, so nothing
here ever sleeps to wait for the child.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

#: Real seconds a :class:`SidecarProcess` waits for a log event by default.
START_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_environ() -> dict[str, str]:
    """This process's environment without ``TOKEN_SIDECAR_*`` variables, unbuffered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_SIDECAR_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LogEvent(dict[str, Any]):
    """One JSON log line of a :class:`SidecarProcess`, and when it was read."""

    def __init__(self, fields: Mapping[str, Any], received_at: float) -> None:
        super().__init__(fields)
        #: ``time.monotonic()`` when the line was read from the child's stderr.
        self.received_at = received_at


class SidecarProcess:
    """A ``python -m sidecar serve --config FILE`` child, awaited through its JSON log events.

    The config file is ``workdir/sidecar-PORT.toml``: a ``[server]`` table on
    two free loopback ports followed by ``profiles``. Every line the child
    writes to stderr lands in :attr:`events`, in order. Waits are bounded by
    real ``timeout`` seconds and end early when the process exits. Processes
    that share one ``changed`` condition wake each other's :meth:`wait_until`,
    so a test can wait for a condition across several of them.

    Args:
        workdir: where the config file is written.
        profiles: the TOML after the ``[server]`` table (profiles, ``[cache]``).
        socket_path: also serve on this Unix socket (keep the path short).
        server_extra: more lines for the ``[server]`` table.
        command_prefix: arguments before the interpreter (``taskset -c 3``).
        python_args: how the interpreter runs the sidecar (``-m cProfile -o F -m sidecar``).
        env: the child's environment (default: :func:`clean_environ`).
        cwd: the child's working directory (default: this one's).
        timeout: the default bound of every wait, in real seconds.
        changed: notified on every event; pass one to several processes to share it.
        tcp: serve the token API over TCP too (False: ``listen = ""``, the socket only).
        nofile: the child's soft descriptor limit (what a container runtime gives).
    """

    def __init__(
        self,
        workdir: Path,
        profiles: str,
        *,
        socket_path: Path | None = None,
        server_extra: str = "",
        command_prefix: Sequence[str] = (),
        python_args: Sequence[str] = ("-m", "sidecar"),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = START_TIMEOUT,
        changed: asyncio.Condition | None = None,
        tcp: bool = True,
        nofile: int | None = None,
    ) -> None:
        self.profiles = profiles
        self.socket_path = socket_path
        self.server_extra = server_extra
        self.command_prefix = tuple(command_prefix)
        self.python_args = tuple(python_args)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.timeout = timeout
        self.tcp = tcp
        self.nofile = nofile
        self.port = free_port()
        self.ops_port = free_port()
        self.config = workdir / f"sidecar-{self.port}.toml"
        self.proc: asyncio.subprocess.Process | None = None
        #: ``time.monotonic()`` when the child was spawned.
        self.spawned_at = 0.0
        self.events: list[LogEvent] = []
        self.stderr = bytearray()
        self._changed = changed if changed is not None else asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._stderr_closed = False

    @property
    def url(self) -> str:
        """The token API over TCP."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops(self) -> str:
        """The ops listener (``/livez``, ``/readyz``, ``/metrics``, ``/status``)."""
        return f"http://127.0.0.1:{self.ops_port}"

    @property
    def pid(self) -> int:
        """The child's process id; raises ``RuntimeError`` before :meth:`start`."""
        return self._started().pid

    def server_toml(self) -> str:
        """The ``[server]`` table of the config file."""
        lines = [
            "[server]",
            f'listen = "127.0.0.1:{self.port}"' if self.tcp else 'listen = ""',
            f'ops_listen = "127.0.0.1:{self.ops_port}"',
        ]
        if self.socket_path is not None:
            lines.append(f'socket = "{self.socket_path}"')
        if self.server_extra:
            lines.append(self.server_extra)
        return "\n".join(lines) + "\n"

    def write_config(self, profiles: str | None = None) -> None:
        """Write the config file, with new ``profiles`` if given (then SIGHUP to reload)."""
        if profiles is not None:
            self.profiles = profiles
        self.config.write_text(self.server_toml() + self.profiles)

    async def start(self, *, wait_for: str | None = "sidecar.started") -> None:
        """Write the config, spawn the child and wait for ``wait_for`` (None: do not wait)."""
        self.write_config()
        self.spawned_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *self.command_prefix,
            sys.executable,
            *self.python_args,
            "serve",
            "--config",
            str(self.config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env if self.env is not None else clean_environ(),
            cwd=self.cwd,
            preexec_fn=self._limit_descriptors if self.nofile is not None else None,
        )
        self._reader = asyncio.create_task(self._read_stderr(self.proc))
        if wait_for is not None:
            await self.wait_event(wait_for)

    def _limit_descriptors(self) -> None:
        """In the child, before exec: the soft descriptor limit a container runtime would give."""
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile or hard, hard))

    def rss_bytes(self) -> int:
        """The child's resident memory now, from /proc."""
        status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        line = next(li for li in status.splitlines() if li.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child."""
        self._started().send_signal(sig)

    def count(self, name: str) -> int:
        """How many ``name`` events the child logged so far."""
        return sum(1 for e in self.events if e.get("event") == name)

    def named(self, name: str) -> list[LogEvent]:
        """The ``name`` events logged so far, oldest first."""
        return [e for e in self.events if e.get("event") == name]

    @property
    def exited(self) -> bool:
        """Whether the child's stderr is closed (it exited, or is about to)."""
        return self._stderr_closed

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Return once ``predicate()`` holds, checking it at every logged event.

        Raises ``TimeoutError`` after ``timeout`` real seconds (default: the
        process's ``timeout``).
        """
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def wait_event(self, name: str, count: int = 1, timeout: float | None = None) -> LogEvent:
        """Wait until the child logged ``name`` ``count`` times, and return the last one.

        Raises ``RuntimeError`` at once if the child exits first, and
        ``TimeoutError`` after ``timeout`` real seconds.
        """
        try:
            await self.wait_until(lambda: self.count(name) >= count or self.exited, timeout)
        except TimeoutError:
            raise TimeoutError(f"no {name!r} event #{count}; {self._tail()}") from None
        matching = self.named(name)
        if len(matching) < count:
            raise RuntimeError(f"the sidecar exited before {name!r} event #{count}; {self._tail()}")
        return matching[count - 1]

    async def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send ``sig`` (None: it was sent already) and return the exit code.

        SIGKILLs the child if it has not exited after ``timeout`` real seconds;
        returns ``None`` if it was never started.
        """
        if self.proc is None:
            return None
        if sig is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        """Teardown: SIGKILL the child if it still runs, and wait for its log reader."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None  # noqa: S101 - spawned with stderr=PIPE
        async for line in proc.stderr:
            self.stderr.extend(line)
            try:
                fields = orjson.loads(line)
            except orjson.JSONDecodeError:
                fields = None
            if not isinstance(fields, dict):
                fields = {"event": "<unparsed>", "line": line.decode(errors="replace")}
            async with self._changed:
                self.events.append(LogEvent(fields, time.monotonic()))
                self._changed.notify_all()
        async with self._changed:
            # Set before the last wake-up: the reader task is not done yet while
            # waiters re-check their predicate, so ``exited`` must not ask it.
            self._stderr_closed = True
            self._changed.notify_all()

    def _started(self) -> asyncio.subprocess.Process:
        if self.proc is None:
            raise RuntimeError("the sidecar process is not started")
        return self.proc

    def _tail(self) -> str:
        return "stderr tail:\n" + self.stderr.decode(errors="replace")[-2000:]

    def __repr__(self) -> str:
        pid = None if self.proc is None else self.proc.pid
        return f"SidecarProcess(pid={pid}, port={self.port}, events={len(self.events)})"
