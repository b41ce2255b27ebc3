"""Token exchange against the real dev IdP on loopback, in virtual time: cache, flights, faults."""

from __future__ import annotations

import asyncio
import base64
from types import MappingProxyType
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client import generate_latest

from sidecar.config import Config, EnvSecret, SubjectConfig
from sidecar.devidp import (
    ACCESS_TOKEN_TYPE,
    JWT_BEARER_GRANT,
    TOKEN_EXCHANGE_GRANT,
    generate_private_key,
    public_key_pem,
)
from sidecar.errors import (
    BadExchangeRequestError,
    ExchangeDeniedError,
    ExchangeError,
    ExchangeUnavailableError,
    InvalidSubjectError,
    SubjectRejectedError,
)
from tests.support.builders import (
    AUDIENCE,
    CLIENT_ID,
    MCP_AUDIENCE,
    make_exchange_profile,
    make_profile,
)
from tests.support.metrics import sample

DAY = 86400
CLAIMS = '{"access_token":{"acrs":{"essential":true,"value":"c1"}}}'


def lookups(metrics, outcome: str, profile: str = "user-api") -> float:
    return sample(metrics, "token_sidecar_exchange_cache_total", profile=profile, outcome=outcome)


def results(metrics, result: str, profile: str = "user-api") -> float:
    return sample(metrics, "token_sidecar_exchange_total", profile=profile, result=result)


def entries(metrics, profile: str = "user-api") -> float:
    return sample(metrics, "token_sidecar_exchange_cache_entries", profile=profile)


async def refused(coro, kind: type[ExchangeError]) -> ExchangeError:
    """Await ``coro`` and return the refusal it raised, which must be of ``kind``."""
    with pytest.raises(kind) as info:
        await coro
    return info.value


@pytest.fixture
def exchanges(idp, make_service):
    """A started service with the ``user-api`` exchange profile (overrides as keywords)."""

    def build(**overrides):
        return make_service(make_exchange_profile(idp, **overrides)).exchanges

    return build


# -- users and the cache -----------------------------------------------------------


async def test_two_users_get_their_own_tokens_and_repeats_are_cached(idp, exchanges, metrics):
    """Two users get two tokens whose sub is their own; the same user twice costs 1 request."""
    service = exchanges()
    alice, bob = (idp.issue_user_token(u, MCP_AUDIENCE) for u in ("alice", "bob"))
    first = await service.exchange("user-api", alice)
    second = await service.exchange("user-api", bob)
    again = await service.exchange("user-api", alice)
    assert idp.token_requests == 2
    assert [a.cached for a in (first, second, again)] == [False, False, True]
    assert again.token is first.token
    for answer, user in ((first, "alice"), (second, "bob")):
        claims = idp.verify_token(answer.token.value, AUDIENCE)
        assert (claims["sub"], claims["act"]) == (user, {"sub": CLIENT_ID})
        assert answer.token.issued_token_type == ACCESS_TOKEN_TYPE
        assert answer.token.scope == "read:tools"
    assert first.token.value != second.token.value
    record = idp.requests[0]
    assert record.fields["grant_type"] == TOKEN_EXCHANGE_GRANT
    assert record.fields["audience"] == AUDIENCE
    assert record.fields["subject_token_type"] == ACCESS_TOKEN_TYPE
    assert record.subject_token == alice
    assert (lookups(metrics, "miss"), lookups(metrics, "hit")) == (2, 1)
    assert (results(metrics, "success"), entries(metrics)) == (2, 2)


async def test_500_concurrent_callers_for_a_new_subject_cost_one_request(
    idp, exchanges, clock, metrics
):
    """500 concurrent requests for one new user: 1 IdP request, one answer for all."""
    service = exchanges()
    user = idp.issue_user_token("carol", MCP_AUDIENCE)
    idp.faults.hang = True
    calls = [asyncio.ensure_future(service.exchange("user-api", user)) for _ in range(500)]
    await asyncio.wait_for(idp.faults.wait_hung(1), 5)
    await clock.wait_for_sleepers(500)  # every caller waits on the one flight, bounded
    assert service.exchangers["user-api"].status()["in_flight"] == 1
    idp.release_hang()
    answers = await asyncio.gather(*calls)
    assert idp.token_requests == 1
    assert len({a.token.value for a in answers}) == 1
    assert sorted(a.cached for a in answers) == [False] + [True] * 499
    assert (lookups(metrics, "miss"), lookups(metrics, "coalesced")) == (1, 499)
    assert results(metrics, "success") == 1


