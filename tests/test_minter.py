"""TokenMinter: breaker, IdP, verification and issuance on one path; shared tokens vetted."""

import asyncio
import random

import pytest

from sidecar.breaker import CircuitBreaker, CircuitState
from sidecar.credentials import CredentialStore
from sidecar.errors import CircuitOpenError, IdPUnavailableError, InvalidTokenError
from sidecar.fleet import SharedToken
from sidecar.idp import IdPClient
from sidecar.minter import TokenMinter
from sidecar.verify import TokenVerifier
from tests.support.builders import CLIENT_ID, make_profile


@pytest.fixture
def make_minter(idp, session, clock):
    def make(**overrides):
        profile = make_profile(idp, **overrides)
        breaker = CircuitBreaker(clock, failures=2, reset=30.0, name=profile.token_url)
        minter = TokenMinter(
            profile,
            idp=IdPClient(session, clock),
            verifier=TokenVerifier(session, clock),
            breaker=breaker,
            clock=clock,
            rng=random.Random(1),
        )
        return minter, CredentialStore(profile, {}).load()

    return make


async def test_mint_returns_a_verified_token_with_deadlines(make_minter, idp, clock):
    """A minted token is the IdP's, verified, with monotonic deadlines from its lifetime."""
    minter, creds = make_minter()
    token = await minter.mint(creds)
    assert token.value == idp.issued_tokens[-1]
    assert token.obtained_at == clock.monotonic()
    assert token.expires_at == clock.monotonic() + idp.token_lifetime
    assert token.obtained_at < token.refresh_at < token.expires_at
    assert minter.circuit is CircuitState.CLOSED


async def test_open_circuit_keeps_the_request_from_the_idp(make_minter, idp):
    """Transient failures open the breaker; then minting fails at once with no IdP request."""
    minter, creds = make_minter()
    idp.faults.status = 503
    for _ in range(2):
        with pytest.raises(IdPUnavailableError):
            await minter.mint(creds)
    assert minter.circuit is CircuitState.OPEN
    before = idp.token_requests
    with pytest.raises(CircuitOpenError) as info:
        await minter.mint(creds)
    assert idp.token_requests == before
    assert info.value.retry_after == 30.0


async def test_rejection_proves_the_idp_is_up(make_minter, idp):
    """An OAuth rejection counts as an answer: it resets the breaker's failure count."""
    minter, creds = make_minter()
    idp.faults.status = 503
    with pytest.raises(IdPUnavailableError):
        await minter.mint(creds)
    idp.faults.status = 401
    with pytest.raises(Exception, match="rejected"):
        await minter.mint(creds)
    idp.faults.status = 503
    with pytest.raises(IdPUnavailableError):
        await minter.mint(creds)
    assert minter.circuit is CircuitState.CLOSED  # 1 + 1 failures, never 2 in a row


async def test_cancelled_probe_frees_the_half_open_slot(make_minter, idp, clock):
    """A half-open probe that is cancelled mid-request lets the next attempt probe again."""
    minter, creds = make_minter()
    idp.faults.status = 503
    for _ in range(2):
        with pytest.raises(IdPUnavailableError):
            await minter.mint(creds)
    await clock.advance(30.0)
    idp.faults.status = None
    idp.faults.hang = True
    probe = asyncio.ensure_future(minter.mint(creds))
    await asyncio.wait_for(idp.faults.wait_hung(1), 5)
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    idp.release_hang()
    token = await minter.mint(creds)
    assert token.value == idp.issued_tokens[-1]
    assert minter.circuit is CircuitState.CLOSED


async def test_vet_shared_accepts_a_consistent_verified_token(make_minter, clock):
    """A shared token that verifies and matches its record becomes this profile's token."""
    minter, creds = make_minter()
    mine = await minter.mint(creds)
    shared = SharedToken.of(mine)
    vetted = await minter.vet_shared(shared, CLIENT_ID)
    assert vetted.value == mine.value
    assert vetted.expires_at == mine.expires_at
    assert vetted.fingerprint == mine.fingerprint


async def test_vet_shared_refuses_a_record_that_promises_more_life(make_minter):
    """A record claiming a later expiry than the token's own exp is refused."""
    minter, creds = make_minter()
    mine = SharedToken.of(await minter.mint(creds))
    forged = SharedToken(
        value=mine.value,
        token_type=mine.token_type,
        scope=mine.scope,
        obtained_at=mine.obtained_at,
        expires_at=mine.expires_at + 3600,
        fingerprint=mine.fingerprint,
    )
    with pytest.raises(InvalidTokenError, match="does not match its record"):
        await minter.vet_shared(forged, CLIENT_ID)
