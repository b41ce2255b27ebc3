"""The refresh engine against the development IdP on loopback, in virtual time."""

from __future__ import annotations

import asyncio
import socket

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.breaker import CircuitState
from sidecar.config import BackoffConfig, BreakerConfig, FileSecret, InlineSecret, RefreshShare
from sidecar.devidp import DevClient
from sidecar.errors import TokenUnavailableError
from sidecar.profile_status import ProfileState
from tests.support.builders import AUDIENCE, CLIENT_ID, CLIENT_SECRET, make_profile, write_secret
from tests.support.metrics import sample
from tests.support.virtual_time import run_for

DAY = 86400.0


async def test_stampede_on_cold_profile_makes_one_idp_request(idp, make_service, clock):
    """A thousand concurrent callers on a cold profile cause exactly one IdP request."""
    idp.faults.delay = 0.05  # keep the first request in flight while callers pile up
    service = make_service(make_profile(idp))
    results = await asyncio.gather(*(service.get("api") for _ in range(1000)))
    assert idp.token_requests == 1
    assert len({r.token.value for r in results}) == 1
    assert not any(r.stale for r in results)


async def test_day_token_refreshes_once_per_window(idp, make_service, clock, metrics):
    """A 24 h token is refreshed once per window and never early without reason."""
    service = make_service(make_profile(idp))
    first = await service.get("api")
    refresher = service.refresher_for("api")
    window_start = first.token.refresh_at
    # Default 20 %: due between 17280 s and 17280 + 1728 s before expiry.
    assert DAY - 17280 - 1728 <= window_start - first.token.obtained_at <= DAY - 17280
    await run_for(clock, service, window_start - clock.monotonic() - 1)
    assert idp.issued == 1
    await run_for(clock, service, 2)
    assert idp.issued == 2
    second = refresher.token
    assert second is not None
    assert second.value != first.token.value
    assert second.obtained_at == window_start
    # Three more windows: each refresh happens exactly at the previous token's refresh instant.
    for _ in range(3):
        current = refresher.token
        assert current is not None
        issued = idp.issued
        await run_for(clock, service, current.refresh_at - clock.monotonic() - 1)
        assert idp.issued == issued
        await run_for(clock, service, 1)
        assert idp.issued == issued + 1
        assert refresher.token is not None
        assert refresher.token.obtained_at == current.refresh_at
    assert sample(metrics, "token_sidecar_refresh_total", profile="api", result="success") == 5


async def test_fifty_instances_started_together_spread_their_refreshes(idp, make_service, clock):
    """Fifty sidecars started at the same instant refresh at fifty different instants."""
    instants = []
    for seed in range(50):
        service = make_service(make_profile(idp), seed=seed)
        served = await service.get("api")
        instants.append(served.token.refresh_at - served.token.obtained_at)
        await service.aclose()
    assert len(set(instants)) == 50
    assert max(instants) - min(instants) > 1000  # spread over more than a quarter hour


async def test_outage_serves_stale_token_until_recovery(idp, make_service, clock, metrics):
    """Through an outage from refresh start to the min_ttl line, callers get the stale token."""
    service = make_service(make_profile(idp, backoff=_fast_backoff()))
    first = (await service.get("api")).token
    await run_for(clock, service, first.refresh_at - clock.monotonic() - 0.001)
    idp.faults.status = 503
    served = []
    servable_end = first.expires_at - 30  # min_ttl
    while clock.monotonic() < servable_end - 60:
        await run_for(clock, service, 60)
        served.append(await service.get("api"))
    assert all(s.token.value == first.value for s in served)
    assert all(s.stale for s in served)
    assert service.refresher_for("api").state() is ProfileState.STALE
    fallbacks = sum(
        sample(metrics, "token_sidecar_fallback_total", profile="api", reason=reason)
        for reason in ("refresh_failing", "circuit_open")
    )
    assert fallbacks == len(served)
    errors = sample(metrics, "token_sidecar_refresh_total", profile="api", result="error")
    assert errors > 5
    idp.faults.status = None
    await run_for(clock, service, 60)
    fresh = await service.get("api")
    assert fresh.token.value != first.value
    assert not fresh.stale
    assert service.refresher_for("api").state() is ProfileState.READY