async def test_entry_dies_with_a_short_lived_subject(idp, exchanges, clock):
    """A 60 s user token exchanged for a 24 h token: the entry ends when the user's token does."""
    idp.token_lifetime = DAY
    service = exchanges()
    user = idp.issue_user_token("dave", MCP_AUDIENCE, expires_in=60)
    first = await service.exchange("user-api", user)
    assert first.expires_in == 60
    assert first.token.capped_by_subject
    assert first.token.expires_at_wall == clock.time() + 60
    issued = idp.verify_token(first.token.value, AUDIENCE)
    assert issued["exp"] == clock.time() + DAY  # the IdP's token would live a day
    await clock.advance(29)
    hit = await service.exchange("user-api", user)
    assert (hit.cached, hit.expires_in) == (True, 31)
    await clock.advance(1)  # 30 s left: no more than min_ttl
    error = await refused(service.exchange("user-api", user), InvalidSubjectError)
    assert "less than min_ttl" in error.message
    assert idp.token_requests == 1
    assert len(service.exchangers["user-api"].cache) == 0


async def test_min_ttl_beyond_the_subject_is_refused_locally(idp, exchanges):
    """Asking for more life than the user's token has left is invalid_subject, no IdP call."""
    service = exchanges()
    user = idp.issue_user_token("erin", MCP_AUDIENCE, expires_in=300)
    await refused(service.exchange("user-api", user, min_ttl=600), InvalidSubjectError)
    assert idp.token_requests == 0
    answer = await service.exchange("user-api", user, min_ttl=200)  # positive control
    assert answer.expires_in == 300
    # The entry ends with the subject: asking for more costs no new request either.
    await refused(service.exchange("user-api", user, min_ttl=400), InvalidSubjectError)
    assert idp.token_requests == 1


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda idp: idp.issue_user_token("u", MCP_AUDIENCE, -1), id="expired"),
        pytest.param(lambda idp: idp.issue_user_token("u", "https://other/"), id="wrong-aud"),
        pytest.param(
            lambda idp: idp.issue_user_token("u", MCP_AUDIENCE, issuer="https://evil/"),
            id="wrong-iss",
        ),
        pytest.param(
            lambda idp: idp.issue_user_token("u", MCP_AUDIENCE, unpublished_key=True),
            id="unknown-key",
        ),
        pytest.param(
            lambda idp: _tampered(idp.issue_user_token("u", MCP_AUDIENCE)), id="bad-signature"
        ),
        pytest.param(lambda _: "opaque-LEAKCANARY-subject", id="not-a-jwt"),
    ],
)
async def test_bad_subjects_are_refused_locally(idp, exchanges, metrics, leaks, make):
    """Expired, foreign, wrong-audience and badly signed users' tokens never reach the IdP."""
    service = exchanges()
    token = make(idp)
    leaks.add(token)
    error = await refused(service.exchange("user-api", token), InvalidSubjectError)
    assert (error.status, error.code) == (401, "invalid_subject")
    assert token not in error.message
    assert idp.token_requests == 0
    assert results(metrics, "invalid_subject") == 1
    good = idp.issue_user_token("u", MCP_AUDIENCE)  # positive control
    assert (await service.exchange("user-api", good)).cached is False
    assert idp.token_requests == 1


def _tampered(token: str) -> str:
    """``token`` with another payload under the same signature."""
    header, payload, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = base64.urlsafe_b64encode(
        jwt.utils.base64url_decode(payload).replace(claims["sub"].encode(), b"x")
    )
    return f"{header}.{forged.decode().rstrip('=')}.{signature}"


async def test_unknown_kids_within_the_jwks_cooldown_are_invalid_not_unavailable(
    idp, exchanges, clock
):
    """A stream of tokens signed by unknown keys: one JWKS refetch, every one a 401."""
    service = exchanges()
    good = idp.issue_user_token("u", MCP_AUDIENCE)
    await service.exchange("user-api", good)
    fetched = idp.jwks_requests
    await clock.advance(10)  # past the refetch cooldown: the first unknown kid refetches
    for _ in range(3):
        forged = idp.issue_user_token("u", MCP_AUDIENCE, unpublished_key=True)
        await refused(service.exchange("user-api", forged), InvalidSubjectError)
    assert idp.jwks_requests == fetched + 1


