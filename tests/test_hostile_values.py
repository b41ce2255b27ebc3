"""Hostile values from the IdP and hostile URLs: bounded lifetimes, a strict JWKS fetch, redaction.

Red-team findings RT-10 (an ``expires_in`` of 2^64 made every answer a 500),
RT-15 (the JWKS fetch followed redirects and read unbounded bodies) and RT-07
(credentials in ``token_url`` reached the ``circuit.*`` log events).
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
from typing import Any

import orjson
import pytest
from aiohttp import web

from sidecar.config import BreakerConfig, ServerConfig, url_view
from sidecar.errors import TokenUnavailableError
from sidecar.logs import JSONFormatter
from sidecar.ops_api import make_ops_app
from sidecar.token_api import make_token_app
from sidecar.verify import MAX_JWKS_BODY
from tests.support.builders import make_profile
from tests.support.virtual_time import idle, run_for

HEADERS = {"Token-Sidecar": "1"}
YEAR = 365 * 86400


async def refused(service, clock, name: str = "api") -> None:
    """``get`` ends in TokenUnavailableError once the profile's wait_timeout passed."""
    task = asyncio.ensure_future(service.get(name))
    await idle(service)
    if not task.done():
        await run_for(clock, service, 1)
    with pytest.raises(TokenUnavailableError):
        await task


