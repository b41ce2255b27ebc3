"""Per-user tokens in the client library: TokenClient.exchange and the adapters' ``subject``.

Against a live token API (the client tests' stack) with an exchange profile
``user-api`` at the dev IdP; the protected API accepts only tokens the IdP
issued and records which one each request carried.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import threading
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from sidecar.devidp import DevIdP
from tests.support.builders import AUDIENCE, MCP_AUDIENCE, make_exchange_profile, make_profile
from tests.support.clientstack import client_stack
from tests.support.virtual_time import run_for
from token_sidecar_client import SidecarAuth, SidecarError, Token, TokenClient, sidecar_middleware
from token_sidecar_client._exchange import SubjectTokens, subject_key

PROFILE = "user-api"


@pytest.fixture
async def stack(idp, make_service) -> AsyncIterator[dict[str, Any]]:
    """The client stack with a client-credentials profile ``api`` and the exchange ``user-api``."""
    service = make_service(make_profile(idp), make_exchange_profile(idp))
    await service.get("api")
    async with client_stack(service, idp) as value:
        yield value


def exchanges(stack: dict[str, Any]) -> int:
    """Exchanges the daemon made at the IdP (its cache misses)."""
    value = stack["service"].metrics.registry.get_sample_value(
        "token_sidecar_exchange_total", {"profile": PROFILE, "result": "success"}
    )
    return int(value or 0)


def exchange_posts(stack: dict[str, Any]) -> int:
    """Exchange requests the daemon answered (hits and misses alike)."""
    registry = stack["service"].metrics.registry
    return int(
        sum(
            registry.get_sample_value(
                "token_sidecar_exchange_cache_total", {"profile": PROFILE, "outcome": outcome}
            )
            or 0
            for outcome in ("hit", "miss", "coalesced", "negative")
        )
    )


def sub(idp: DevIdP, token: str) -> str:
    return str(idp.verify_token(token, AUDIENCE)["sub"])


def user(idp: DevIdP, name: str, expires_in: float = 3600) -> str:
    return idp.issue_user_token(name, MCP_AUDIENCE, expires_in=expires_in)


# -- TokenClient.exchange -------------------------------------------------------------------


async def test_exchange_twice_costs_one_daemon_call(stack, clock, idp):
    """The same user twice: one POST to the daemon; 20 at once: still one."""
    alice = user(idp, "alice")
    async with TokenClient(stack["url"], profile=PROFILE, clock=clock) as client:
        tokens = await asyncio.gather(*(client.exchange(alice) for _ in range(20)))
        again = await client.exchange(alice)
        assert client.cached_exchange(alice) is again
    assert len({t.access_token for t in [*tokens, again]}) == 1
    assert exchange_posts(stack) == 1
    assert (again.profile, again.stale, again.token_type) == (PROFILE, False, "Bearer")
    assert sub(idp, again.access_token) == "alice"


async def test_different_users_get_their_own_tokens(stack, clock, idp):
    """Two users: two daemon calls, two tokens, each with its own sub; scope is part of the key."""
    async with TokenClient(stack["url"], clock=clock) as client:
        alice = await client.exchange(user(idp, "alice"), PROFILE)
        bob = await client.exchange(user(idp, "bob"), PROFILE)
        narrowed = await client.exchange(user(idp, "bob"), PROFILE, scope="read:tools")
    assert (sub(idp, alice.access_token), sub(idp, bob.access_token)) == ("alice", "bob")
    assert alice.access_token != bob.access_token
    assert narrowed.scope == "read:tools"
    assert exchange_posts(stack) == 3


async def test_entry_is_used_until_min_ttl(stack, clock, idp):
    """A cached per-user token is used while more than min_ttl is left, then exchanged anew."""
    alice = user(idp, "alice", expires_in=10 * 86400)
    async with TokenClient(stack["url"], profile=PROFILE, clock=clock) as client:
        first = await client.exchange(alice)
        assert clock.time() + 60 < first.expires_at < clock.time() + 10 * 86400
        await run_for(clock, stack["service"], first.expires_at - clock.time() - 31)
        assert (await client.exchange(alice)) is first
        assert exchange_posts(stack) == 1
        await run_for(clock, stack["service"], 2)
        second = await client.exchange(alice)
        assert second.access_token != first.access_token
        assert (await client.exchange(alice)) is second
    assert exchange_posts(stack) == 2


async def test_errors_carry_the_exchange_codes(stack, clock, idp):
    """Refusals are SidecarError with the daemon's code; no user token in the message or repr."""
    expired = user(idp, "old", expires_in=-10)
    async with TokenClient(stack["url"], profile=PROFILE, clock=clock) as client:
        with pytest.raises(SidecarError) as info:
            await client.exchange(expired)
        assert (info.value.code, info.value.status) == ("invalid_subject", 401)
        idp.faults.exchange_error = "access_denied"
        denied = user(idp, "denied")
        with pytest.raises(SidecarError) as refused:
            await client.exchange(denied)
        assert (refused.value.code, refused.value.status) == ("exchange_denied", 403)
        assert refused.value.idp is not None
        assert refused.value.idp["error"] == "access_denied"
        idp.faults.clear()
        with pytest.raises(SidecarError) as plain:
            await client.exchange(user(idp, "x"), "api")  # a client-credentials profile
        assert (plain.value.code, plain.value.status) == ("bad_request", 400)
        ok = await client.exchange(user(idp, "alice"))  # positive control
        shown = [repr(client), str(client), repr(client._exchanged), repr(ok)]
    for exc in (info.value, refused.value):
        shown += [str(exc), repr(exc), exc.message]
    assert ok.access_token in stack["api"].idp.issued_tokens
    for subject in (expired, denied):
        assert not [text for text in shown if subject in text]
    assert not [text for text in shown if ok.access_token in text]


