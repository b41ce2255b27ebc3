"""Upstream clients: TLS towards the upstream, reloads, metrics, /status and what never leaks."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from yarl import URL

from sidecar.config import Config, ServerConfig, UpstreamConfig
from sidecar.logs import AccessLogger
from sidecar.token_api import make_token_app
from tests.support.builders import AUDIENCE, make_profile
from tests.support.metrics import sample
from tests.support.upstream import TestAPI, make_tls_files, runners, serve

HEADERS = {"Token-Sidecar": "1"}


def upstream(base_url: str, **overrides: Any) -> UpstreamConfig:
    fields: dict[str, Any] = {"name": "api", "profile": "api", "allow_private": True}
    return UpstreamConfig(base_url=base_url, **{**fields, **overrides})


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes]:
    async with http.get(URL(url, encoded=True), headers=HEADERS) as resp:
        return resp.status, dict(resp.headers), await resp.read()


@pytest.fixture
def tls(tmp_path: Path):
    return make_tls_files(tmp_path)


async def test_tls_unknown_ca_then_ca_file(idp, make_service, http, tls):
    """An upstream certificate from an unknown CA is 502 upstream_tls; with ca_file it is 200."""
    async with runners() as made:
        api = TestAPI(idp, AUDIENCE)
        port = await serve(api.app(), made, tls=tls.server_context())
        base = f"https://127.0.0.1:{port}"
        service = make_service(
            make_profile(idp),
            upstreams=[upstream(base), upstream(base, name="trusted", ca_file=tls.ca)],
        )
        await service.get("api")
        token = f"http://127.0.0.1:{await serve(make_token_app(service, ServerConfig()), made)}"
        status, headers, body = await get(http, f"{token}/v1/proxy/api/x")
        assert (status, headers["Token-Sidecar-Error"]) == (502, "upstream_tls"), body
        assert b"certificate" in body
        assert api.received == []  # the handshake failed: no request, no token
        status, _, _ = await get(http, f"{token}/v1/proxy/trusted/x")
        assert status == 200
        assert len(api.received) == 1


async def test_tls_client_certificate(idp, make_service, http, tls):
    """An upstream that requires a client certificate gets the configured one."""
    async with runners() as made:
        api = TestAPI(idp, AUDIENCE)
        port = await serve(api.app(), made, tls=tls.server_context(require_client=True))
        base = f"https://127.0.0.1:{port}"
        with_cert = upstream(
            base,
            name="mtls",
            ca_file=tls.ca,
            client_cert_file=tls.client_cert,
            client_key_file=tls.client_key,
        )
        service = make_service(
            make_profile(idp), upstreams=[upstream(base, ca_file=tls.ca), with_cert]
        )
        await service.get("api")
        token = f"http://127.0.0.1:{await serve(make_token_app(service, ServerConfig()), made)}"
        status, _, _ = await get(http, f"{token}/v1/proxy/mtls/x")
        assert status == 200
        status, headers, _ = await get(http, f"{token}/v1/proxy/api/x")
        assert status == 502  # no client certificate: the server ends the handshake
        assert headers["Token-Sidecar-Error"] in {"upstream_tls", "upstream_unreachable"}


async def test_unreadable_ca_file_is_upstream_tls(idp, make_service, http, tmp_path):
    """A ca_file that cannot be read: 502 upstream_tls naming the problem, nothing sent."""
    async with runners() as made:
        service = make_service(
            make_profile(idp),
            upstreams=[upstream("https://127.0.0.1:9", ca_file=tmp_path / "missing.pem")],
        )
        await service.get("api")
        token = f"http://127.0.0.1:{await serve(make_token_app(service, ServerConfig()), made)}"
        status, headers, body = await get(http, f"{token}/v1/proxy/api/x")
    assert (status, headers["Token-Sidecar-Error"]) == (502, "upstream_tls")
    assert b"cannot be used" in body


async def test_reload_swaps_base_url_and_drains_the_old_client(idp, make_service, http):
    """A reload sends new requests to the new base_url; a stream open on the old one completes."""
    async with runners() as made:
        old_api, new_api = TestAPI(idp, AUDIENCE), TestAPI(idp, AUDIENCE)
        old_port = await serve(old_api.app(), made)
        new_port = await serve(new_api.app(), made)
        service = make_service(
            make_profile(idp), upstreams=[upstream(f"http://127.0.0.1:{old_port}")]
        )
        await service.get("api")
        token = f"http://127.0.0.1:{await serve(make_token_app(service, ServerConfig()), made)}"
        old_client = service.upstreams.client("api")
        async with http.get(f"{token}/v1/proxy/api/events", headers=HEADERS) as stream:
            await old_api.sse.go.put("before")
            assert await stream.content.readline() == b"data: before\n"
            config = Config(
                profiles=service.config.profiles,
                upstreams=MappingProxyType({"api": upstream(f"http://127.0.0.1:{new_port}")}),
            )
            await service.reload(config)
            assert service.upstreams.client("api") is not old_client
            status, _, _ = await get(http, f"{token}/v1/proxy/api/x")
            assert status == 200
            assert [r.target for r in new_api.received] == ["/x"]
            await old_api.sse.go.put("after")
            assert await stream.content.readline() == b"\n"
            assert await stream.content.readline() == b"data: after\n"
            await old_api.sse.go.put("end")
            await stream.read()
        assert old_client is not None
        await asyncio.wait_for(old_client.aclose_when_idle(), 5)
        # Removing the upstream drops its series.
        await service.reload(Config(profiles=service.config.profiles))
        assert service.upstreams.client("api") is None
        exposed = generate_latest(service.metrics.registry).decode()
        assert 'upstream="api"' not in exposed


async def test_metrics_status_access_log_and_no_leaks(idp, make_service, http, log_output, leaks):
    """Counters, /status and the access log name the upstream; no token shows anywhere."""
    async with runners() as made:
        api = TestAPI(idp, AUDIENCE)
        port = await serve(api.app(), made)
        service = make_service(
            make_profile(idp), upstreams=[upstream(f"http://127.0.0.1:{port}", allow_http=True)]
        )
        await service.get("api")
        app = make_token_app(service, ServerConfig())
        access = logging.getLogger("sidecar.access")
        token_port = await serve(app, made, access_log=access, access_log_class=AccessLogger)
        token = f"http://127.0.0.1:{token_port}"
        api.rejected.add(service.refresher_for("api").token.value)  # one 401, then retried
        bodies = [
            (await get(http, f"{token}/v1/proxy/api/{path}"))[2]
            for path in ("ok?secret=q", "a/../b", "x")
        ]
        status_body = service.status()
        exposed = generate_latest(service.metrics.registry).decode()
    m = service.metrics
    assert sample(m, "token_sidecar_proxy_requests_total", upstream="api", code="2xx") == 2
    assert sample(m, "token_sidecar_proxy_requests_total", upstream="api", code="bad_request") == 1
    assert sample(m, "token_sidecar_proxy_duration_seconds_count", upstream="api") == 2
    assert sample(m, "token_sidecar_proxy_retries_total", upstream="api", result="retried") == 1
    assert sample(m, "token_sidecar_proxy_active", upstream="api") == 0
    entry = status_body["upstreams"]["api"]
    assert entry["requests"] == 3
    assert entry["active"] == 0
    assert entry["base_url"] == f"http://127.0.0.1:{port}"
    assert entry["last_error"]["code"] == "bad_request"
    logged = log_output.getvalue()
    assert '"upstream":"api"' in logged
    assert '"event":"http.access"' in logged
    assert "secret=q" not in logged  # the access log has no query string
    # The API did receive the tokens (positive control), and none is anywhere else.
    tokens = {r.token for r in api.received}
    assert tokens
    assert tokens <= set(idp.issued_tokens)
    for value in leaks.all_values():
        for where in (logged, exposed, str(status_body), *(b.decode() for b in bodies[1:2])):
            assert value not in where
