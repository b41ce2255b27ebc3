"""The token API: guards, token answers, invalidation and error mapping, over TCP and Unix."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from sidecar.config import BackoffConfig, InlineSecret, ServerConfig
from sidecar.listeners import LimitedRunner, ListenerLimits
from sidecar.responses import edge_error_response
from sidecar.token import fingerprint
from sidecar.token_api import MAX_BODY, make_token_app
from tests.support.builders import CLIENT_SECRET, make_profile
from tests.support.metrics import sample
from tests.support.virtual_time import idle, run_for

HEADERS = {"Token-Sidecar": "1"}
DAY = 86400
WALL_START = 1_800_000_000
WRONG_SECRET = "wrong-secret-LEAKCANARY-2c4d"
ERROR_KEYS = {"error", "message", "profile"}
TOKEN_KEYS = {"access_token", "token_type", "expires_in", "expires_at", "scope", "profile", "stale"}


def requests(metrics, outcome, profile="api"):
    return sample(metrics, "token_sidecar_token_requests_total", profile=profile, outcome=outcome)


def invalidations(metrics, result):
    return sample(metrics, "token_sidecar_invalidations_total", profile="api", result=result)


@pytest.fixture
def api(idp, make_service, aiohttp_client):
    """Start the token API over TCP for a service built from ``profiles`` (default: ``api``)."""

    async def start(*profiles, server=None):
        service = make_service(*(profiles or (make_profile(idp),)))
        client = await aiohttp_client(make_token_app(service, server or ServerConfig()))
        return service, client

    return start


@pytest.fixture
async def unix_api(idp, make_service) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Serve the token API on a Unix socket as the daemon does; yields (service, session, path).

    The daemon's listener reads each connection's peer credentials once; the
    other fixtures serve the app without it, so both ways are exercised.
    """
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []
    directory = tempfile.mkdtemp(dir="/tmp")

    async def start(*profiles, server):
        service = make_service(*(profiles or (make_profile(idp),)))
        runner = LimitedRunner(
            make_token_app(service, server),
            name="token",
            limits=ListenerLimits(),
            error_answer=edge_error_response,
        )
        await runner.setup()
        runners.append(runner)
        path = str(Path(directory) / f"t{len(runners)}.sock")
        await web.UnixSite(runner, path).start()
        session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path))
        sessions.append(session)
        return service, session, path

    yield start
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()
    shutil.rmtree(directory, ignore_errors=True)


async def error_body(resp, status, code, leaks, profile=None):
    """Assert an error answer's status, shape and headers; return its body."""
    text = await resp.text()
    assert resp.status == status, text
    assert not [value for value in leaks.all_values() if value in text]
    body = await resp.json()
    assert body["error"] == code
    assert body["profile"] == profile
    assert isinstance(body["message"], str)
    assert set(body) == (ERROR_KEYS | {"retry_after"} if status == 503 else ERROR_KEYS)
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Content-Type"] == "application/json"
    return body