async def test_outage_past_min_ttl_gives_unavailable(idp, make_service, clock):
    """Once no servable token remains, callers get token_unavailable with a retry hint."""
    profile = make_profile(idp, wait_timeout=2.0, backoff=_fast_backoff())
    service = make_service(profile)
    first = (await service.get("api")).token
    idp.faults.status = 500
    await run_for(clock, service, first.expires_at - 30 - clock.monotonic() + 1)
    task = asyncio.ensure_future(service.get("api"))
    await run_for(clock, service, 3)
    with pytest.raises(TokenUnavailableError) as info:
        await task
    assert info.value.code == "token_unavailable"
    assert info.value.retry_after >= 1
    assert service.refresher_for("api").state() is ProfileState.UNAVAILABLE


async def test_rate_limit_waits_retry_after_without_tripping_breaker(
    idp, make_service, clock, metrics
):
    """A 429 with Retry-After: 30 stops IdP requests for 30 virtual seconds; no breaker trip."""
    profile = make_profile(idp, breaker=BreakerConfig(failures=1, reset=300))
    service = make_service(profile)
    first = (await service.get("api")).token
    refresher = service.refresher_for("api")
    idp.faults.rate_limit = True
    idp.faults.retry_after = 30
    await run_for(clock, service, first.refresh_at - clock.monotonic())
    assert idp.token_requests == 2
    assert sample(metrics, "token_sidecar_refresh_total", profile="api", result="rate_limited") == 1
    await run_for(clock, service, 29.9)
    assert idp.token_requests == 2
    assert refresher.minter.circuit is CircuitState.CLOSED
    served = await service.get("api")
    assert served.token.value == first.value
    idp.faults.rate_limit = False
    await run_for(clock, service, 0.2)
    assert idp.token_requests == 3
    assert refresher.minter.circuit is CircuitState.CLOSED
    assert (await service.get("api")).token.value != first.value


async def test_rate_limit_without_token_fails_fast_with_retry_after(idp, make_service, clock):
    """A cold profile rate limited for longer than wait_timeout answers at once with the wait."""
    idp.faults.rate_limit = True
    idp.faults.retry_after = 120
    service = make_service(make_profile(idp))
    await run_for(clock, service, 0)
    with pytest.raises(TokenUnavailableError) as info:
        await service.get("api")
    assert info.value.retry_after == 120
    assert idp.token_requests == 1


async def test_breaker_opens_blocks_then_probes_once(idp, make_service, clock, metrics):
    """Five transient failures open the circuit; none reach the IdP until one probe closes it."""
    profile = make_profile(idp, breaker=BreakerConfig(failures=5, reset=30))
    idp.faults.status = 500
    service = make_service(profile)
    refresher = service.refresher_for("api")
    while refresher.minter.circuit is CircuitState.CLOSED:
        await run_for(clock, service, 1)
    assert idp.token_requests == 5
    assert sample(metrics, "token_sidecar_circuit_state", profile="api") == 2
    await run_for(clock, service, 29)
    assert idp.token_requests == 5
    idp.faults.status = None
    await run_for(clock, service, 2)
    assert idp.token_requests == 6  # exactly one probe
    assert refresher.minter.circuit is CircuitState.CLOSED
    assert sample(metrics, "token_sidecar_circuit_state", profile="api") == 0
    assert refresher.servable()


async def test_failed_probe_reopens_circuit(idp, make_service, clock):
    """A failing half-open probe reopens the circuit for another reset period."""
    profile = make_profile(idp, breaker=BreakerConfig(failures=2, reset=30))
    idp.faults.status = 502
    service = make_service(profile)
    refresher = service.refresher_for("api")
    while refresher.minter.circuit is CircuitState.CLOSED:
        await run_for(clock, service, 1)
    opened = idp.token_requests
    await run_for(clock, service, 31)
    assert idp.token_requests == opened + 1
    assert refresher.minter.circuit is CircuitState.OPEN