async def test_leeway_moves_the_subjects_expiry_for_check_and_cap(idp, exchanges):
    """leeway moves the subject's expiry later, for the min_ttl check and the entry alike."""
    user = idp.issue_user_token("u", MCP_AUDIENCE, expires_in=20)  # less than min_ttl (30 s)
    await refused(exchanges().exchange("user-api", user), InvalidSubjectError)
    subject = SubjectConfig(
        issuer=idp.issuer,
        jwks_url=f"{idp.base_url}/.well-known/jwks.json",
        audience=MCP_AUDIENCE,
        leeway=120,
    )
    answer = await exchanges(name="lenient", subject=subject).exchange("lenient", user)
    assert answer.expires_in == 140
    assert answer.token.capped_by_subject
    assert idp.token_requests == 1


async def test_verify_none_lets_the_idp_judge_but_reads_a_jwt_exp(idp, exchanges, leaks):
    """verify = "none": an expired JWT is still refused locally, an opaque token goes to the IdP."""
    service = exchanges(subject=SubjectConfig(verify="none"))
    expired = idp.issue_user_token("u", MCP_AUDIENCE, expires_in=-1)
    await refused(service.exchange("user-api", expired), InvalidSubjectError)
    assert idp.token_requests == 0
    opaque = "opaque-LEAKCANARY-user-token"
    leaks.add(opaque)
    error = await refused(service.exchange("user-api", opaque), SubjectRejectedError)
    assert idp.token_requests == 1
    assert opaque not in error.message
    foreign = idp.issue_user_token("u", "https://other/", expires_in=120)  # not checked here
    await refused(service.exchange("user-api", foreign), SubjectRejectedError)
    good = idp.issue_user_token("u", MCP_AUDIENCE, expires_in=120)
    answer = await service.exchange("user-api", good)
    assert (answer.expires_in, answer.token.capped_by_subject) == (120, True)


# -- rejections, the negative cache and the breaker -------------------------------------


async def test_serve_now_answers_hits_without_awaiting_and_nothing_else(idp, exchanges, metrics):
    """serve_now: None before the exchange (no IdP call, nothing counted), the hit after it,
    a narrower scope under its own key, and a remembered rejection raised."""
    service = exchanges(negative_ttl=5.0)
    exchanger = service.exchangers["user-api"]
    alice, frank = (idp.issue_user_token(u, MCP_AUDIENCE) for u in ("alice", "frank"))
    assert exchanger.serve_now(alice) is None
    assert (idp.token_requests, lookups(metrics, "hit"), lookups(metrics, "miss")) == (0, 0, 0)
    issued = await exchanger.exchange(alice)
    hit = exchanger.serve_now(alice)
    assert hit is not None
    assert (hit.token, hit.cached) == (issued.token, True)
    with pytest.raises(InvalidSubjectError):  # the user's token ends first: refused locally
        exchanger.serve_now(alice, min_ttl=issued.expires_in + 1)
    assert exchanger.serve_now(alice, scope="read:tools") is not None  # the profile's whole scope
    idp.faults.subject_rejected = True
    await refused(exchanger.exchange(frank), SubjectRejectedError)
    with pytest.raises(SubjectRejectedError):
        exchanger.serve_now(frank)
    assert idp.token_requests == 2
    assert (lookups(metrics, "hit"), lookups(metrics, "negative")) == (2, 1)


async def test_rejected_subject_is_remembered_for_negative_ttl(idp, exchanges, clock, metrics):
    """invalid_grant: 401 subject_rejected; again within negative_ttl: no new IdP request."""
    service = exchanges(negative_ttl=5.0)
    user = idp.issue_user_token("frank", MCP_AUDIENCE)
    idp.faults.subject_rejected = True
    error = await refused(service.exchange("user-api", user), SubjectRejectedError)
    assert (error.status, error.code, error.error) == (401, "subject_rejected", "invalid_grant")
    await clock.advance(4.9)
    again = await refused(service.exchange("user-api", user), SubjectRejectedError)
    assert again is not error
    assert again.message == error.message
    assert idp.token_requests == 1
    assert (lookups(metrics, "negative"), results(metrics, "subject_rejected")) == (1, 1)
    idp.faults.subject_rejected = False
    await clock.advance(0.1)  # negative_ttl has passed: the IdP is asked again
    assert (await service.exchange("user-api", user)).cached is False
    assert idp.token_requests == 2