async def raw_get(reader, writer, headers, target="/v1/token/api"):
    """Send an HTTP/1.0 GET with exactly ``headers`` and return the status code."""
    lines = [f"GET {target} HTTP/1.0", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    writer.write("\r\n".join(lines).encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return int(answer.split(b" ", 2)[1])


async def pending(task, clock, sleepers):
    """Return once ``task`` is done or at least ``sleepers`` tasks are parked on the clock."""
    parked = asyncio.ensure_future(clock.wait_for_sleepers(sleepers))
    try:
        await asyncio.wait({task, parked}, return_when=asyncio.FIRST_COMPLETED, timeout=5)
    finally:
        parked.cancel()
        await asyncio.gather(parked, return_exceptions=True)


# -- guards --------------------------------------------------------------------


async def test_missing_header_is_refused(api, leaks):
    """A request without Token-Sidecar: 1 gets 400 missing_header and no token."""
    _service, client = await api()
    resp = await client.get("/v1/token/api")
    await error_body(resp, 400, "missing_header", leaks)


@pytest.mark.parametrize("value", ["0", "true", "", "1, 1"])
async def test_wrong_header_value_is_refused(api, leaks, value):
    """A Token-Sidecar header with any value but 1 gets 400 missing_header."""
    _service, client = await api()
    resp = await client.get("/v1/token/api", headers={"Token-Sidecar": value})
    await error_body(resp, 400, "missing_header", leaks)


async def test_guards_run_before_routing(api, leaks):
    """An unknown path without the header gets missing_header, not not_found."""
    _service, client = await api()
    resp = await client.get("/nope")
    await error_body(resp, 400, "missing_header", leaks)


@pytest.mark.parametrize(
    "headers", [{}, {**HEADERS, "Via": "1.1 proxy"}, {**HEADERS, "Host": "evil.example"}]
)
async def test_guard_answers_do_not_tell_which_profiles_exist(api, headers):
    """A refused request gets the same answer for a configured and an unknown profile."""
    _service, client = await api()
    answers = []
    for path in ("/v1/token/api", "/v1/token/nosuch"):
        resp = await client.get(path, headers=headers)
        answers.append((resp.status, await resp.read()))
    assert answers[0] == answers[1]
    assert b"api" not in answers[0][1]


@pytest.mark.parametrize(
    ("name", "value"),
    [("Forwarded", "for=10.0.0.1"), ("X-Forwarded-For", "10.0.0.1"), ("Via", "1.1 proxy")],
)
async def test_proxy_headers_are_forbidden(api, leaks, metrics, name, value):
    """A request that went through a proxy gets 403 forbidden, counted as denied."""
    _service, client = await api()
    resp = await client.get("/v1/token/api", headers={**HEADERS, name: value})
    await error_body(resp, 403, "forbidden", leaks)
    assert requests(metrics, "denied") == 1
    assert requests(metrics, "served") == 0


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "127.0.0.1.nip.io",
        "localhost.evil.example",
        "evil.example:8700",
        "10.0.0.1",
        "0.0.0.0",  # noqa: S104 - a Host header value, not a bind address
        "[::2]:8700",
        "[127.0.0.1]",
        "::1",
        "localhost:port",
        "127.0.0.1:123456",
    ],
)
async def test_non_loopback_host_is_forbidden(api, leaks, metrics, host):
    """A Host that is not a loopback name or address gets 403 (DNS-rebinding defence)."""
    _service, client = await api()
    resp = await client.get("/v1/token/api", headers={**HEADERS, "Host": host})
    body = await error_body(resp, 403, "forbidden", leaks)
    assert host not in body["message"]
    assert requests(metrics, "denied") == 1


@pytest.mark.parametrize(
    "host", ["localhost:8700", "localhost", "LocalHost", "127.0.0.1", "127.1.2.3:80", "[::1]:8700"]
)
async def test_loopback_hosts_are_accepted(api, host):
    """Loopback names and addresses, with or without a port, get the token."""
    _service, client = await api()
    resp = await client.get("/v1/token/api", headers={**HEADERS, "Host": host})
    assert resp.status == 200


async def test_non_loopback_listen_host_is_accepted_only_when_allowed(api):
    """With allow_non_loopback the configured listen address is a valid Host; others are not."""
    server = ServerConfig(listen="10.1.2.3:8700", allow_non_loopback=True)
    _service, client = await api(server=server)
    for host, status in (("10.1.2.3:8700", 200), ("10.1.2.4:8700", 403), ("evil.example", 403)):
        resp = await client.get("/v1/token/api", headers={**HEADERS, "Host": host})
        assert resp.status == status
    _service, strict = await api(server=ServerConfig(listen="10.1.2.3:8700"))
    resp = await strict.get("/v1/token/api", headers={**HEADERS, "Host": "10.1.2.3:8700"})
    assert resp.status == 403