async def test_bad_credentials_are_misconfigured_and_retry_slowly(
    idp, make_service, clock, tmp_path
):
    """Bad credentials: misconfigured with the IdP's text, retried per 5 min, healed by the file."""
    secret_file = tmp_path / "client_secret"
    secret_file.write_text("wrong-secret")

    profile = make_profile(idp, client_secret=FileSecret(secret_file))
    service = make_service(profile)
    refresher = service.refresher_for("api")
    await run_for(clock, service, 0)
    assert refresher.state() is ProfileState.MISCONFIGURED
    status = refresher.status()
    assert status["last_error"] == {
        "kind": "rejected",
        "error": "access_denied",
        "description": "Unauthorized",
    }
    with pytest.raises(TokenUnavailableError) as info:
        await service.get("api")
    assert info.value.code == "misconfigured"
    assert "access_denied" in str(info.value)
    assert "Unauthorized" in str(info.value)
    await run_for(clock, service, 299)
    assert idp.token_requests == 1
    await run_for(clock, service, 2)
    assert idp.token_requests == 2
    # Fix the secret the way Kubernetes does; the watcher picks it up without a restart.

    write_secret(secret_file, CLIENT_SECRET)
    await run_for(clock, service, 11)
    assert idp.token_requests == 3
    assert refresher.state() is ProfileState.READY
    assert (await service.get("api")).stale is False


async def test_rejected_new_secret_keeps_valid_token(idp, make_service, clock, tmp_path):
    """A rotated secret that the IdP rejects does not drop the still-valid token."""

    secret_file = tmp_path / "client_secret"
    secret_file.write_text(CLIENT_SECRET)
    service = make_service(make_profile(idp, client_secret=FileSecret(secret_file)))
    first = (await service.get("api")).token
    write_secret(secret_file, "rotated-but-wrong")
    await run_for(clock, service, 11)
    refresher = service.refresher_for("api")
    assert idp.token_requests == 2
    assert refresher.state() is ProfileState.MISCONFIGURED
    served = await service.get("api")
    assert served.token.value == first.value


async def test_new_credentials_are_used_while_old_token_is_served(
    idp, make_service, clock, tmp_path
):
    """A changed secret file triggers a refresh with it while the old token serves."""

    secret_file = tmp_path / "client_secret"
    secret_file.write_text(CLIENT_SECRET)
    service = make_service(make_profile(idp, client_secret=FileSecret(secret_file)))
    first = (await service.get("api")).token
    idp.rotate_secret(CLIENT_ID, "the-new-secret-LEAKCANARY")
    write_secret(secret_file, "the-new-secret-LEAKCANARY")
    await run_for(clock, service, 11)
    assert idp.issued == 2
    assert (await service.get("api")).token.value != first.value


async def test_secret_file_mounted_after_start_is_used_at_once(idp, make_service, clock, tmp_path):
    """A secret file missing at start is picked up by the watcher when it appears."""
    secret_file = tmp_path / "client_secret"
    service = make_service(make_profile(idp, client_secret=FileSecret(secret_file)))
    refresher = service.refresher_for("api")
    await run_for(clock, service, 0)
    assert refresher.state() is ProfileState.MISCONFIGURED
    assert refresher.status()["last_error"]["error"] == "credentials_unavailable"
    assert idp.token_requests == 0
    write_secret(secret_file, CLIENT_SECRET)
    await run_for(clock, service, 10)
    assert idp.token_requests == 1
    assert refresher.state() is ProfileState.READY


async def test_automatic_verify_mode(idp, make_service, clock, metrics):
    """Automatic verify is jwks when a JWKS URL is known (opaque refused), else lenient."""
    idp.faults.opaque = True
    with_jwks = make_service(make_profile(idp))
    await run_for(clock, with_jwks, 0)
    assert with_jwks.refresher_for("api").state() is ProfileState.MISCONFIGURED
    without = make_service(make_profile(idp, name="opaque", jwks_url=None))
    await run_for(clock, without, 0)
    assert without.refresher_for("opaque").state() is ProfileState.READY
    idp.faults.opaque = False
    claims_only = make_service(make_profile(idp, name="claims", jwks_url=None))
    await run_for(clock, claims_only, 0)
    assert claims_only.refresher_for("claims").state() is ProfileState.READY
    assert idp.jwks_requests == 0


def _fast_backoff():

    return BackoffConfig(base=1.0, cap=30.0)


@pytest.mark.parametrize(
    ("fault", "result", "state"),
    [
        ("garbage", "error", ProfileState.UNAVAILABLE),
        ("reset", "error", ProfileState.UNAVAILABLE),
        ("wrong_aud", "invalid_token", ProfileState.MISCONFIGURED),
        ("expired", "invalid_token", ProfileState.MISCONFIGURED),
        ("unpublished_key", "invalid_token", ProfileState.MISCONFIGURED),
        ("omit_expires_in", "success", ProfileState.READY),
        ("expires_in_as_string", "success", ProfileState.READY),
    ],
)
async def test_faults_are_classified(idp, make_service, clock, metrics, fault, result, state):
    """Each kind of IdP misbehaviour lands in the class DESIGN.md gives it."""
    setattr(idp.faults, fault, True)
    service = make_service(make_profile(idp))
    await run_for(clock, service, 0)
    assert sample(metrics, "token_sidecar_refresh_total", profile="api", result=result) == 1
    assert service.refresher_for("api").state() is state


