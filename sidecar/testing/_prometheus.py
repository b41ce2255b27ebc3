"""A real Prometheus server as a child process that scrapes sidecars, for tests and pictures.

Prometheus is an outside program (Debian's ``prometheus`` package; the
project's ``scripts/install-tools`` installs it), so waiting for it means
asking its HTTP API again: every wait here polls with pauses of
:data:`POLL` seconds and ends after a bounded number of real seconds.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from sidecar.testing._process import free_port

#: Real seconds between two questions to Prometheus' API while waiting.
POLL = 0.1


class PrometheusError(RuntimeError):
    """Prometheus answered a query with an error, or did not come up."""


def prometheus_binary() -> str | None:
    """The ``prometheus`` server on PATH, if installed."""
    return shutil.which("prometheus")


class PrometheusProcess:
    """``prometheus`` on a free loopback port, scraping ``targets`` every ``interval`` seconds.

    Args:
        workdir: holds the config file and the TSDB directory.
        targets: ``host:port`` of each ops listener to scrape (``/metrics``).
        interval: the scrape interval in seconds (tests use a fraction of one).
        binary: the ``prometheus`` executable (default: the one on PATH).
    """

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        *,
        interval: float = 0.2,
        binary: str | None = None,
    ) -> None:
        found = binary or prometheus_binary()
        if found is None:
            raise PrometheusError("prometheus is not installed (scripts/install-tools)")
        self.binary = found
        self.workdir = workdir
        self.targets = list(targets)
        self.interval = interval
        self.port = free_port()
        self.config = workdir / "prometheus.yml"
        self.proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_yaml(self) -> str:
        """One job, ``token-sidecar``, scraping every target's ``/metrics``."""
        ms = max(1, round(self.interval * 1000))
        targets = ", ".join(f'"{t}"' for t in self.targets)
        return (
            "global:\n"
            f"  scrape_interval: {ms}ms\n"
            f"  scrape_timeout: {ms}ms\n"
            f"  evaluation_interval: {ms}ms\n"
            "scrape_configs:\n"
            "  - job_name: token-sidecar\n"
            f"    static_configs: [{{targets: [{targets}]}}]\n"
        )

    async def start(self, timeout: float = 20.0) -> None:
        """Spawn Prometheus and return once its API answers ready."""
        self.config.write_text(self.config_yaml())
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.returncode is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}")
            try:
                async with self._session.get(f"{self.url}/-/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready within {timeout}s")
            await asyncio.sleep(POLL)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate ``expr`` now (``/api/v1/query``); the result's series (or sample)."""
        data = await self._api("/api/v1/query", {"query": expr})
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    async def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        """Evaluate ``expr`` over a range (``/api/v1/query_range``); one series per result."""
        params = {"query": expr, "start": str(start), "end": str(end), "step": str(step)}
        data = await self._api("/api/v1/query_range", params)
        return list(data["result"])

    async def label_values(self, label: str, match: str) -> list[str]:
        """Values of ``label`` on series matching ``match`` (Grafana's ``label_values``)."""
        values = await self._api(f"/api/v1/label/{label}/values", {"match[]": match})
        return [str(v) for v in values]

    async def wait_for(self, expr: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns series; raise ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            series = await self.query(expr)
            if series:
                return series
            if time.monotonic() > deadline:
                raise TimeoutError(f"no series for {expr!r} within {timeout}s")
            await asyncio.sleep(POLL)

    async def _api(self, path: str, params: dict[str, str]) -> Any:
        if self._session is None:
            raise PrometheusError("prometheus is not started")
        async with self._session.get(f"{self.url}{path}", params=params) as resp:
            body = orjson.loads(await resp.read())
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL after ``timeout``) and close the client."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def __repr__(self) -> str:
        pid = None if self.proc is None else self.proc.pid
        return f"PrometheusProcess(pid={pid}, port={self.port}, targets={self.targets})"
