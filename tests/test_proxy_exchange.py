"""Proxy mode with per-user tokens: ``[upstreams.X] exchange = "PROFILE"``, end to end on loopback.

The caller (an MCP server) names its user with ``Token-Sidecar-Subject``; the
sidecar exchanges that token at the dev IdP (cache, single flight, negative
cache) and the test API, which validates the IdP's JWTs, sees a token whose
``sub`` is that user. The user's token itself never leaves the sidecar.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client import generate_latest
from yarl import URL

from sidecar.config import ServerConfig, UpstreamConfig
from sidecar.devidp import DevIdP
from sidecar.logs import AccessLogger
from sidecar.service import TokenService
from sidecar.token_api import make_token_app
from tests.support.builders import AUDIENCE, MCP_AUDIENCE, make_exchange_profile, make_profile
from tests.support.metrics import sample
from tests.support.upstream import TestAPI, runners, serve, serve_token_app

HEADERS = {"Token-Sidecar": "1"}
SUBJECT = "Token-Sidecar-Subject"


@dataclass
class World:
    """A started service whose upstream ``users`` carries ``user-api``'s per-user tokens."""

    service: TokenService
    api: TestAPI
    idp: DevIdP
    url: str
    http: aiohttp.ClientSession

    async def call(
        self,
        method: str,
        path: str,
        *,
        user: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        sent = {**HEADERS, **(headers or {})}
        if user is not None:
            sent[SUBJECT] = user
        url = URL(f"{self.url}/v1/proxy/users/{path}", encoded=True)
        async with self.http.request(method, url, headers=sent, **kwargs) as resp:
            return resp, await resp.read()

    def user(self, sub: str, expires_in: float = 3600) -> str:
        """A user's token for the MCP server, as its client would present it."""
        return self.idp.issue_user_token(sub, MCP_AUDIENCE, expires_in=expires_in)

    def subs_seen(self) -> list[str]:
        """The ``sub`` of every token the API received, in order."""
        return [self.idp.verify_token(r.token, AUDIENCE)["sub"] for r in self.api.received]


def exchanges_sent(idp: DevIdP) -> int:
    """Exchange requests the IdP saw (client-credentials requests not counted)."""
    return sum(1 for r in idp.requests if r.fields.get("grant_type") != "client_credentials")


Build = Callable[..., Awaitable[World]]


@pytest.fixture
async def world(idp, make_service, http) -> AsyncIterator[Build]:
    """Build the world: ``build(**upstream overrides)``."""
    async with runners() as made:

        async def build(**overrides: Any) -> World:
            api = TestAPI(idp, AUDIENCE)
            port = await serve(api.app(), made)
            fields: dict[str, Any] = {
                "name": "users",
                "base_url": f"http://127.0.0.1:{port}",
                "profile": "user-api",
                "exchange": True,
                "allow_http": True,
                "allow_private": True,
                **overrides,
            }
            service = make_service(
                make_profile(idp), make_exchange_profile(idp), upstreams=[UpstreamConfig(**fields)]
            )
            await service.get("api")
            token_port = await serve_token_app(make_token_app(service, ServerConfig()), made)
            return World(service, api, idp, f"http://127.0.0.1:{token_port}", http)

        yield build


async def error_of(resp: aiohttp.ClientResponse, body: bytes, status: int, code: str) -> Any:
    """The sidecar's own answer: the status, the JSON error and the Token-Sidecar-Error header."""
    assert resp.status == status, body
    assert resp.headers["Token-Sidecar-Error"] == code
    data = orjson.loads(body)
    assert (data["error"], data["profile"]) == (code, "user-api")
    return data


# -- per-user tokens --------------------------------------------------------------------


async def test_each_user_reaches_the_api_as_themselves(world, idp):
    """Two users: the API sees each one's own sub; the same user again costs no exchange."""
    w = await world()
    alice, bob = w.user("alice"), w.user("bob")
    for user in (alice, bob, alice):
        resp, body = await w.call("GET", "tool", user=user)
        assert resp.status == 200, body
        assert "Token-Sidecar-Retried" not in resp.headers
    assert w.subs_seen() == ["alice", "bob", "alice"]
    assert exchanges_sent(idp) == 2  # alice once, bob once
    tokens = [r.token for r in w.api.received]
    assert tokens[0] == tokens[2] != tokens[1]
    m = w.service.metrics
    assert sample(m, "token_sidecar_exchange_cache_total", profile="user-api", outcome="hit") == 1
    assert sample(m, "token_sidecar_exchange_cache_total", profile="user-api", outcome="miss") == 2
    assert sample(m, "token_sidecar_proxy_requests_total", upstream="users", code="2xx") == 3


async def test_concurrent_requests_of_one_new_user_cost_one_exchange(world, idp):
    """50 requests of one user at once: one IdP exchange (the exchange service's single flight)."""
    w = await world()
    alice = w.user("alice")
    answers = await asyncio.gather(*(w.call("GET", "tool", user=alice) for _ in range(50)))
    assert [resp.status for resp, _ in answers] == [200] * 50
    assert exchanges_sent(idp) == 1
    assert set(w.subs_seen()) == {"alice"}


async def test_the_users_token_never_reaches_the_upstream(world, idp):
    """Token-Sidecar-Subject is removed, the caller's Authorization replaced, a Bearer prefix ok."""
    w = await world()
    alice = w.user("alice")
    resp, body = await w.call(
        "POST",
        "tool",
        headers={SUBJECT: f"Bearer {alice}", "Authorization": f"Bearer {alice}"},
        json={"x": 1},
    )
    assert resp.status == 200, body
    (seen,) = w.api.received
    assert idp.verify_token(seen.token, AUDIENCE)["sub"] == "alice"  # positive control
    assert seen.token != alice
    assert not [name for name in seen.headers if name.lower().startswith("token-sidecar")]
    assert not [value for value in seen.headers.values() if alice in value]


async def test_a_plain_upstream_ignores_and_strips_the_subject_header(idp, make_service, http):
    """A client-credentials upstream sends its profile's token; a subject header goes nowhere."""
    async with runners() as made:
        api = TestAPI(idp, AUDIENCE)
        port = await serve(api.app(), made)
        plain = UpstreamConfig(
            name="users",
            base_url=f"http://127.0.0.1:{port}",
            profile="api",
            allow_http=True,
            allow_private=True,
        )
        service = make_service(make_profile(idp), make_exchange_profile(idp), upstreams=[plain])
        await service.get("api")
        token_port = await serve_token_app(make_token_app(service, ServerConfig()), made)
        w = World(service, api, idp, f"http://127.0.0.1:{token_port}", http)
        alice = w.user("alice")
        resp, _ = await w.call("GET", "tool", user=alice)
        assert resp.status == 200
        (seen,) = api.received
        assert SUBJECT not in seen.headers
        assert idp.verify_token(seen.token, AUDIENCE)["sub"] != "alice"
        assert exchanges_sent(idp) == 0


# -- refusals: nothing is forwarded -------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "Bearer ", "   "])
async def test_missing_subject_is_400_and_nothing_is_forwarded(world, idp, value):
    """No user token: 400 missing_subject, marked as the sidecar's; no exchange, no request."""
    w = await world()
    resp, body = await w.call("GET", "tool", user=value)
    data = await error_of(resp, body, 400, "missing_subject")
    assert SUBJECT in data["message"]
    assert w.api.received == []
    assert exchanges_sent(idp) == 0
    m = w.service.metrics
    assert (
        sample(m, "token_sidecar_proxy_requests_total", upstream="users", code="missing_subject")
        == 1
    )
    resp, _ = await w.call("GET", "tool", user=w.user("alice"))  # positive control
    assert resp.status == 200
    assert len(w.api.received) == 1


async def test_two_subject_headers_are_refused(world, idp):
    """Two Token-Sidecar-Subject headers: 400 bad_request, nothing forwarded."""
    w = await world()
    url = URL(f"{w.url}/v1/proxy/users/tool", encoded=True)
    sent = [("Token-Sidecar", "1"), (SUBJECT, w.user("a")), (SUBJECT, w.user("b"))]
    async with w.http.get(url, headers=sent) as resp:
        await error_of(resp, await resp.read(), 400, "bad_request")
    assert w.api.received == []
    assert exchanges_sent(idp) == 0


async def test_expired_subject_is_401_invalid_subject_without_an_idp_call(world, idp):
    """An expired user token is refused locally: 401 invalid_subject, no IdP call, no request."""
    w = await world()
    requests = len(idp.requests)
    resp, body = await w.call("GET", "tool", user=w.user("alice", expires_in=-60))
    await error_of(resp, body, 401, "invalid_subject")
    assert "Retry-After" not in resp.headers
    assert len(idp.requests) == requests
    assert w.api.received == []
    resp, _ = await w.call("GET", "tool", user=w.user("alice"))  # positive control
    assert resp.status == 200
    assert exchanges_sent(idp) == 1


async def test_idp_refusals_map_to_the_exchange_codes(world, idp):
    """IdP invalid_grant: 401 subject_rejected (remembered); access_denied: 403; 503: 503."""
    w = await world()
    idp.faults.subject_rejected = True
    alice = w.user("alice")
    resp, body = await w.call("GET", "tool", user=alice)
    await error_of(resp, body, 401, "subject_rejected")
    resp, body = await w.call("GET", "tool", user=alice)  # the negative cache answers
    await error_of(resp, body, 401, "subject_rejected")
    assert exchanges_sent(idp) == 1
    idp.faults.clear()
    idp.faults.exchange_error = "access_denied"
    resp, body = await w.call("GET", "tool", user=w.user("bob"))
    data = await error_of(resp, body, 403, "exchange_denied")
    assert data["idp"]["error"] == "access_denied"
    idp.faults.clear()
    idp.faults.status = 503
    resp, body = await w.call("GET", "tool", user=w.user("carol"))
    data = await error_of(resp, body, 503, "token_unavailable")
    assert resp.headers["Retry-After"] == str(data["retry_after"])
    assert w.api.received == []
    m = w.service.metrics
    for code in ("subject_rejected", "exchange_denied", "token_unavailable"):
        assert sample(m, "token_sidecar_proxy_requests_total", upstream="users", code=code) >= 1
    idp.faults.clear()
    resp, _ = await w.call("GET", "tool", user=w.user("dave"))  # positive control
    assert resp.status == 200


# -- the 401 rule ------------------------------------------------------------------------


async def test_401_once_drops_the_users_token_and_exchanges_again(world, idp):
    """A 401 for alice's token: her entry is dropped, one new exchange, 200 with Retried: 1."""
    w = await world()
    alice, bob = w.user("alice"), w.user("bob")
    await w.call("GET", "tool", user=alice)
    await w.call("GET", "tool", user=bob)
    first, bobs = w.api.received[0].token, w.api.received[1].token
    w.api.rejected.add(first)
    exchanges = exchanges_sent(idp)
    resp, body = await w.call("POST", "tool", user=alice, json={"x": 1})
    assert resp.status == 200, body
    assert resp.headers["Token-Sidecar-Retried"] == "1"
    assert exchanges_sent(idp) == exchanges + 1
    again = w.api.received[-1].token
    assert [r.token for r in w.api.received[-2:]] == [first, again]
    assert again != first
    assert idp.verify_token(again, AUDIENCE)["sub"] == "alice"
    m = w.service.metrics
    assert sample(m, "token_sidecar_proxy_retries_total", upstream="users", result="retried") == 1
    # The new token is cached; bob's entry was never touched.
    resp, _ = await w.call("GET", "tool", user=alice)
    resp, _ = await w.call("GET", "tool", user=bob)
    assert [r.token for r in w.api.received[-2:]] == [again, bobs]
    assert exchanges_sent(idp) == exchanges + 1


async def test_401_is_retried_once_never_more(world, idp):
    """An API that rejects every token: one drop, one exchange, one resend; the 401 comes back."""
    w = await world()
    alice = w.user("alice")
    await w.call("GET", "tool", user=alice)
    w.api.always_401 = True
    exchanges, received = exchanges_sent(idp), len(w.api.received)
    resp, _ = await w.call("GET", "tool", user=alice)
    assert resp.status == 401
    assert resp.headers["Token-Sidecar-Retried"] == "1"
    assert exchanges_sent(idp) == exchanges + 1
    assert len(w.api.received) == received + 2


async def test_401_without_retry_on_401_is_passed_back(world, idp):
    """retry_on_401 = false: the 401 comes back, the user's token stays cached."""
    w = await world(retry_on_401=False)
    alice = w.user("alice")
    await w.call("GET", "tool", user=alice)
    w.api.always_401 = True
    resp, _ = await w.call("GET", "tool", user=alice)
    assert resp.status == 401
    assert "Token-Sidecar-Retried" not in resp.headers
    assert exchanges_sent(idp) == 1
    w.api.always_401 = False
    resp, _ = await w.call("GET", "tool", user=alice)
    assert resp.status == 200
    assert exchanges_sent(idp) == 1


async def test_401_on_a_streamed_body_drops_the_entry_but_is_passed_back(world, idp):
    """A body too large to replay: the 401 comes back; the next request exchanges afresh."""
    w = await world(retry_body_limit=1024)
    alice = w.user("alice")
    await w.call("GET", "tool", user=alice)
    first = w.api.received[0].token
    w.api.rejected.add(first)
    resp, _ = await w.call("POST", "upload", user=alice, data=b"x" * 4096)
    assert resp.status == 401
    assert "Token-Sidecar-Retried" not in resp.headers
    assert exchanges_sent(idp) == 1
    m = w.service.metrics
    assert (
        sample(m, "token_sidecar_proxy_retries_total", upstream="users", result="not_replayable")
        == 1
    )
    resp, _ = await w.call("POST", "upload", user=alice, data=b"x" * 4096)
    assert resp.status == 200
    assert exchanges_sent(idp) == 2
    assert w.api.received[-1].token != first


async def test_a_401_for_a_replaced_token_keeps_the_replacement(world, idp):
    """A late 401 for alice's old token does not drop the token another request already got."""
    w = await world()
    alice = w.user("alice")
    await w.call("GET", "tool", user=alice)
    first = w.api.received[0].token
    parked = asyncio.ensure_future(w.call("GET", "park/x", user=alice))
    await asyncio.wait_for(w.api.parked.wait(), 5)
    w.api.rejected.add(first)
    resp, _ = await w.call("GET", "tool", user=alice)  # rejected, retried with a new token
    assert (resp.status, resp.headers["Token-Sidecar-Retried"]) == (200, "1")
    assert exchanges_sent(idp) == 2
    replacement = w.api.received[-1].token
    w.api.release.set()
    resp, _ = await asyncio.wait_for(parked, 5)
    assert (resp.status, resp.headers["Token-Sidecar-Retried"]) == (200, "1")
    assert w.api.received[-1].token == replacement
    assert exchanges_sent(idp) == 2


# -- what is observable ------------------------------------------------------------------


async def test_metrics_status_and_access_log_name_no_user(
    idp, make_service, http, log_output, leaks
):
    """Counters, /status and the access log name the upstream; no user token, no user anywhere."""
    async with runners() as made:
        api = TestAPI(idp, AUDIENCE)
        port = await serve(api.app(), made)
        users = UpstreamConfig(
            name="users",
            base_url=f"http://127.0.0.1:{port}",
            profile="user-api",
            exchange=True,
            allow_http=True,
            allow_private=True,
        )
        service = make_service(make_exchange_profile(idp), upstreams=[users])
        app = make_token_app(service, ServerConfig())
        access = logging.getLogger("sidecar.access")
        token_port = await serve(app, made, access_log=access, access_log_class=AccessLogger)
        w = World(service, api, idp, f"http://127.0.0.1:{token_port}", http)
        subjects = [w.user(f"user-{n}-zq") for n in range(3)]
        for subject in subjects:
            leaks.add(subject)  # the leak scan (and the checks below) look for each
        bodies = [(await w.call("GET", "ok?secret=q", user=s))[1] for s in subjects]
        api.rejected.add(api.received[0].token)
        bodies.append((await w.call("GET", "x", user=subjects[0]))[1])
        bodies.append((await w.call("GET", "x", user=w.user("old", expires_in=-1)))[1])
        bodies.append((await w.call("GET", "x"))[1])
        status_body = service.status()
        exposed = generate_latest(service.metrics.registry).decode()
    m = service.metrics
    assert sample(m, "token_sidecar_proxy_requests_total", upstream="users", code="2xx") == 4
    assert sample(m, "token_sidecar_proxy_retries_total", upstream="users", result="retried") == 1
    assert (
        sample(m, "token_sidecar_proxy_requests_total", upstream="users", code="invalid_subject")
        == 1
    )
    entry = status_body["upstreams"]["users"]
    assert (entry["profile"], entry["exchange"], entry["requests"]) == ("user-api", True, 6)
    assert entry["last_error"]["code"] == "missing_subject"
    logged = log_output.getvalue()
    assert '"upstream":"users"' in logged
    assert '"event":"http.access"' in logged
    # Positive control: the subjects were sent, and the API got the users' exchanged tokens.
    assert {idp.verify_token(r.token, AUDIENCE)["sub"] for r in api.received} >= {
        "user-0-zq",
        "user-1-zq",
        "user-2-zq",
    }
    for where in (logged, exposed, str(status_body), *(b.decode() for b in bodies)):
        assert "-zq" not in where  # no user named
        for value in leaks.all_values():
            assert value not in where