async def test_hang_is_a_timeout(idp, make_service, clock, metrics):
    """An IdP that never answers is cut off by the client timeout and counted as timeout."""
    idp.faults.hang = True
    service = make_service(make_profile(idp, timeout=0.2, connect_timeout=0.1))
    await run_for(clock, service, 0)
    assert sample(metrics, "token_sidecar_refresh_total", profile="api", result="timeout") == 1
    error = service.refresher_for("api").status()["last_error"]
    assert error["description"] == f"{idp.token_url} did not answer within 0.2s"


async def test_connection_refused_is_transient(make_service, clock, metrics, idp):
    """A closed port is a transient error, retried with backoff."""

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    profile = make_profile(idp, token_url=f"http://127.0.0.1:{port}/oauth/token")
    service = make_service(profile)
    await run_for(clock, service, 0)
    assert sample(metrics, "token_sidecar_refresh_total", profile="api", result="error") == 1
    assert service.refresher_for("api").status()["last_error"]["kind"] == "error"


async def test_unknown_host_is_transient(make_service, clock, metrics, idp):
    """An unresolvable host is a transient error, not a crash."""
    profile = make_profile(idp, token_url="http://idp.invalid/oauth/token")
    service = make_service(profile)
    await run_for(clock, service, 0)
    assert sample(metrics, "token_sidecar_refresh_total", profile="api", result="error") == 1


async def test_key_rotation_refetches_jwks_once(idp, make_service, clock):
    """A token signed by a new key triggers one JWKS refetch and then verifies."""
    service = make_service(make_profile(idp))
    first = (await service.get("api")).token
    assert idp.jwks_requests == 1
    idp.rotate_signing_key(publish=True)
    refresher = service.refresher_for("api")
    await run_for(clock, service, first.refresh_at - clock.monotonic())
    assert idp.jwks_requests == 2
    assert refresher.state() is ProfileState.READY
    assert refresher.token is not None
    assert refresher.token.value != first.value


async def test_rotation_within_jwks_cooldown_is_transient(idp, make_service, clock, metrics):
    """A new kid seen moments after a JWKS fetch is retried, not declared misconfigured."""
    service = make_service(make_profile(idp, wait_timeout=60.0))
    first = (await service.get("api")).token
    idp.rotate_signing_key(publish=True)
    refresher = service.refresher_for("api")
    invalidated = asyncio.ensure_future(refresher.invalidate(first.fingerprint))
    await run_for(clock, service, 0)
    assert refresher.status()["last_error"]["error"] == "unknown_kid"
    # No replacement yet: the reported token is served again, flagged stale.
    result, served = await invalidated
    assert (result, served.token.value, served.stale) == ("refreshed", first.value, True)
    assert refresher.state() is ProfileState.STALE
    await run_for(clock, service, 40)
    current = refresher.serve_now()
    assert current is not None
    assert current.token.value != first.value
    assert not current.stale
    assert refresher.state() is ProfileState.READY
    assert idp.jwks_requests == 2
    assert (
        sample(metrics, "token_sidecar_refresh_total", profile="api", result="invalid_token") == 0
    )


async def test_cancellation_mid_request_leaves_consistent_state(idp, make_service, clock):
    """Cancelling a half-open probe mid-request leaves no task, no token and a free probe slot."""
    idp.faults.status = 500
    service = make_service(make_profile(idp, breaker=BreakerConfig(failures=1, reset=5)))
    refresher = service.refresher_for("api")
    await run_for(clock, service, 0)
    assert refresher.minter.circuit is CircuitState.OPEN
    idp.faults.status = None
    idp.faults.hang = True
    await clock.advance(5)
    await idp.faults.wait_hung(1)  # the probe is in flight at the IdP
    assert refresher.alive
    await service.aclose()
    assert not refresher.alive
    assert refresher.token is None
    breaker = refresher.minter.breaker
    assert breaker.state is CircuitState.HALF_OPEN
    assert breaker.allow()  # the cancelled probe gave its slot back


