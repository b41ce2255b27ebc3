"""POST /v1/exchange/{profile}: guards, the body, every answer and error, over TCP and Unix."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.config import ServerConfig
from sidecar.devidp import ACCESS_TOKEN_TYPE
from sidecar.listeners import LimitedRunner, ListenerLimits
from sidecar.responses import edge_error_response
from sidecar.token import fingerprint
from sidecar.token_api import MAX_EXCHANGE_BODY, make_token_app
from tests.support.builders import AUDIENCE, MCP_AUDIENCE, make_exchange_profile, make_profile

HEADERS = {"Token-Sidecar": "1"}
PATH = "/v1/exchange/user-api"
ANSWER_KEYS = {
    *("access_token", "token_type", "issued_token_type", "expires_in"),
    *("expires_at", "scope", "profile", "cached"),
}
CLAIMS = '{"access_token":{"acrs":{"essential":true,"value":"c1"}}}'


@pytest.fixture
def api(idp, make_service, aiohttp_client):
    """The token API over TCP with the ``api`` and ``user-api`` profiles (or those given)."""

    async def start(*profiles, server=None):
        chosen = profiles or (make_profile(idp), make_exchange_profile(idp))
        service = make_service(*chosen)
        client = await aiohttp_client(make_token_app(service, server or ServerConfig()))
        return service, client

    return start


def exchanges_sent(idp) -> int:
    """Exchange requests the IdP saw (the ``api`` profile's own refreshes not counted)."""
    return sum(1 for r in idp.requests if r.fields.get("grant_type") != "client_credentials")


async def refusal(resp, status: int, code: str, leaks, profile: str | None = "user-api"):
    """Assert an error answer's status, code, shape and headers; return its body."""
    text = await resp.text()
    assert resp.status == status, text
    assert not [value for value in leaks.all_values() if value in text]
    body = await resp.json()
    assert (body["error"], body["profile"]) == (code, profile)
    assert isinstance(body["message"], str)
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Content-Type"] == "application/json"
    if status == 503:
        assert resp.headers["Retry-After"] == str(body["retry_after"])
    else:
        assert "retry_after" not in body
        assert "Retry-After" not in resp.headers
    return body


async def test_exchange_answers_a_per_user_token(api, idp):
    """A user's token is exchanged once; the second call is answered from the cache."""
    _service, client = await api()
    user = idp.issue_user_token("alice", MCP_AUDIENCE, expires_in=3600)
    resp = await client.post(PATH, json={"subject_token": user}, headers=HEADERS)
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert set(body) == ANSWER_KEYS
    assert body["token_type"] == "Bearer"
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert (body["expires_in"], body["scope"], body["profile"]) == (3600, "read:tools", "user-api")
    assert body["expires_at"] == int(idp.clock.time()) + 3600
    assert body["cached"] is False
    assert idp.verify_token(body["access_token"], AUDIENCE)["sub"] == "alice"
    again = await client.post(PATH, json={"subject_token": user, "min_ttl": 60}, headers=HEADERS)
    assert (await again.json())["cached"] is True
    assert exchanges_sent(idp) == 1


async def test_scope_and_min_ttl_from_the_body(api, idp, leaks):
    """scope narrows (wider is 400); min_ttl beyond the user's token is 401 invalid_subject."""
    _service, client = await api(
        make_exchange_profile(idp, scope="read:tools write:tools"), make_profile(idp)
    )
    user = idp.issue_user_token("u", MCP_AUDIENCE, expires_in=100)
    resp = await client.post(
        PATH, json={"subject_token": user, "scope": "read:tools"}, headers=HEADERS
    )
    assert (await resp.json())["scope"] == "read:tools"
    resp = await client.post(
        PATH, json={"subject_token": user, "scope": "read:tools admin"}, headers=HEADERS
    )
    body = await refusal(resp, 400, "bad_request", leaks)
    assert "admin" not in body["message"]
    resp = await client.post(PATH, json={"subject_token": user, "min_ttl": 200}, headers=HEADERS)
    await refusal(resp, 401, "invalid_subject", leaks)
    assert exchanges_sent(idp) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"subject_token": ""}',
        b'{"subject_token": 42}',
        b'{"subject_token": "x", "scope": 1}',
        b'{"subject_token": "x", "min_ttl": "30"}',
        b'{"subject_token": "x", "min_ttl": true}',
        b'{"subject_token": "x", "min_ttl": -1}',
        b'{"subject_token": "x", "min_ttl": 1e12}',
    ],
)
async def test_bad_bodies_are_400(api, leaks, body):
    """A body that is not the documented JSON object is 400 bad_request, not echoed."""
    _service, client = await api()
    resp = await client.post(PATH, data=body, headers=HEADERS)
    answer = await refusal(resp, 400, "bad_request", leaks)
    assert "x" not in answer["message"].split()