async def test_exchange_sync_shares_the_cache(stack, clock, idp):
    """exchange_sync from a worker thread fills the cache the async path then uses."""
    alice = user(idp, "alice")
    async with TokenClient(stack["url"], profile=PROFILE, clock=clock) as client:
        token = await asyncio.to_thread(client.exchange_sync, alice)
        assert (await client.exchange(alice)) is token
        again = await asyncio.to_thread(client.exchange_sync, alice)
        assert again is token
        fresh = await asyncio.to_thread(client.invalidate_exchange_sync, token, alice)
    assert fresh.access_token != token.access_token
    assert sub(idp, fresh.access_token) == "alice"
    assert exchange_posts(stack) == 2
    assert exchanges(stack) == 2


async def test_invalidate_exchange_drops_here_and_at_the_daemon(stack, clock, idp):
    """A rejected per-user token: the daemon exchanges anew; the new token is then cached."""
    alice = user(idp, "alice")
    async with TokenClient(stack["url"], profile=PROFILE, clock=clock) as client:
        first = await client.exchange(alice)
        fresh = await client.invalidate_exchange(first, alice)
        assert fresh.access_token != first.access_token
        assert (await client.exchange(alice)) is fresh
    assert exchanges(stack) == 2
    assert exchange_posts(stack) == 2


def test_subject_cache_is_bounded_and_keyed_by_hash():
    """1,000 entries at most, least recently used evicted; keys hold no user's token."""
    cache = SubjectTokens(max_entries=3)
    tokens = [Token(f"t{n}", 2e9, stale=False, profile=PROFILE) for n in range(4)]
    keys = [subject_key(PROFILE, None, f"user-token-{n}") for n in range(4)]
    for key, token in zip(keys[:3], tokens[:3], strict=True):
        cache.put(key, token)
    assert cache.get(keys[0]) is tokens[0]  # now the most recently used
    cache.put(keys[3], tokens[3])
    assert len(cache) == 3
    assert cache.get(keys[1]) is None  # the least recently used went
    assert cache.get(keys[0]) is tokens[0]
    assert all(len(k) == 32 and b"user-token" not in k for k in keys)
    assert subject_key(PROFILE, "b a", "u") == subject_key(PROFILE, "a b a", "u")
    assert subject_key(PROFILE, "a", "u") != subject_key(PROFILE, None, "u")
    assert cache.drop(keys[0], tokens[1]) is False  # not the token held
    assert cache.drop(keys[0], tokens[0]) is True
    assert repr(cache) == "SubjectTokens(entries=2, max_entries=3)"
    assert TokenClient()._exchanged.max_entries == 1000


# -- the adapters ----------------------------------------------------------------------------


@pytest.fixture(params=["httpx2", "httpx"])
def lib(request) -> ModuleType:
    return importlib.import_module(request.param)