async def test_zero_negative_ttl_remembers_nothing(idp, exchanges):
    """negative_ttl = 0: every request for a rejected user goes to the IdP."""
    service = exchanges(negative_ttl=0.0)
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    idp.faults.subject_rejected = True
    for _ in range(2):
        await refused(service.exchange("user-api", user), SubjectRejectedError)
    assert idp.token_requests == 2


async def test_many_rejected_subjects_do_not_open_the_circuit_but_5xx_do(
    idp, exchanges, clock, metrics
):
    """1,000 rejected users leave the circuit closed; five 503s open it for everyone."""
    # Opaque users' tokens (the IdP judges them): 1,000 signatures would only cost time.
    service = exchanges(subject=SubjectConfig(verify="none"))
    idp.faults.subject_rejected = True
    for n in range(1000):
        await refused(service.exchange("user-api", f"opaque-{n}"), SubjectRejectedError)
    exchanger = service.exchangers["user-api"]
    assert exchanger.status()["circuit"] == "closed"
    assert exchanger.cache.rejections == 1000
    assert results(metrics, "subject_rejected") == 1000
    idp.faults.clear()
    idp.faults.status = 503
    for n in range(5):
        error = await refused(service.exchange("user-api", f"down-{n}"), ExchangeUnavailableError)
        assert (error.status, error.retry_after) == (503, 1.0)
    assert exchanger.status()["circuit"] == "open"
    assert sample(metrics, "token_sidecar_circuit_state", profile="user-api") == 2
    requests = idp.token_requests
    error = await refused(service.exchange("user-api", "next"), ExchangeUnavailableError)
    assert error.result == "circuit_open"
    assert error.retry_after == 30.0
    assert idp.token_requests == requests
    assert (results(metrics, "error"), results(metrics, "circuit_open")) == (5, 1)
    # A transient failure is not remembered: the breaker, not the cache, holds callers off.
    assert exchanger.cache.rejections == 1000


async def test_rate_limit_holds_exchanges_off_without_opening_the_circuit(
    idp, exchanges, clock, metrics
):
    """A 429 is 503 with its Retry-After, holds later misses off and never trips the breaker."""
    service = exchanges()
    idp.faults.rate_limit = True
    idp.faults.retry_after = 7
    idp.faults.remaining = 1
    users = [idp.issue_user_token(f"u{n}", MCP_AUDIENCE) for n in range(3)]
    error = await refused(service.exchange("user-api", users[0]), ExchangeUnavailableError)
    assert (error.status, error.result, error.retry_after) == (503, "rate_limited", 7)
    await clock.advance(3)
    held = await refused(service.exchange("user-api", users[1]), ExchangeUnavailableError)
    assert (held.result, held.retry_after) == ("rate_limited", 4)
    assert idp.token_requests == 1
    await clock.advance(4)
    assert (await service.exchange("user-api", users[2])).cached is False
    assert service.exchangers["user-api"].status()["circuit"] == "closed"
    assert results(metrics, "rate_limited") == 2


async def test_denial_shows_the_idps_words(idp, exchanges):
    """An IdP refusal other than invalid_grant is 403 exchange_denied with its error."""
    service = exchanges()
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    idp.faults.exchange_error = "access_denied"
    error = await refused(service.exchange("user-api", user), ExchangeDeniedError)
    assert (error.status, error.code, error.error) == (403, "exchange_denied", "access_denied")
    assert error.description == "Injected refusal: access_denied"
    assert error.claims is None


async def test_issued_token_failing_verification_is_unavailable_not_remembered(
    idp, exchanges, metrics
):
    """An exchanged token for the wrong audience is refused (503), not cached, not remembered."""
    service = exchanges()
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    idp.faults.wrong_aud = True
    idp.faults.remaining = 1
    error = await refused(service.exchange("user-api", user), ExchangeUnavailableError)
    assert error.error == "invalid_token"
    assert (await service.exchange("user-api", user)).cached is False
    assert idp.token_requests == 2
    assert service.exchangers["user-api"].status()["circuit"] == "closed"


