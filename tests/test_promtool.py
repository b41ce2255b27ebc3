"""The /metrics exposition passes Prometheus' own linter, promtool."""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest

from sidecar.ops_api import make_ops_app
from tests.support.builders import MCP_AUDIENCE, make_exchange_profile, make_profile
from tests.support.metrics import METRIC_NAMES
from tests.support.virtual_time import run_for

PROMTOOL = shutil.which("promtool")


@pytest.fixture
def promtool() -> str:
    if PROMTOOL is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: scripts/install-tools installs it")
        pytest.skip("promtool not installed (Debian package 'prometheus'; scripts/install-tools)")
    return PROMTOOL


async def test_metrics_pass_promtool_check(promtool, idp, make_service, clock, aiohttp_client):
    """Every metric family, after real traffic and a failure, passes promtool check metrics."""
    service = make_service(
        make_profile(idp),
        make_profile(idp, name="other", required=False),
        make_exchange_profile(idp),
    )
    await service.get("api")
    await service.exchanges.exchange("user-api", idp.issue_user_token("u", MCP_AUDIENCE))
    idp.faults.status = 503
    await run_for(clock, service, 0)
    client = await aiohttp_client(make_ops_app(service))
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.read()
    for name in METRIC_NAMES:
        assert f"# TYPE {name} ".encode() in text
    proc = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(text), 30)
    assert proc.returncode == 0, out.decode()
    assert out.decode().strip() == ""
