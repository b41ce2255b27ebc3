"""The ops API: liveness with the loop watchdog, readiness, metrics and status."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS

from sidecar._version import __version__
from sidecar.config import InlineSecret
from sidecar.ops_api import LoopWatchdog, make_ops_app
from tests.support.builders import make_profile
from tests.support.metrics import METRIC_NAMES
from tests.support.virtual_time import idle

PROFILE_STATUS_KEYS = {
    "state",
    "expires_at",
    "next_refresh_at",
    "last_success_at",
    "last_error",
    "consecutive_failures",
    "circuit",
    "fingerprint",
}


@pytest.fixture
def ops(idp, make_service, aiohttp_client):
    """Start the ops API for a service built from ``profiles`` (default: a warm ``api``)."""

    async def start(*profiles, watchdog=None, warm=True):
        service = make_service(*(profiles or (make_profile(idp),)))
        if warm:
            await idle(service)
        client = await aiohttp_client(make_ops_app(service, watchdog=watchdog))
        return service, client

    return start


# -- /livez ------------------------------------------------------------------


async def test_livez_ok(ops):
    """A turning loop and running refresh tasks answer 200 alive."""
    _service, client = await ops()
    resp = await client.get("/livez")
    assert resp.status == 200
    assert await resp.json() == {"alive": True}


async def test_livez_ignores_idp_outage(ops, idp):
    """An IdP outage (no token at all) does not make the sidecar unalive."""
    idp.faults.status = 503
    _service, client = await ops()
    resp = await client.get("/livez")
    assert resp.status == 200


async def test_livez_fails_when_refresh_task_died(ops):
    """A stopped refresh task makes /livez answer 503 naming the profile."""
    service, client = await ops()
    await service.aclose()
    resp = await client.get("/livez")
    assert resp.status == 503
    assert await resp.json() == {"alive": False, "reason": "refresh task not running: api"}


async def test_livez_fails_when_watchdog_is_stale(ops):
    """A watchdog that has not woken for longer than interval + max_lag fails /livez."""
    watchdog = LoopWatchdog()
    _service, client = await ops(watchdog=watchdog)
    watchdog._last_beat -= watchdog.interval + watchdog.max_lag + 1  # backdate, do not wait
    resp = await client.get("/livez")
    assert resp.status == 503
    assert await resp.json() == {"alive": False, "reason": "loop watchdog is stale"}


async def test_watchdog_measures_loop_lag():
    """Blocking the loop for longer than interval + max_lag shows as lag."""
    watchdog = LoopWatchdog(interval=0.02, max_lag=0.02)
    watchdog.start()
    try:
        await asyncio.sleep(0)  # let the watchdog start its first sleep
        assert watchdog.problem() is None
        time.sleep(0.07)  # noqa: ASYNC251 - blocking the loop is the point of this test
        await asyncio.sleep(0.005)  # the overdue watchdog wakes before this timer
        assert watchdog.lag > 0.02
        assert (watchdog.problem() or "").startswith("event loop lag")
    finally:
        await watchdog.aclose()
    assert watchdog.problem() == "loop watchdog is not running"
    assert not watchdog.running


async def test_watchdog_lifecycle_is_idempotent():
    """Starting twice keeps one task and closing twice is harmless."""
    watchdog = LoopWatchdog(interval=0.01)
    assert watchdog.problem() == "loop watchdog is not running"
    watchdog.start()
    task = watchdog._task
    watchdog.start()
    assert watchdog._task is task
    assert watchdog.running
    await watchdog.aclose()
    await watchdog.aclose()
    assert task is not None
    assert task.done()
    assert "running=False" in repr(watchdog)


async def test_ops_app_stops_its_watchdog(idp, make_service, aiohttp_client):
    """The ops app starts the watchdog on startup and stops it on cleanup."""
    watchdog = LoopWatchdog()
    client = await aiohttp_client(make_ops_app(make_service(make_profile(idp)), watchdog=watchdog))
    assert watchdog.running
    await client.close()
    assert not watchdog.running


# -- /readyz -----------------------------------------------------------------


async def test_readyz_before_and_after_first_token(ops, idp):
    """Readiness is 503 warming until the first token arrives, then 200 ok."""
    idp.faults.hang = True
    service, client = await ops(warm=False)
    await asyncio.wait_for(idp.faults.wait_hung(), 5)
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {"ready": False, "profiles": {"api": "warming"}}
    idp.release_hang()
    await idle(service)
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"ready": True, "profiles": {"api": "ok"}}


async def test_readyz_ignores_optional_profile(ops, idp):
    """A failing profile that is not required shows its reason but does not block readiness."""
    _service, client = await ops(
        make_profile(idp),
        make_profile(idp, name="extra", required=False, client_secret=InlineSecret("x")),
    )
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {
        "ready": True,
        "profiles": {"api": "ok", "extra": "misconfigured"},
    }


async def test_readyz_unavailable_while_idp_down(ops, idp):
    """A required profile without a token during an outage makes readiness 503."""
    idp.faults.status = 503
    _service, client = await ops()
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {"ready": False, "profiles": {"api": "unavailable"}}


# -- /metrics ----------------------------------------------------------------


async def test_metrics_prometheus_text(ops):
    """/metrics serves the Prometheus text format with every documented metric name."""
    _service, client = await ops()
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = await resp.text()
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text, name
    assert "token_sidecar_ready 1.0" in text
    assert f'token_sidecar_build_info{{version="{__version__}"}} 1.0' in text
    assert 'token_sidecar_refresh_total{profile="api",result="success"} 1.0' in text


async def test_metrics_openmetrics_when_asked(ops):
    """/metrics answers OpenMetrics when the scraper asks for it."""
    _service, client = await ops()
    resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == OPENMETRICS
    text = await resp.text()
    assert text.endswith("# EOF\n")
    assert "token_sidecar_token_requests" in text


async def test_metrics_ready_gauge_tracks_readiness(ops, idp):
    """The ready gauge is current at scrape time, without a /readyz call."""
    idp.faults.status = 503
    _service, client = await ops()
    assert "token_sidecar_ready 0.0" in await (await client.get("/metrics")).text()


# -- /status and the absence of tokens -------------------------------------------


async def test_status_shape_without_token_value(ops, idp, leaks):
    """/status follows DESIGN.md and holds a fingerprint but never a token or secret."""
    service, client = await ops()
    resp = await client.get("/status")
    assert resp.status == 200
    text = await resp.text()
    assert not [value for value in leaks.all_values() if value in text]
    body = await resp.json()
    assert set(body) == {"version", "ready", "cache", "profiles", "upstreams"}
    assert body["upstreams"] == {}
    assert body["version"] == __version__
    assert body["ready"] is True
    assert body["cache"] == {"backend": "memory", "state": "ok"}
    api = body["profiles"]["api"]
    assert set(api) == PROFILE_STATUS_KEYS
    assert api["state"] == "ready"
    assert api["circuit"] == "closed"
    assert api["last_error"] is None
    assert api["consecutive_failures"] == 0
    token = service.refresher_for("api").token
    assert api["fingerprint"] == token.fingerprint
    assert api["expires_at"] == int(token.expires_at_wall)
    assert isinstance(api["next_refresh_at"], int)


async def test_status_shows_idp_error(ops, idp):
    """A rejected profile shows misconfigured with the IdP's error in last_error."""
    _service, client = await ops(make_profile(idp, client_secret=InlineSecret("x")))
    api = (await (await client.get("/status")).json())["profiles"]["api"]
    assert api["state"] == "misconfigured"
    assert api["last_error"] == {
        "kind": "rejected",
        "error": "access_denied",
        "description": "Unauthorized",
    }
    assert api["fingerprint"] is None


@pytest.mark.parametrize("path", ["/v1/token/api", "/token/api"])
async def test_ops_app_serves_no_token(ops, idp, path):
    """The ops port has no token endpoint."""
    _service, client = await ops()
    resp = await client.get(path, headers={"Token-Sidecar": "1"})
    assert resp.status == 404
    assert idp.issued_tokens[-1] not in await resp.text()