def events(log_output: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [orjson.loads(line) for line in log_output.getvalue().splitlines() if line]
    return [e for e in lines if e["event"] == name]


# -- RT-10: expires_in and exp are bounded -----------------------------------


@pytest.mark.parametrize(
    ("lifetime", "as_string", "opaque"),
    [
        (2**64, False, True),
        (1e308, False, True),
        (float("inf"), True, True),  # "inf" as a string
        (2 * YEAR, False, False),  # a signed JWT whose exp and expires_in say two years
    ],
)
async def test_absurd_lifetime_is_a_classified_failure(
    idp, make_service, aiohttp_client, clock, log_output, lifetime, as_string, opaque
):
    """An expires_in above a year or not finite is a transient error: JSON 503s, no 500."""
    idp.token_lifetime = lifetime
    idp.faults.expires_in_as_string = as_string
    idp.faults.opaque = opaque
    verify = "none" if opaque else "jwks"
    service = make_service(make_profile(idp, verify=verify, wait_timeout=0.5))
    token_api = await aiohttp_client(make_token_app(service, ServerConfig()))
    ops = await aiohttp_client(make_ops_app(service))
    task = asyncio.ensure_future(token_api.get("/v1/token/api", headers=HEADERS))
    await idle(service)
    if not task.done():
        await run_for(clock, service, 1)
    resp = await task
    assert resp.status == 503, await resp.text()
    assert (await resp.json())["error"] == "token_unavailable"
    status = await ops.get("/status")
    assert status.status == 200
    last_error = (await status.json())["profiles"]["api"]["last_error"]
    assert last_error["kind"] == "error"
    assert "one year" in last_error["description"] or "positive" in last_error["description"]
    failed = events(log_output, "refresh.failed")
    assert failed
    assert failed[0]["kind"] == "error"
    assert "--- Logging error ---" not in log_output.getvalue()


async def test_jwt_exp_beyond_a_year_without_expires_in_is_refused(idp, make_service, clock):
    """With no expires_in, a JWT exp two years out is refused too; 364 days is a token."""
    idp.faults.omit_expires_in = True
    idp.token_lifetime = 2 * YEAR
    service = make_service(make_profile(idp, wait_timeout=0.5))
    await refused(service, clock)
    assert service.refresher_for("api").status()["last_error"]["kind"] == "error"
    idp.token_lifetime = YEAR - 86400
    good = make_service(make_profile(idp, name="good"))
    served = await good.get("good")
    assert served.token.value in idp.issued_tokens


async def test_a_year_long_token_is_served(idp, make_service, aiohttp_client):
    """Positive control: a lifetime just under one year is served, and answers are JSON."""
    idp.token_lifetime = YEAR - 1
    idp.faults.opaque = True
    service = make_service(make_profile(idp, verify="none"))
    token_api = await aiohttp_client(make_token_app(service, ServerConfig()))
    resp = await token_api.get("/v1/token/api", headers=HEADERS)
    assert resp.status == 200
    assert (await resp.json())["expires_in"] == YEAR - 1


def test_json_log_line_survives_an_integer_beyond_64_bits():
    """The JSON formatter writes an integer orjson refuses as a string, not a broken line."""
    record = logging.LogRecord("sidecar.x", logging.INFO, "f", 1, "event.x", (), None)
    record.big = 2**70
    record.nested = {"n": [-(2**65), 1]}
    line = orjson.loads(JSONFormatter().format(record))
    assert line["big"] == str(2**70)
    assert line["nested"] == {"n": [str(-(2**65)), 1]}


# -- RT-15: the JWKS fetch follows no redirect and reads at most 1 MiB --------


@pytest.fixture
async def jwks_server(idp, aiohttp_server):
    """A loopback server: /redirect (302 to the IdP's JWKS), /huge (2 MiB), /padded (< 1 MiB)."""
    real = f"{idp.base_url}/.well-known/jwks.json"

    async def redirect(_request: web.Request) -> web.Response:
        raise web.HTTPFound(real)

    async def huge(_request: web.Request) -> web.Response:
        return web.Response(body=b" " * (2 * MAX_JWKS_BODY), content_type="application/json")

    async def padded(_request: web.Request) -> web.Response:
        document = idp.jwks()
        document["padding"] = "x" * (MAX_JWKS_BODY - 64 * 1024)
        return web.json_response(document)

    app = web.Application()
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/huge", huge)
    app.router.add_get("/padded", padded)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


@pytest.mark.parametrize(("path", "said"), [("/redirect", "302"), ("/huge", "1 MiB")])
async def test_jwks_redirect_or_huge_body_is_a_failed_fetch(
    idp, make_service, clock, jwks_server, path, said
):
    """A redirecting or oversized JWKS yields no token; a padded one under 1 MiB does."""
    service = make_service(
        make_profile(idp, jwks_url=jwks_server + path, verify="jwks", wait_timeout=0.5),
        make_profile(idp, name="padded", jwks_url=jwks_server + "/padded", verify="jwks"),
    )
    await refused(service, clock)
    last_error = service.refresher_for("api").status()["last_error"]
    assert last_error["kind"] == "error"
    assert said in last_error["description"]
    served = await service.get("padded")
    assert served.token.value in idp.issued_tokens


# -- RT-07: URLs are shown without password or query --------------------------


def test_url_view_masks_password_and_query():
    """One redaction for every URL shown; a URL without either is unchanged."""
    cases = {
        "http://gw-user:URL-PASSWORD@127.0.0.1:1/oauth/token?api_key=KEY#frag": (
            "http://gw-user:[redacted]@127.0.0.1:1/oauth/token?[redacted]"
        ),
        "redis://127.0.0.1:6379/0?password=PW": "redis://127.0.0.1:6379/0?[redacted]",
        "redis://:PW@redis:6379/0": "redis://:[redacted]@redis:6379/0",
        "unix:///run/redis.sock?db=1": "unix:///run/redis.sock?[redacted]",
        "https://idp.example/oauth/token": "https://idp.example/oauth/token",
    }
    for url, shown in cases.items():
        assert url_view(url) == shown


async def test_circuit_events_name_the_endpoint_without_credentials(
    idp, make_service, clock, log_output
):
    """circuit.opened names the token endpoint with password and query masked."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connections are refused
    url = f"http://gw-user:URL-PASSWORD-XYZ@127.0.0.1:{port}/oauth/token?api_key=URL-QUERY-789"
    service = make_service(
        make_profile(
            idp, token_url=url, verify="none", breaker=BreakerConfig(failures=1, reset=5.0)
        ),
        make_profile(idp, name="plain", breaker=BreakerConfig(failures=1, reset=5.0)),
    )
    idp.faults.status = 503
    await run_for(clock, service, 1)
    opened = {e["endpoint"]: e for e in events(log_output, "circuit.opened")}
    assert set(opened) == {
        f"http://gw-user:[redacted]@127.0.0.1:{port}/oauth/token?[redacted]",
        f"{idp.base_url}/oauth/token",  # positive control: a plain URL is shown as it is
    }
    assert opened[url_view(url)]["profiles"] == ["api"]
    text = log_output.getvalue()
    assert "URL-PASSWORD-XYZ" not in text
    assert "URL-QUERY-789" not in text
