"""A ``token-sidecar serve`` subprocess for end-to-end tests, awaited through its log events."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import orjson

START_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sidecar:
    """A ``token-sidecar serve`` subprocess, with its log events and addresses."""

    def __init__(
        self,
        config: Path,
        *,
        socket_path: Path | None = None,
        server_extra: str = "",
        nofile: int | None = None,
    ) -> None:
        self.config = config
        self.nofile = nofile
        self.server_extra = server_extra
        self.port = free_port()
        self.ops_port = free_port()
        self.socket_path = socket_path
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self.stderr = bytearray()
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    def server_toml(self) -> str:
        lines = [
            "[server]",
            f'listen = "127.0.0.1:{self.port}"',
            f'ops_listen = "127.0.0.1:{self.ops_port}"',
        ]
        if self.socket_path is not None:
            lines.append(f'socket = "{self.socket_path}"')
        if self.server_extra:
            lines.append(self.server_extra)
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops(self) -> str:
        return f"http://127.0.0.1:{self.ops_port}"

    async def start(self, *, wait_for: str = "sidecar.started") -> None:
        await self.spawn()
        await self.wait_event(wait_for)

    async def spawn(self) -> None:
        """Start the process and its log reader, without waiting for any event."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_SIDECAR_")}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidecar",
            "serve",
            "--config",
            str(self.config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**env, "PYTHONUNBUFFERED": "1"},
            preexec_fn=self._limit_descriptors if self.nofile is not None else None,
        )
        self._reader = asyncio.create_task(self._read_stderr())

    def _limit_descriptors(self) -> None:
        """In the child: the soft descriptor limit a container runtime would give."""
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, hard))

    def rss_bytes(self) -> int:
        """The process's resident memory now, from /proc."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(li for li in status.splitlines() if li.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    async def _read_stderr(self) -> None:
        assert self.proc is not None
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr.extend(line)
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                event = {"event": "<unparsed>", "line": line.decode(errors="replace")}
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    def count(self, name: str) -> int:
        return sum(1 for e in self.events if e.get("event") == name)

    async def wait_event(self, name: str, count: int = 1) -> dict[str, Any]:
        """Wait until the daemon logged ``name`` ``count`` times (bounded)."""

        def seen() -> bool:
            exited = self._reader is not None and self._reader.done()
            return self.count(name) >= count or exited

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(seen), START_TIMEOUT)
        matching = [e for e in self.events if e.get("event") == name]
        assert len(matching) >= count, f"no {name!r}; stderr: {self.stderr.decode()[-2000:]}"
        return matching[-1]

    async def kill(self) -> None:
        """Teardown: SIGKILL the process if it still runs, and drain its stderr reader."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def stop(self, sig: int | None = signal.SIGTERM) -> int:
        """Send ``sig`` (None: it was sent already) and wait for the exit code."""
        assert self.proc is not None
        if sig is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 10)
        if self._reader is not None:
            await self._reader
        return code