async def test_min_ttl_forces_refresh(idp, make_service, clock):
    """Asking for more life than the current token has left refreshes first."""
    service = make_service(make_profile(idp))
    first = (await service.get("api")).token
    await run_for(clock, service, 3600)
    served = await service.get("api", min_ttl=DAY - 1800)
    assert served.token.value != first.value
    assert served.token.expires_in(clock.monotonic()) >= DAY - 1800


async def test_invalidate_outcomes(idp, make_service, clock, metrics):
    """Invalidate drops the current token once, then throttles, and ignores old tokens."""
    service = make_service(make_profile(idp))
    refresher = service.refresher_for("api")
    first = (await service.get("api")).token
    result, served = await refresher.invalidate(first.fingerprint)
    assert (result, served.token.value != first.value) == ("refreshed", True)
    result, again = await refresher.invalidate(served.token.fingerprint)
    assert result == "throttled"
    assert again.token.value == served.token.value
    result, _ = await refresher.invalidate(first.fingerprint)
    assert result == "already_rotated"
    await run_for(clock, service, 10)
    result, _ = await refresher.invalidate(served.token.fingerprint)
    assert result == "refreshed"
    for outcome, count in (("refreshed", 2), ("throttled", 1), ("already_rotated", 1)):
        assert (
            sample(metrics, "token_sidecar_invalidations_total", profile="api", result=outcome)
            == count
        )


async def test_private_key_jwt_sends_fresh_signed_assertions(idp, make_service, clock, tmp_path):
    """Each private_key_jwt request carries a new jti, and the assertion verifies."""

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    idp.add_client(
        DevClient(client_id="pkjwt", public_key_pem=public, audiences={AUDIENCE: ("read:tools",)})
    )
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem)

    profile = make_profile(
        idp,
        client_id=InlineSecret("pkjwt"),
        client_secret=None,
        client_auth="private_key_jwt",
        private_key_file=key_file,
        private_key_kid="k1",
    )
    service = make_service(profile)
    refresher = service.refresher_for("api")
    first = (await service.get("api")).token
    await refresher.invalidate(first.fingerprint)
    assertions = [r.client_assertion for r in idp.requests if r.client_assertion]
    assert len(assertions) == 2
    claims = [
        jwt.decode(
            a,
            public,
            algorithms=["RS256"],
            audience=idp.issuer,
            options={"verify_exp": False, "verify_iat": False},
        )
        for a in assertions
    ]
    assert claims[0]["jti"] != claims[1]["jti"]
    assert claims[0]["iss"] == claims[0]["sub"] == "pkjwt"
    assert claims[0]["exp"] - claims[0]["iat"] == 60
    assert jwt.get_unverified_header(assertions[0])["kid"] == "k1"


async def test_short_token_refreshes_at_half_life(idp, make_service, clock):
    """A 100 s token with the default policy refreshes at half-life at the latest."""
    idp.token_lifetime = 100
    service = make_service(make_profile(idp, refresh_before=RefreshShare(0.2)))
    token = (await service.get("api")).token
    assert 45 <= token.refresh_at - token.obtained_at <= 50


async def test_jwks_that_is_not_an_object_is_transient_and_frees_the_probe(
    idp, make_service, clock, metrics, aiohttp_server
):
    """A JWKS answering a JSON array is a transient error; the breaker's probe slot is freed."""

    async def array(_request):
        return web.json_response([1, 2, 3])

    app = web.Application()
    app.router.add_get("/jwks", array)
    bad = await aiohttp_server(app)
    profile = make_profile(
        idp, jwks_url=str(bad.make_url("/jwks")), breaker=BreakerConfig(failures=1, reset=5)
    )
    service = make_service(profile)
    refresher = service.refresher_for("api")
    await run_for(clock, service, 0)
    assert refresher.status()["last_error"]["kind"] == "error"
    assert refresher.minter.circuit is CircuitState.OPEN
    await run_for(clock, service, 30)
    # Every reset period lets exactly one probe through; the slot never sticks.
    assert idp.token_requests >= 3
    assert sample(metrics, "token_sidecar_refresh_total", profile="api", result="error") >= 3


async def test_memory_backend_logs_no_fleet_events(idp, make_service, log_output):
    """With the memory backend a refresh logs token.refreshed, and no fleet.* event."""
    service = make_service(make_profile(idp))
    await service.get("api")
    events = log_output.getvalue()
    assert '"event":"token.refreshed"' in events
    assert '"event":"fleet.' not in events