@pytest.mark.parametrize(
    "target", ["http://evil.example/v1/token/api", "http://127.0.0.1/v1/token/api"]
)
async def test_absolute_form_request_target_is_forbidden(api, target):
    """A proxy-style absolute URL in the request line is refused, whatever Host says."""
    _service, client = await api()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    assert await raw_get(reader, writer, {**HEADERS, "Host": "127.0.0.1"}, target) == 403


async def test_missing_host_over_tcp_is_forbidden(api):
    """Over TCP a request without any Host header gets 403."""
    _service, client = await api()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    assert await raw_get(reader, writer, HEADERS) == 403


async def test_forbidden_unknown_profile_is_not_counted_or_echoed(api, leaks, metrics):
    """A 403 for a profile that is not configured echoes no name and counts nothing."""
    _service, client = await api()
    resp = await client.get("/v1/token/other", headers={**HEADERS, "Via": "1.1 proxy"})
    await error_body(resp, 403, "forbidden", leaks)
    assert requests(metrics, "denied") == 0


# -- GET /v1/token/{profile} -------------------------------------------------


async def test_get_token_shape_headers_and_types(api, idp, clock, metrics):
    """A token answer has exactly the documented fields, types and no-store headers."""
    service, client = await api()
    resp = await client.get("/v1/token/api", headers=HEADERS)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Pragma"] == "no-cache"
    assert resp.headers["Content-Type"] == "application/json"
    body = await resp.json()
    assert set(body) == TOKEN_KEYS
    assert body == {
        "access_token": idp.issued_tokens[-1],
        "token_type": "Bearer",
        "expires_in": DAY,
        "expires_at": WALL_START + DAY,
        "scope": "read:tools",
        "profile": "api",
        "stale": False,
    }
    await run_for(clock, service, 100.5)
    later = await (await client.get("/v1/token/api", headers=HEADERS)).json()
    assert later["expires_in"] == DAY - 101  # whole seconds, rounded down
    assert later["expires_at"] == WALL_START + DAY
    assert requests(metrics, "served") == 2


async def test_hot_path_does_not_call_the_idp(api, idp):
    """Repeated requests for a warm token make no IdP request."""
    _service, client = await api()
    first = await (await client.get("/v1/token/api", headers=HEADERS)).json()
    for _ in range(20):
        again = await (await client.get("/v1/token/api", headers=HEADERS)).json()
        assert again["access_token"] == first["access_token"]
    assert idp.token_requests == 1


async def test_stale_token_is_flagged_during_outage(api, idp, clock, metrics):
    """While refreshes fail the current token is served with stale true and counted stale."""
    service, client = await api(make_profile(idp, backoff=BackoffConfig(base=1.0, cap=30.0)))
    first = await (await client.get("/v1/token/api", headers=HEADERS)).json()
    refresh_at = service.refresher_for("api").token.refresh_at
    idp.faults.status = 503
    await run_for(clock, service, refresh_at - clock.monotonic() + 60)
    resp = await client.get("/v1/token/api", headers=HEADERS)
    body = await resp.json()
    assert resp.status == 200
    assert body["stale"] is True
    assert body["access_token"] == first["access_token"]
    assert requests(metrics, "stale") == 1
    assert requests(metrics, "served") == 1


@pytest.mark.parametrize("value", ["0", "60", "2.5", "43200"])
async def test_min_ttl_within_half_lifetime_is_served(api, value):
    """A min_ttl up to half the token lifetime is accepted and answered with at least that."""
    _service, client = await api()
    await client.get("/v1/token/api", headers=HEADERS)
    resp = await client.get("/v1/token/api", params={"min_ttl": value}, headers=HEADERS)
    assert resp.status == 200
    assert (await resp.json())["expires_in"] >= float(value)


@pytest.mark.parametrize("value", ["abc", "-1", "", "nan", "inf", "1e3", "10s", " 5", "0x10"])
async def test_min_ttl_not_a_number_is_bad_request(api, leaks, value):
    """A min_ttl that is not a non-negative number gets 400 bad_request."""
    _service, client = await api()
    resp = await client.get("/v1/token/api", params={"min_ttl": value}, headers=HEADERS)
    await error_body(resp, 400, "bad_request", leaks, profile="api")