# -- the LRU bound -----------------------------------------------------------------------


async def test_cache_is_bounded_and_evicts_the_least_recently_used(idp, exchanges, metrics):
    """cache_max_entries = 100 with 1,000 users: 100 held, the busiest kept, metrics right."""
    # Opaque issued tokens: 1,000 signatures and their checks would only cost time.
    service = exchanges(cache_max_entries=100, verify="none")
    idp.faults.opaque = True
    busy = idp.issue_user_token("busy", MCP_AUDIENCE)
    await service.exchange("user-api", busy)
    users = [idp.issue_user_token(f"user-{n}", MCP_AUDIENCE) for n in range(999)]
    for n, user in enumerate(users):
        await service.exchange("user-api", user)
        if n % 50 == 0:
            assert (await service.exchange("user-api", busy)).cached is True
    exchanger = service.exchangers["user-api"]
    assert len(exchanger.cache) == 100
    assert entries(metrics) == 100
    # The bound is exported next to the entries, for the cache-near-full alert.
    assert sample(metrics, "token_sidecar_exchange_cache_capacity", profile="user-api") == 100
    assert exchanger.cache.evictions == 900
    assert (await service.exchange("user-api", busy)).cached is True  # recently used: kept
    assert (await service.exchange("user-api", users[-1])).cached is True
    requests = idp.token_requests
    assert (await service.exchange("user-api", users[0])).cached is False  # evicted long ago
    assert idp.token_requests == requests + 1
    assert lookups(metrics, "miss") == 1001
    assert lookups(metrics, "hit") == 20 + 2
    status = exchanger.status()
    assert (status["entries"], status["hits"], status["misses"]) == (100, 22, 1001)


# -- scope -------------------------------------------------------------------------------


async def test_scope_may_only_narrow_and_is_part_of_the_key(idp, exchanges):
    """A narrower scope is its own entry; a wider one is 400 bad_request, decided locally."""
    service = exchanges(scope="read:tools write:tools")
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    full = await service.exchange("user-api", user)
    narrow = await service.exchange("user-api", user, scope="read:tools")
    assert (full.token.scope, narrow.token.scope) == ("read:tools write:tools", "read:tools")
    assert idp.requests[-1].fields["scope"] == "read:tools"
    same = await service.exchange("user-api", user, scope="write:tools read:tools")
    assert same.cached is True  # the same scope, in another order
    assert same.token is full.token
    for scope in ("read:tools admin", "", "  "):
        error = await refused(
            service.exchange("user-api", user, scope=scope), BadExchangeRequestError
        )
        assert (error.status, error.code) == (400, "bad_request")
        assert "admin" not in error.message
    assert idp.token_requests == 2


# -- drop, client auth, Entra OBO -----------------------------------------------------------


async def test_drop_forgets_one_users_entry(idp, exchanges):
    """drop() forgets one user's token (proxy mode's 401 rule); the next call exchanges again."""
    service = exchanges()
    alice, bob = (idp.issue_user_token(u, MCP_AUDIENCE) for u in ("alice", "bob"))
    await service.exchange("user-api", alice)
    await service.exchange("user-api", bob)
    assert service.drop("user-api", alice) is True
    assert service.drop("user-api", alice) is False
    assert (await service.exchange("user-api", alice)).cached is False
    assert (await service.exchange("user-api", bob)).cached is True
    assert idp.token_requests == 3