async def test_body_size_is_bounded(api, idp, leaks):
    """A body past 64 KiB is refused unread; one just under is read (and judged)."""
    _service, client = await api()
    big = b'{"subject_token": "' + b"a" * MAX_EXCHANGE_BODY + b'"}'
    await refusal(await client.post(PATH, data=big, headers=HEADERS), 400, "bad_request", leaks)
    fits = b'{"subject_token": "' + b"a" * (MAX_EXCHANGE_BODY - 100) + b'"}'
    resp = await client.post(PATH, data=fits, headers=HEADERS)
    await refusal(resp, 401, "invalid_subject", leaks)  # read, then refused: not a JWT
    assert exchanges_sent(idp) == 0


async def test_methods_and_profiles(api, idp, leaks):
    """GET on the exchange is 405; the other kind of profile is 400 either way; unknown is 404."""
    _service, client = await api()
    resp = await client.get(PATH, headers=HEADERS)
    await refusal(resp, 405, "method_not_allowed", leaks, profile=None)
    assert resp.headers["Allow"] == "POST"
    resp = await client.get("/v1/token/user-api", headers=HEADERS)
    body = await refusal(resp, 400, "bad_request", leaks)
    assert "POST /v1/exchange/user-api" in body["message"]
    resp = await client.post(
        "/v1/token/user-api/invalidate", json={"fingerprint": "0" * 12}, headers=HEADERS
    )
    await refusal(resp, 400, "bad_request", leaks)
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    resp = await client.post("/v1/exchange/api", json={"subject_token": user}, headers=HEADERS)
    body = await refusal(resp, 400, "bad_request", leaks, profile="api")
    assert "GET /v1/token/api" in body["message"]
    resp = await client.post("/v1/exchange/nope", json={"subject_token": user}, headers=HEADERS)
    body = await refusal(resp, 404, "unknown_profile", leaks, profile=None)
    assert "configured: api, user-api" in body["message"]
    assert exchanges_sent(idp) == 0
    for path in ("/v1/token/api", PATH):  # positive controls: each path serves its kind
        resp = await client.request(
            "GET" if "token" in path else "POST",
            path,
            json={"subject_token": user},
            headers=HEADERS,
        )
        assert resp.status == 200, path
    assert exchanges_sent(idp) == 1


async def test_guards_apply(api, idp, leaks):
    """Without Token-Sidecar: 1 it is 400; through a proxy or a foreign Host it is 403."""
    _service, client = await api()
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    resp = await client.post(PATH, json={"subject_token": user})
    await refusal(resp, 400, "missing_header", leaks, profile=None)
    for extra in ({"Via": "1.1 proxy"}, {"Host": "evil.example"}):
        resp = await client.post(PATH, json={"subject_token": user}, headers={**HEADERS, **extra})
        await refusal(resp, 403, "forbidden", leaks, profile=None)
    assert exchanges_sent(idp) == 0


async def test_refusals_carry_the_idps_words(api, idp, leaks):
    """401 invalid_subject has no IdP words; subject_rejected and exchange_denied nest them."""
    _service, client = await api()
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    expired = idp.issue_user_token("u", MCP_AUDIENCE, expires_in=-5)
    resp = await client.post(PATH, json={"subject_token": expired}, headers=HEADERS)
    body = await refusal(resp, 401, "invalid_subject", leaks)
    assert set(body) == {"error", "message", "profile"}
    idp.faults.subject_rejected = True
    resp = await client.post(PATH, json={"subject_token": user}, headers=HEADERS)
    body = await refusal(resp, 401, "subject_rejected", leaks)
    assert body["idp"] == {"error": "invalid_grant", "error_description": "Invalid subject token"}
    idp.faults.clear()
    idp.faults.exchange_error = "interaction_required"
    idp.faults.exchange_claims = CLAIMS
    other = idp.issue_user_token("v", MCP_AUDIENCE)
    resp = await client.post(PATH, json={"subject_token": other}, headers=HEADERS)
    body = await refusal(resp, 403, "exchange_denied", leaks)
    assert body["idp"] == {
        "error": "interaction_required",
        "error_description": "Injected refusal: interaction_required",
        "claims": CLAIMS,
    }
    assert "interaction_required" in body["message"]