async def test_repeated_min_ttl_is_bad_request(api, leaks):
    """Two min_ttl parameters get 400 bad_request."""
    _service, client = await api()
    resp = await client.get("/v1/token/api?min_ttl=1&min_ttl=2", headers=HEADERS)
    await error_body(resp, 400, "bad_request", leaks, profile="api")


async def test_min_ttl_above_half_lifetime_is_bad_request(api, leaks, metrics):
    """A min_ttl above half the current token's lifetime gets 400 and counts nothing."""
    _service, client = await api()
    await client.get("/v1/token/api", headers=HEADERS)
    resp = await client.get("/v1/token/api", params={"min_ttl": "43201"}, headers=HEADERS)
    body = await error_body(resp, 400, "bad_request", leaks, profile="api")
    assert "43200" in body["message"]
    assert requests(metrics, "served") == 1


async def test_large_min_ttl_without_token_is_left_to_the_engine(api, idp, clock):
    """Before the first token any min_ttl is accepted and the engine serves what fits."""
    idp.faults.hang = True
    _service, client = await api()
    await asyncio.wait_for(idp.faults.wait_hung(), 5)
    task = asyncio.ensure_future(
        client.get("/v1/token/api", params={"min_ttl": "50000"}, headers=HEADERS)
    )
    await clock.wait_for_sleepers(1)  # the request waits for the refresh in flight
    idp.release_hang()
    resp = await task
    assert resp.status == 200
    assert (await resp.json())["expires_in"] == DAY


async def test_min_ttl_longer_than_any_token_is_unavailable(api, idp, leaks, metrics):
    """A min_ttl no IdP token can satisfy ends in 503 token_unavailable from the engine."""
    _service, client = await api()
    resp = await client.get("/v1/token/api", params={"min_ttl": "90000"}, headers=HEADERS)
    body = await error_body(resp, 503, "token_unavailable", leaks, profile="api")
    assert body["retry_after"] == 1
    assert resp.headers["Retry-After"] == "1"
    assert requests(metrics, "unavailable") == 1


async def test_unknown_profile_is_404_without_echo(api, leaks, metrics):
    """An unknown profile gets 404 unknown_profile naming valid names only, and the profiles."""
    _service, client = await api()
    resp = await client.get("/v1/token/%3Cscript%3Ex", headers=HEADERS)
    body = await error_body(resp, 404, "unknown_profile", leaks)
    assert "script" not in await resp.text()
    assert body["message"] == "unknown profile (not a valid profile name); configured: api"
    resp = await client.get("/v1/token/apj", headers=HEADERS)
    body = await error_body(resp, 404, "unknown_profile", leaks)
    assert body["message"] == "unknown profile 'apj'; configured: api"
    assert body["profile"] is None
    resp = await client.post("/v1/token/other/invalidate", json={"fingerprint": "0" * 12})
    await error_body(resp, 400, "missing_header", leaks)
    resp = await client.post(
        "/v1/token/other/invalidate", json={"fingerprint": "0" * 12}, headers=HEADERS
    )
    await error_body(resp, 404, "unknown_profile", leaks)
    assert requests(metrics, "served") == 0


@pytest.mark.parametrize("path", ["/", "/v1/token", "/v1/token/", "/v1/token/api/extra", "/v2/x"])
async def test_unknown_path_is_not_found(api, leaks, path):
    """A path outside the API gets 404 not_found."""
    _service, client = await api()
    resp = await client.get(path, headers=HEADERS)
    await error_body(resp, 404, "not_found", leaks)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/v1/token/api", "GET"),
        ("DELETE", "/v1/token/api", "GET"),
        ("PUT", "/v1/token/api", "GET"),
        ("GET", "/v1/token/api/invalidate", "POST"),
    ],
)
async def test_wrong_method_is_405_with_allow(api, leaks, method, path, allow):
    """A wrong method gets 405 method_not_allowed with an Allow header."""
    _service, client = await api()
    resp = await client.request(method, path, headers=HEADERS)
    await error_body(resp, 405, "method_not_allowed", leaks)
    assert resp.headers["Allow"] == allow