@pytest.mark.parametrize("grant", ["token_exchange", "jwt_bearer"])
@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic", "private_key_jwt"])
async def test_every_client_auth_method_with_both_grants(
    idp, make_service, tmp_path, grant, method
):
    """Both grants work with client_secret_post, client_secret_basic and private_key_jwt."""
    extra: dict[str, Any] = {"client_auth": method}
    if method == "private_key_jwt":
        key = generate_private_key()
        path = tmp_path / "key.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        idp.clients[CLIENT_ID].public_key_pem = public_key_pem(key)
        extra |= {"client_secret": None, "private_key_file": path}
    if grant == "jwt_bearer":
        extra |= {"scope": f"{AUDIENCE}read:tools"}
    service = make_service(make_exchange_profile(idp, grant=grant, **extra)).exchanges
    user = idp.issue_user_token("grace", MCP_AUDIENCE)
    answer = await service.exchange("user-api", user)
    claims = idp.verify_token(answer.token.value, AUDIENCE)
    assert claims["sub"] == "grace"
    record = idp.requests[-1]
    assert record.auth_method == method
    expected_grant = TOKEN_EXCHANGE_GRANT if grant == "token_exchange" else JWT_BEARER_GRANT
    assert record.fields["grant_type"] == expected_grant
    assert record.subject_token == user
    if grant == "jwt_bearer":
        assert record.fields["requested_token_use"] == "on_behalf_of"
        assert "audience" not in record.fields
        assert (answer.token.scope, answer.token.issued_token_type) == (
            f"{AUDIENCE}read:tools",
            ACCESS_TOKEN_TYPE,
        )


async def test_entra_claims_challenge_is_denied_with_error_description_and_claims(idp, exchanges):
    """Entra's interaction_required with a claims challenge: 403 exchange_denied, words intact."""
    service = exchanges(grant="jwt_bearer", scope=f"{AUDIENCE}read:tools")
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    idp.faults.exchange_error = "interaction_required"
    idp.faults.exchange_claims = CLAIMS
    error = await refused(service.exchange("user-api", user), ExchangeDeniedError)
    assert (error.status, error.code) == (403, "exchange_denied")
    assert (error.error, error.claims) == ("interaction_required", CLAIMS)
    assert error.description == "Injected refusal: interaction_required"
    # invalid_grant with a claims challenge (conditional access) is a denial too.
    idp.faults.exchange_error = "invalid_grant"
    other = idp.issue_user_token("v", MCP_AUDIENCE)
    error = await refused(service.exchange("user-api", other), ExchangeDeniedError)
    assert (error.error, error.claims) == ("invalid_grant", CLAIMS)


# -- status, reload, secrets -------------------------------------------------------------


async def test_status_and_metrics_never_show_a_subject_or_token(
    idp, make_service, metrics, leaks, log_output
):
    """/status and /metrics show counts and the last error; no user token, token or secret."""
    service = make_service(make_profile(idp), make_exchange_profile(idp))
    await service.get("api")
    user = idp.issue_user_token("heidi", MCP_AUDIENCE)
    answer = await service.exchanges.exchange("user-api", user)
    await service.exchanges.exchange("user-api", user)
    idp.faults.subject_rejected = True
    other = idp.issue_user_token("ivan", MCP_AUDIENCE)
    await refused(service.exchanges.exchange("user-api", other), SubjectRejectedError)
    status = service.status()
    entry = status["profiles"]["user-api"]
    assert entry == {
        "grant": "token_exchange",
        "entries": 1,
        "max_entries": 10000,
        "hits": 1,
        "misses": 2,
        "coalesced": 0,
        "negative": 0,
        "hit_ratio": 0.3333,
        "in_flight": 0,
        "circuit": "closed",
        "last_error": {
            "kind": "subject_rejected",
            "error": "invalid_grant",
            "description": "Invalid subject token",
            "at": int(idp.clock.time()),
        },
    }
    assert status["profiles"]["api"]["state"] == "ready"
    assert service.readiness() == (True, {"api": "ok"})  # never required, never listed
    exposed = generate_latest(metrics.registry).decode()
    logged = log_output.getvalue()
    assert '"event":"exchange.failed"' in logged
    secrets = leaks.all_values()
    assert {user, other, answer.token.value} <= secrets  # positive control: all are scanned
    for value in secrets:
        assert value not in str(status)
        assert value not in exposed
        assert value not in logged
    for name in ("heidi", "ivan"):
        assert name not in exposed
        assert name not in str(status)


