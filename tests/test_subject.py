"""SubjectChecker: users' tokens checked locally against the dev IdP's real JWKS."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sidecar.config import SubjectConfig
from sidecar.errors import ExchangeUnavailableError, InvalidSubjectError
from sidecar.subject import JWKS_RETRY_AFTER, Subject, SubjectChecker
from sidecar.verify import TokenVerifier
from tests.support.builders import MCP_AUDIENCE


@pytest.fixture
def checker(session, clock) -> SubjectChecker:
    return SubjectChecker(TokenVerifier(session, clock), clock)


def jwks(idp, **overrides) -> SubjectConfig:
    fields = {
        "issuer": idp.issuer,
        "jwks_url": f"{idp.base_url}/.well-known/jwks.json",
        "audience": MCP_AUDIENCE,
        **overrides,
    }
    return SubjectConfig(**fields)


async def test_a_good_token_gives_its_expiry(checker, idp, clock):
    """A valid user token passes; its expiry is the JWT exp (UNIX time)."""
    token = idp.issue_user_token("u", MCP_AUDIENCE, expires_in=600)
    subject = await checker.check("p", jwks(idp), token, min_ttl=30)
    assert subject == Subject(expires_at=clock.time() + 600)


async def test_not_yet_valid_token_is_refused(checker, idp, clock):
    """A token whose nbf is more than a minute ahead is refused."""
    early = idp.issue_user_token("u", MCP_AUDIENCE, claims={"nbf": int(clock.time()) + 120})
    with pytest.raises(InvalidSubjectError) as info:
        await checker.check("p", jwks(idp), early, min_ttl=30)
    assert "not valid yet" in info.value.message
    soon = idp.issue_user_token("u", MCP_AUDIENCE, claims={"nbf": int(clock.time()) + 30})
    assert await checker.check("p", jwks(idp), soon, min_ttl=30)  # within the 60 s margin


async def test_concurrent_checks_share_one_jwks_fetch(checker, idp):
    """Fifty users arriving at once before the keys are known cause one JWKS fetch."""
    tokens = [idp.issue_user_token(f"u{n}", MCP_AUDIENCE) for n in range(50)]
    await asyncio.gather(*(checker.check("p", jwks(idp), t, min_ttl=30) for t in tokens))
    assert idp.jwks_requests == 1


async def test_unreachable_jwks_is_unavailable_not_invalid(checker, idp):
    """A JWKS that cannot be fetched is the sidecar's problem: 503, not the user's 401."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = jwks(idp, jwks_url=f"http://127.0.0.1:{port}/jwks.json")
    token = idp.issue_user_token("u", MCP_AUDIENCE)
    with pytest.raises(ExchangeUnavailableError) as info:
        await checker.check("p", config, token, min_ttl=30)
    assert (info.value.status, info.value.retry_after) == (503, JWKS_RETRY_AFTER)
    assert info.value.error == "jwks_unavailable"
    assert await checker.check("p", jwks(idp), token, min_ttl=30)  # positive control


@pytest.mark.parametrize(
    ("token", "expires_at"),
    [
        ("opaque-user-token", None),
        ("a.b.c", None),  # looks dotted, is no JWT
    ],
)
async def test_verify_none_passes_opaque_tokens_uncapped(checker, token, expires_at):
    """With verify = "none" an opaque token goes on to the IdP, and nothing caps its entry."""
    subject = await checker.check("p", SubjectConfig(verify="none"), token, min_ttl=30)
    assert subject.expires_at is expires_at


async def test_verify_none_reads_an_unverified_exp(checker, idp, clock):
    """With verify = "none" a JWT's exp still caps the entry; a JWT without exp does not."""
    token = idp.issue_user_token("u", "https://anyone/", expires_in=90, issuer="https://x/")
    subject = await checker.check("p", SubjectConfig(verify="none"), token, min_ttl=30)
    assert subject.expires_at == clock.time() + 90
    no_exp = idp.issue_user_token("u", MCP_AUDIENCE, claims={"exp": "soon"})
    subject = await checker.check("p", SubjectConfig(verify="none"), no_exp, min_ttl=30)
    assert subject.expires_at is None