async def test_head_is_not_allowed(api):
    """HEAD on a token path gets 405: asking for a token always has effects."""
    _service, client = await api()
    resp = await client.head("/v1/token/api", headers=HEADERS)
    assert resp.status == 405
    assert resp.headers["Allow"] == "GET"


# -- POST /v1/token/{profile}/invalidate -------------------------------------


async def invalidate(client, payload):
    resp = await client.post("/v1/token/api/invalidate", json=payload, headers=HEADERS)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert set(body) == {*TOKEN_KEYS, "result"}
    return body


async def test_invalidate_by_access_token(api, idp, clock, metrics):
    """Reporting the current token replaces it; repeats are already_rotated or throttled."""
    service, client = await api()
    old = (await (await client.get("/v1/token/api", headers=HEADERS)).json())["access_token"]
    answer = await invalidate(client, {"access_token": old})
    new = answer["access_token"]
    assert (new != old, answer["result"], answer["stale"]) == (True, "refreshed", False)
    assert invalidations(metrics, "refreshed") == 1
    answer = await invalidate(client, {"access_token": old})
    assert (answer["access_token"], answer["result"]) == (new, "already_rotated")
    assert invalidations(metrics, "already_rotated") == 1
    answer = await invalidate(client, {"access_token": new})
    assert (answer["access_token"], answer["result"]) == (new, "throttled")
    assert invalidations(metrics, "throttled") == 1
    await run_for(clock, service, 10)
    answer = await invalidate(client, {"access_token": new})
    assert (answer["access_token"] != new, answer["result"]) == (True, "refreshed")
    assert invalidations(metrics, "refreshed") == 2
    assert idp.issued == 3
    assert requests(metrics, "served") == 5


async def test_invalidate_by_fingerprint(api, idp, metrics):
    """Reporting the current token's fingerprint replaces it."""
    _service, client = await api()
    old = (await (await client.get("/v1/token/api", headers=HEADERS)).json())["access_token"]
    body = await invalidate(client, {"fingerprint": fingerprint(old)})
    assert body["access_token"] not in (old, "")
    assert body["stale"] is False
    assert invalidations(metrics, "refreshed") == 1
    await invalidate(client, {"fingerprint": fingerprint(old)})
    assert invalidations(metrics, "already_rotated") == 1


async def test_invalidate_accepts_any_content_type(api, metrics):
    """A JSON body is accepted whatever Content-Type it is sent with."""
    _service, client = await api()
    resp = await client.post(
        "/v1/token/api/invalidate",
        data=b'{"fingerprint": "0123456789ab"}',
        headers={**HEADERS, "Content-Type": "text/plain"},
    )
    assert resp.status == 200
    assert invalidations(metrics, "already_rotated") == 1


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[]",
        b'"0123456789ab"',
        b"{}",
        b'{"other": "x"}',
        b'{"access_token": "a", "fingerprint": "0123456789ab"}',
        b'{"access_token": 5}',
        b'{"access_token": ""}',
        b'{"fingerprint": null}',
        b'{"fingerprint": "0123456789AB"}',
        b'{"fingerprint": "0123456789a"}',
        b'{"fingerprint": "0123456789abc"}',
        b'{"fingerprint": "g123456789ab"}',
        b'{"access_token": "' + b"x" * MAX_BODY + b'"}',
    ],
)
async def test_invalidate_bad_body_is_bad_request(api, idp, leaks, metrics, body):
    """A body that is not exactly one string key of the two gets 400 and drops nothing."""
    _service, client = await api()
    await client.get("/v1/token/api", headers=HEADERS)
    resp = await client.post("/v1/token/api/invalidate", data=body, headers=HEADERS)
    await error_body(resp, 400, "bad_request", leaks, profile="api")
    assert idp.issued == 1
    assert sum(invalidations(metrics, r) for r in ("refreshed", "already_rotated")) == 0