async def test_reload_keeps_unchanged_caches_and_switches_kinds(idp, make_service, metrics):
    """SIGHUP: an unchanged exchange profile keeps its cache; a changed one starts empty."""
    keep, change = make_exchange_profile(idp, "keep"), make_exchange_profile(idp, "change")
    service = make_service(keep, change, make_profile(idp, "flip"))
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    await service.exchanges.exchange("keep", user)
    await service.exchanges.exchange("change", user)
    changed = make_exchange_profile(idp, "change", negative_ttl=1.0)
    flipped = make_exchange_profile(idp, "flip")
    new = Config(profiles=MappingProxyType({"keep": keep, "change": changed, "flip": flipped}))
    await service.reload(new)
    assert (await service.exchanges.exchange("keep", user)).cached is True
    assert (await service.exchanges.exchange("change", user)).cached is False
    assert (await service.exchanges.exchange("flip", user)).cached is False
    # The changed profile's counts restarted with its cache; /status reads the same series.
    assert (lookups(metrics, "miss", "change"), lookups(metrics, "hit", "change")) == (1, 0)
    assert (lookups(metrics, "miss", "keep"), lookups(metrics, "hit", "keep")) == (1, 1)
    status = service.exchanges.status()
    assert (status["change"]["misses"], status["keep"]["hits"]) == (1, 1)
    assert "flip" not in service.refreshers
    assert sample(metrics, "token_sidecar_circuit_state", profile="flip") == 0
    assert (
        metrics.registry.get_sample_value(
            "token_sidecar_refresh_total", {"profile": "flip", "result": "success"}
        )
        is None
    )
    back = Config(profiles=MappingProxyType({"keep": keep, "flip": make_profile(idp, "flip")}))
    await service.reload(back)
    assert set(service.exchanges.exchangers) == {"keep"}
    assert (
        metrics.registry.get_sample_value(
            "token_sidecar_exchange_cache_entries", {"profile": "change"}
        )
        is None
    )
    assert (
        metrics.registry.get_sample_value(
            "token_sidecar_exchange_cache_capacity", {"profile": "change"}
        )
        is None
    )
    assert sample(metrics, "token_sidecar_exchange_cache_capacity", profile="keep") == 10000
    assert (await service.get("flip")).token.value
    assert sample(metrics, "token_sidecar_circuit_state", profile="flip") == 0


async def test_credentials_that_cannot_be_read_are_misconfigured(idp, exchanges):
    """An unreadable client secret is 503 misconfigured, and the IdP is not asked."""
    service = exchanges(client_secret=EnvSecret("NO_SUCH_SECRET_VARIABLE"))
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    error = await refused(service.exchange("user-api", user), ExchangeUnavailableError)
    assert (error.status, error.code) == (503, "misconfigured")
    assert idp.token_requests == 0


async def test_a_waiter_gives_up_after_wait_timeout(idp, exchanges, clock):
    """A caller waiting on a hung exchange gets 503 after wait_timeout; the flight goes on."""
    service = exchanges(wait_timeout=5.0, timeout=60.0, connect_timeout=1.0)
    user = idp.issue_user_token("u", MCP_AUDIENCE)
    idp.faults.hang = True
    first = asyncio.ensure_future(service.exchange("user-api", user))
    await asyncio.wait_for(idp.faults.wait_hung(1), 5)
    await clock.advance(5)
    error = await refused(first, ExchangeUnavailableError)
    assert error.message == "timed out waiting for the IdP"
    idp.release_hang()
    # The flight went on: this caller joins it or finds its token, with no new request.
    assert (await service.exchange("user-api", user)).cached is True
    assert idp.token_requests == 1


async def test_shutdown_ends_waits_at_once_and_still_serves_hits(idp, make_service, clock):
    """SIGTERM: a caller waiting on the IdP gets shutting_down at once; cached tokens serve."""
    service = make_service(make_exchange_profile(idp))
    cached = idp.issue_user_token("cached", MCP_AUDIENCE)
    await service.exchanges.exchange("user-api", cached)
    idp.faults.hang = True
    waiting = asyncio.ensure_future(
        service.exchanges.exchange("user-api", idp.issue_user_token("new", MCP_AUDIENCE))
    )
    await asyncio.wait_for(idp.faults.wait_hung(1), 5)
    service.begin_shutdown()
    error = await refused(waiting, ExchangeUnavailableError)
    assert (error.code, error.retry_after) == ("shutting_down", 1.0)
    assert (await service.exchanges.exchange("user-api", cached)).cached is True
    later = idp.issue_user_token("later", MCP_AUDIENCE)
    error = await refused(service.exchanges.exchange("user-api", later), ExchangeUnavailableError)
    assert error.code == "shutting_down"
    assert idp.token_requests == 2