async def test_unavailable_is_503_with_retry_after(api, idp, leaks):
    """An IdP outage is 503 token_unavailable with Retry-After; a 429 passes its wait on."""
    _service, client = await api()
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    idp.faults.status = 503
    resp = await client.post(PATH, json={"subject_token": user}, headers=HEADERS)
    body = await refusal(resp, 503, "token_unavailable", leaks)
    assert body["retry_after"] == 1
    idp.faults.clear()
    idp.faults.rate_limit = True
    idp.faults.retry_after = 12
    resp = await client.post(PATH, json={"subject_token": user}, headers=HEADERS)
    body = await refusal(resp, 503, "token_unavailable", leaks)
    assert body["retry_after"] == 12


@pytest.fixture
async def unix_api(idp, make_service) -> AsyncIterator[Any]:
    """The token API on a Unix socket, as the daemon serves it; yields a starter."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []
    directory = tempfile.mkdtemp(dir="/tmp")

    async def start(*profiles, server):
        service = make_service(*profiles)
        runner = LimitedRunner(
            make_token_app(service, server),
            name="token",
            limits=ListenerLimits(),
            error_answer=edge_error_response,
        )
        await runner.setup()
        runners.append(runner)
        path = str(Path(directory) / f"x{len(runners)}.sock")
        await web.UnixSite(runner, path).start()
        session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path))
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()
    shutil.rmtree(directory, ignore_errors=True)


async def test_unix_socket_and_per_profile_allow_uids(unix_api, idp, leaks):
    """Over the Unix socket an exchange profile's own allow_uids decide who may exchange."""
    me, other = os.getuid(), os.getuid() + 1
    session = await unix_api(
        make_exchange_profile(idp, "mine", allow_uids=(me,)),
        make_exchange_profile(idp, "theirs", allow_uids=(other,)),
        server=ServerConfig(allow_uids=(other,)),
    )
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    url = "http://localhost/v1/exchange/"
    resp = await session.post(url + "theirs", json={"subject_token": user}, headers=HEADERS)
    await refusal(resp, 403, "forbidden", leaks, profile=None)
    resp = await session.post(url + "mine", json={"subject_token": user}, headers=HEADERS)
    assert resp.status == 200
    assert exchanges_sent(idp) == 1


async def test_rejected_drops_the_users_token_once(api, idp, leaks):
    """rejected = the fingerprint held: dropped, exchanged anew; an older fingerprint: cached."""
    _service, client = await api()
    user = idp.issue_user_token("alice", MCP_AUDIENCE, expires_in=3600)
    first = await (await client.post(PATH, json={"subject_token": user}, headers=HEADERS)).json()
    stale = fingerprint(first["access_token"])
    other = "0123456789ab"
    resp = await client.post(PATH, json={"subject_token": user, "rejected": other}, headers=HEADERS)
    kept = await resp.json()
    assert (kept["access_token"], kept["cached"]) == (first["access_token"], True)  # control
    resp = await client.post(PATH, json={"subject_token": user, "rejected": stale}, headers=HEADERS)
    fresh = await resp.json()
    assert fresh["cached"] is False
    assert fresh["access_token"] != first["access_token"]
    assert exchanges_sent(idp) == 2
    resp = await client.post(  # a late report of the old token keeps the new one
        PATH, json={"subject_token": user, "rejected": stale}, headers=HEADERS
    )
    assert (await resp.json())["access_token"] == fresh["access_token"]
    assert exchanges_sent(idp) == 2
    for bad in ("ABCDEF012345", "short", 12):
        resp = await client.post(
            PATH, json={"subject_token": user, "rejected": bad}, headers=HEADERS
        )
        await refusal(resp, 400, "bad_request", leaks)