async def test_invalidate_chunked_oversize_body_is_bad_request(api, leaks):
    """An oversize body without Content-Length is refused while it streams in."""
    _service, client = await api()

    async def chunks():
        for _ in range(4):
            yield b"x" * (MAX_BODY // 2)

    resp = await client.post("/v1/token/api/invalidate", data=chunks(), headers=HEADERS)
    await error_body(resp, 400, "bad_request", leaks, profile="api")


# -- 503 ---------------------------------------------------------------------


async def test_idp_down_without_token_is_unavailable(api, idp, clock, leaks, metrics):
    """With the IdP down and no token, a caller gets 503 token_unavailable with Retry-After."""
    idp.faults.status = 503
    service, client = await api(make_profile(idp, wait_timeout=0.5))
    task = asyncio.ensure_future(client.get("/v1/token/api", headers=HEADERS))
    await pending(task, clock, 2)
    if not task.done():
        await run_for(clock, service, 1)
    resp = await task
    body = await error_body(resp, 503, "token_unavailable", leaks, profile="api")
    assert isinstance(body["retry_after"], int)
    assert body["retry_after"] >= 1
    assert resp.headers["Retry-After"] == str(body["retry_after"])
    assert requests(metrics, "unavailable") == 1


async def test_hanging_idp_times_out_as_unavailable(api, idp, clock, leaks, metrics):
    """A caller waiting on a hung IdP gets 503 once wait_timeout of clock time passed."""
    idp.faults.hang = True
    _service, client = await api(make_profile(idp, wait_timeout=0.5))
    await asyncio.wait_for(idp.faults.wait_hung(), 5)
    task = asyncio.ensure_future(client.get("/v1/token/api", headers=HEADERS))
    await clock.wait_for_sleepers(1)
    await clock.advance(0.5)
    resp = await task
    body = await error_body(resp, 503, "token_unavailable", leaks, profile="api")
    assert body["retry_after"] == 1
    assert requests(metrics, "unavailable") == 1


async def test_rejected_credentials_are_misconfigured(api, idp, leaks, metrics):
    """Rejected credentials give 503 misconfigured carrying the IdP's error text."""
    leaks.add(WRONG_SECRET)
    service, client = await api(make_profile(idp, client_secret=InlineSecret(WRONG_SECRET)))
    await idle(service)
    resp = await client.get("/v1/token/api", headers=HEADERS)
    body = await error_body(resp, 503, "misconfigured", leaks, profile="api")
    assert idp.requests[-1].error == "access_denied"
    assert body["message"] == "rejected: access_denied: Unauthorized"
    assert body["retry_after"] >= 60
    assert int(resp.headers["Retry-After"]) == body["retry_after"]
    assert CLIENT_SECRET not in await resp.text()
    assert requests(metrics, "unavailable") == 1


# -- Unix socket ---------------------------------------------------------------


async def test_unix_socket_allowed_uid_gets_token(unix_api):
    """A peer whose uid is in allow_uids gets the token over the Unix socket."""
    _service, session, _path = await unix_api(server=ServerConfig(allow_uids=(os.getuid(),)))
    resp = await session.get("http://localhost/v1/token/api", headers=HEADERS)
    assert resp.status == 200
    assert (await resp.json())["profile"] == "api"


async def test_unix_socket_other_uid_is_denied(unix_api, leaks, metrics):
    """A peer whose uid is not in allow_uids gets 403, counted as denied."""
    _service, session, _path = await unix_api(server=ServerConfig(allow_uids=(os.getuid() + 1,)))
    resp = await session.get("http://localhost/v1/token/api", headers=HEADERS)
    await error_body(resp, 403, "forbidden", leaks)
    assert requests(metrics, "denied") == 1
    resp = await session.get("http://localhost/v1/token/other", headers=HEADERS)
    await error_body(resp, 403, "forbidden", leaks)


async def test_profile_allow_uids_override_server_list(unix_api, idp):
    """A profile's own allow_uids replace the server list; an empty one inherits it."""
    me, other = os.getuid(), os.getuid() + 1
    _service, session, _path = await unix_api(
        make_profile(idp, name="mine", allow_uids=(me,)),
        make_profile(idp, name="theirs", allow_uids=(other,)),
        make_profile(idp, name="empty", allow_uids=()),
        make_profile(idp, name="inherit"),
        server=ServerConfig(allow_uids=(other,)),
    )
    expected = {"mine": 200, "theirs": 403, "empty": 403, "inherit": 403}
    for name, status in expected.items():
        resp = await session.get(f"http://localhost/v1/token/{name}", headers=HEADERS)
        assert resp.status == status, name


async def test_unix_socket_without_allow_list_is_open(unix_api):
    """With no allow_uids anywhere, every Unix-socket peer is served."""
    _service, session, _path = await unix_api(server=ServerConfig())
    resp = await session.get("http://localhost/v1/token/api", headers=HEADERS)
    assert resp.status == 200


async def test_unix_socket_host_rules(unix_api, leaks):
    """On the Unix socket a missing Host is accepted but a foreign one is still refused."""
    _service, session, path = await unix_api(server=ServerConfig(allow_uids=(os.getuid(),)))
    reader, writer = await asyncio.open_unix_connection(path)
    assert await raw_get(reader, writer, HEADERS) == 200
    resp = await session.get(
        "http://localhost/v1/token/api", headers={**HEADERS, "Host": "evil.example"}
    )
    await error_body(resp, 403, "forbidden", leaks)
    reader, writer = await asyncio.open_unix_connection(path)
    assert await raw_get(reader, writer, {}) == 400


async def test_invalidate_during_an_outage_serves_the_reported_token_stale(api, idp, metrics):
    """With the IdP down, the reported token comes back flagged stale and readiness holds."""
    service, client = await api()
    old = (await (await client.get("/v1/token/api", headers=HEADERS)).json())["access_token"]
    idp.faults.status = 503
    answer = await invalidate(client, {"access_token": old})
    assert (answer["access_token"], answer["stale"], answer["result"]) == (old, True, "refreshed")
    assert service.readiness()[0] is True
    again = await (await client.get("/v1/token/api", headers=HEADERS)).json()
    assert (again["access_token"], again["stale"]) == (old, True)
    idp.faults.status = None
    answer = await invalidate(client, {"access_token": old})  # throttled: still the same one
    assert (answer["access_token"], answer["result"]) == (old, "throttled")


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_invalidate_undecodable_body_is_bad_request(api, leaks, metrics, coding):
    """A compressed invalidate body that does not decode gets the JSON 400, not a 500."""
    _service, client = await api()
    token = await (await client.get("/v1/token/api", headers=HEADERS)).json()
    headers = {**HEADERS, "Content-Encoding": coding}
    resp = await client.post("/v1/token/api/invalidate", data=b"not compressed", headers=headers)
    await error_body(resp, 400, "bad_request", leaks, profile="api")
    # Positive control: the same body, uncompressed and well-formed, is accepted.
    body = f'{{"access_token": "{token["access_token"]}"}}'.encode()
    resp = await client.post("/v1/token/api/invalidate", data=body, headers=HEADERS)
    assert resp.status == 200


async def test_get_bodies_follow_the_clock_and_the_token(api, idp, clock):
    """Answers within one second are identical; a second later expires_in is one less."""
    service, client = await api()
    first = await (await client.get("/v1/token/api", headers=HEADERS)).read()
    again = await (await client.get("/v1/token/api", headers=HEADERS)).read()
    assert again == first
    await clock.advance(1.0)
    later = orjson.loads(await (await client.get("/v1/token/api", headers=HEADERS)).read())
    assert later["expires_in"] == orjson.loads(first)["expires_in"] - 1
    refresher = service.refresher_for("api")
    await refresher.invalidate(refresher.token.fingerprint)
    newer = orjson.loads(await (await client.get("/v1/token/api", headers=HEADERS)).read())
    assert newer["access_token"] != later["access_token"]