async def test_httpx_auth_attaches_each_users_token(stack, clock, idp, lib):
    """subject= a contextvar's get: each request carries its own user's token; 1 exchange each."""
    current: contextvars.ContextVar[str | None] = contextvars.ContextVar("user", default=None)
    alice, bob = user(idp, "alice"), user(idp, "bob")
    api = stack["api"]
    async with TokenClient(stack["url"], profile="api", clock=clock) as client:
        auth = SidecarAuth(client, PROFILE, subject=current.get)
        async with lib.AsyncClient(auth=auth) as http:
            for who in (alice, bob, alice):
                current.set(who)
                assert (await http.get(stack["api_url"])).status_code == 200
            current.set(None)
            with pytest.raises(SidecarError) as info:
                await http.get(stack["api_url"])
        assert info.value.code == "missing_subject"
        plain = SidecarAuth(client)  # positive control: no subject, the profile's token
        async with lib.AsyncClient(auth=plain) as http:
            assert (await http.get(stack["api_url"])).status_code == 200
    assert [sub(idp, t) for t in api.seen[:3]] == ["alice", "bob", "alice"]
    assert sub(idp, api.seen[3]) not in {"alice", "bob"}
    assert exchange_posts(stack) == 2
    assert alice not in repr(auth)
    assert "subject=[per-user]" in repr(auth)


async def test_httpx_request_extension_names_the_user(stack, clock, idp, lib):
    """extensions={"token_sidecar_subject": ...} makes one request per-user, sync flow too."""
    alice = user(idp, "alice")
    api = stack["api"]
    async with TokenClient(stack["url"], profile=PROFILE, clock=clock) as client:
        async with lib.AsyncClient(auth=SidecarAuth(client, PROFILE)) as http:
            resp = await http.get(stack["api_url"], extensions={"token_sidecar_subject": alice})
            assert resp.status_code == 200

        def sync_call() -> int:
            with lib.Client(auth=SidecarAuth(client, PROFILE)) as http:
                ext = {"token_sidecar_subject": user(idp, "bob")}
                return int(http.get(stack["api_url"], extensions=ext).status_code)

        assert await asyncio.to_thread(sync_call) == 200
    assert [sub(idp, t) for t in api.seen] == ["alice", "bob"]


async def test_httpx_401_drops_the_users_token_and_retries_once(stack, clock, idp, lib):
    """A 401 for alice's token: dropped, exchanged anew at the daemon, sent once more: 200."""
    alice = user(idp, "alice")
    api = stack["api"]
    async with TokenClient(stack["url"], profile=PROFILE, clock=clock) as client:
        first = await client.exchange(alice)
        api.rejected.add(first.access_token)
        async with lib.AsyncClient(auth=SidecarAuth(client, PROFILE, subject=alice)) as http:
            resp = await http.post(stack["api_url"], content=b"payload")
            assert resp.status_code == 200
            second = api.seen[-1]
            assert second != first.access_token
            assert sub(idp, second) == "alice"
            assert (await client.exchange(alice)).access_token == second
            api.always_401 = True  # every token refused: one retry, then the 401 stands
            resp = await http.post(stack["api_url"], content=b"payload")
            assert resp.status_code == 401
    assert api.seen[:2] == [first.access_token, second]
    assert len(api.seen) == 4
    assert exchanges(stack) == 3
    assert api.bodies == [b"payload"] * 4


async def test_aiohttp_middleware_per_user_and_401(stack, clock, idp):
    """sidecar_middleware(subject=...): the user's token; a 401 drops it and retries once."""
    alice, bob = user(idp, "alice"), user(idp, "bob")
    api = stack["api"]
    async with TokenClient(stack["url"], profile=PROFILE, clock=clock) as client:
        middleware = sidecar_middleware(client, PROFILE, subject=alice)
        async with aiohttp.ClientSession(middlewares=(middleware,)) as http:
            async with http.get(stack["api_url"]) as resp:
                assert resp.status == 200
            api.rejected.add(api.seen[-1])
            async with http.post(stack["api_url"], data=b"x") as resp:
                assert resp.status == 200
            per_request = (sidecar_middleware(client, PROFILE, subject=bob),)
        async with (
            aiohttp.ClientSession() as plain,
            plain.get(stack["api_url"], middlewares=per_request) as resp,
        ):
            assert resp.status == 200
    assert [sub(idp, t) for t in api.seen] == ["alice", "alice", "alice", "bob"]
    assert api.seen[1] != api.seen[2]
    assert exchanges(stack) == 3


async def test_thread_safety_of_the_sync_exchange(stack, clock, idp):
    """Four threads exchanging one user's token at once: one daemon call."""
    alice = user(idp, "alice")
    async with TokenClient(stack["url"], profile=PROFILE, clock=clock) as client:
        results: list[str] = []
        barrier = threading.Barrier(4, timeout=5)

        def work() -> None:
            barrier.wait()
            results.append(client.exchange_sync(alice).access_token)

        await asyncio.gather(*(asyncio.to_thread(work) for _ in range(4)))
    assert len(set(results)) == 1
    assert exchange_posts(stack) == 1
