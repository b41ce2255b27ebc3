"""Fleet mode trusts nothing in Redis it cannot verify: forged, foreign and inconsistent tokens.

Red-team findings RT-02 (an ``alg: none`` JWT or an opaque string planted in
Redis was served), RT-03 (another client's validly signed token was adopted,
with the record's scope) and RT-05 (a token signed with an unknown key blocked
minting fleet-wide). Each test plants values in a real Redis under its own
namespace, then starts sidecars on the fake clock against the dev IdP.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.config import config_from_mapping
from sidecar.devidp import DevClient
from sidecar.errors import ConfigError
from sidecar.fleet import RedisCache, SharedToken, identity_of
from sidecar.token import fingerprint
from tests.support.builders import AUDIENCE, CLIENT_ID, CLIENT_SECRET, make_profile
from tests.support.metrics import sample
from tests.support.virtual_time import run_for

OTHER_CLIENT, OTHER_SECRET = "client-b", "other-secret-LEAKCANARY-b2"


async def idp_token(session, idp, client_id: str, secret: str, scope: str = "read:tools") -> str:
    """A token the dev IdP issues to ``client_id``."""
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": secret,
        "audience": AUDIENCE,
        "scope": scope,
    }
    async with session.post(f"{idp.base_url}/oauth/token", data=form) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])


async def plant(
    cache: RedisCache, idp, clock, value: str, *, scope: str | None = "read:tools", **record
) -> None:
    """Write ``value`` as the shared token of the default profile, with a consistent record."""
    fields = {"obtained_at": clock.time(), "expires_at": clock.time() + 10 * 365 * 86400.0}
    fields.update(record)
    token = SharedToken(
        value=value,
        token_type="Bearer",
        scope=scope,
        fingerprint=fingerprint(value),
        **fields,
    )
    await cache.write(identity_of(make_profile(idp), CLIENT_ID), token)


def forged_claims(idp, clock, **extra) -> dict[str, Any]:
    now = int(clock.time())
    claims = {
        "iss": idp.issuer,
        "aud": AUDIENCE,
        "sub": f"{CLIENT_ID}@clients",
        "azp": CLIENT_ID,
        "iat": now,
        "exp": now + 10 * 365 * 86400,
        "scope": "admin",
    }
    return claims | extra


@pytest.fixture
def other_client(idp):
    idp.add_client(
        DevClient(
            client_id=OTHER_CLIENT,
            client_secret=OTHER_SECRET,
            audiences={AUDIENCE: ("read:tools", "read:public")},
        )
    )


# -- the config rule ------------------------------------------------------------


def fleet_config(profile: dict[str, Any], cache: dict[str, Any] | None = None) -> dict[str, Any]:
    base = {"token_url": "https://idp.example/oauth/token", "client_id": "a", "client_secret": "s"}
    return {
        "cache": {"backend": "redis"} | (cache or {}),
        "profiles": {"api": base | profile},
    }


@pytest.mark.parametrize(
    "profile",
    [
        {"verify": "claims", "jwks_url": "https://idp.example/jwks"},
        {"verify": "none"},
        {},  # automatic without a JWKS URL: claims or none per token
    ],
)
def test_fleet_without_key_file_needs_jwks(profile):
    """backend = "redis" with no key_file refuses a profile that does not check signatures."""
    with pytest.raises(ConfigError) as info:
        config_from_mapping(fleet_config(profile), source="fleet.toml")
    assert info.value.source == "fleet.toml"
    assert info.value.key == "profiles.api.verify"
    assert "key_file" in info.value.problem
    assert 'verify = "jwks"' in info.value.problem


@pytest.mark.parametrize(
    ("profile", "cache"),
    [
        ({"verify": "jwks", "jwks_url": "https://idp.example/jwks"}, None),
        ({"jwks_url": "https://idp.example/jwks"}, None),  # automatic with a JWKS URL: jwks
        ({"auth0_domain": "t.auth0.com", "token_url": None}, None),
        ({"verify": "claims"}, {"key_file": "/keys/fleet.key"}),
        ({"verify": "none"}, {"backend": "memory"}),
    ],
)
def test_verified_or_sealed_fleets_load(profile, cache):
    """Positive control: jwks (explicit or automatic), a key_file, or no fleet all load."""
    profile = {k: v for k, v in profile.items() if v is not None}
    data = fleet_config(profile, cache)
    if "auth0_domain" in profile:
        del data["profiles"]["api"]["token_url"]
    config = config_from_mapping(data, source="fleet.toml")
    assert config.profiles["api"].name == "api"


def test_check_exits_2_naming_file_key_and_problem(tmp_path: Path):
    """`token-sidecar check` on such a config exits 2 and says where and why."""
    path = tmp_path / "fleet.toml"
    path.write_text(
        '[cache]\nbackend = "redis"\n[profiles.api]\n'
        'token_url = "https://idp.example/oauth/token"\nclient_id = "a"\n'
        'client_secret = "s"\nverify = "claims"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_SIDECAR_")}
    result = subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "-m", "sidecar", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert str(path) in result.stderr
    assert "profiles.api.verify" in result.stderr


# -- planted tokens are never served --------------------------------------------


async def forged_value(kind: str, idp, clock, session) -> str:
    if kind == "alg_none":
        return jwt.encode(forged_claims(idp, clock), "", algorithm="none")
    if kind == "opaque":
        return "attacker-chosen-opaque-token-LEAKCANARY"
    if kind == "other_client":
        return await idp_token(session, idp, OTHER_CLIENT, OTHER_SECRET, "read:public")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = "attacker-kid" if kind == "unknown_kid" else idp.signing_kid
    return jwt.encode(forged_claims(idp, clock), key, algorithm="RS256", headers={"kid": kid})


@pytest.mark.parametrize("kind", ["alg_none", "opaque", "other_client", "unknown_kid", "bad_sig"])
@pytest.mark.usefixtures("other_client")
async def test_planted_token_is_never_served(sidecar, caches, idp, clock, session, leaks, kind):
    """A forged or foreign token in Redis is rejected and counted; the sidecar mints its own."""
    value = await forged_value(kind, idp, clock, session)
    leaks.add(value)
    # A record consistent with the token (its exp), as an attacker would write it.
    exp = jwt.decode(value, options={"verify_signature": False})["exp"] if "." in value else None
    await plant(caches(), idp, clock, value, scope="admin", expires_at=exp or clock.time() + 7200)
    before = idp.token_requests
    service = sidecar()
    served = await asyncio.wait_for(service.get("api"), 5)
    assert served.token.value != value
    assert served.token.value in idp.issued_tokens
    assert served.token.scope == "read:tools"
    assert idp.token_requests == before + 1
    assert sample(service.metrics, "token_sidecar_cache_errors_total", reason="rejected") >= 1


async def test_unsealed_value_is_never_adopted_without_signature_checks(
    sidecar, caches, idp, clock
):
    """Even a profile built past the loader (verify = "claims", no key) adopts no plain value."""
    value = jwt.encode(forged_claims(idp, clock), "", algorithm="none")
    await plant(caches(), idp, clock, value)
    service = sidecar(verify="claims")
    served = await asyncio.wait_for(service.get("api"), 5)
    assert served.token.value != value
    assert served.token.value in idp.issued_tokens


async def test_rejected_token_is_dropped_and_never_blocks(sidecar, caches, idp, clock, session):
    """RT-05: an unknown-kid token is deleted from Redis, and minting goes on after it."""
    writer = caches()
    value = await forged_value("unknown_kid", idp, clock, session)
    await plant(writer, idp, clock, value)
    idp.faults.status = 503  # minting fails: the key would still hold the forgery if not dropped
    service = sidecar()
    await run_for(clock, service, 0)
    key = writer.token_key(identity_of(make_profile(idp), CLIENT_ID))
    assert await writer._redis.get(key) is None
    await plant(writer, idp, clock, value)  # planted again, inside the JWKS refetch cooldown
    idp.faults.status = None
    await run_for(clock, service, 5)
    assert service.refresher_for("api").token.value in idp.issued_tokens
    assert service.status()["profiles"]["api"]["state"] == "ready"


async def test_discard_keeps_a_newer_value(caches, idp, clock):
    """Compare-and-delete: dropping a token that was replaced meanwhile leaves the new one."""
    cache = caches()
    identity = identity_of(make_profile(idp), CLIENT_ID)
    await plant(cache, idp, clock, "old-value")
    old = await cache.read(identity)
    await plant(cache, idp, clock, "new-value")
    await cache.discard(identity, old)
    assert (await cache.read(identity)).value == "new-value"
    await cache.discard(identity, await cache.read(identity))
    assert await cache.read(identity) is None


# -- scope and expiry come from the verified token ---------------------------------


async def test_genuine_token_is_adopted_with_its_own_scope_and_expiry(
    sidecar, caches, idp, clock, session
):
    """A genuine token is adopted with no IdP request; the record's wider scope is not served."""
    value = await idp_token(session, idp, CLIENT_ID, CLIENT_SECRET)
    exp = jwt.decode(value, options={"verify_signature": False})["exp"]
    await plant(caches(), idp, clock, value, scope="read:tools write:tools admin", expires_at=exp)
    before = idp.token_requests
    service = sidecar()
    served = await asyncio.wait_for(service.get("api"), 5)
    assert idp.token_requests == before
    assert served.token.value == value
    assert served.token.scope == "read:tools"
    assert served.token.expires_at_wall == exp


async def test_record_promising_a_later_expiry_is_refused(sidecar, caches, idp, clock, session):
    """A genuine token whose record claims a later expires_at than its exp is not adopted."""
    value = await idp_token(session, idp, CLIENT_ID, CLIENT_SECRET)
    exp = jwt.decode(value, options={"verify_signature": False})["exp"]
    await plant(caches(), idp, clock, value, expires_at=exp + 30 * 86400)
    before = idp.token_requests
    service = sidecar()
    served = await asyncio.wait_for(service.get("api"), 5)
    assert idp.token_requests == before + 1
    assert served.token.value != value
    assert served.token.expires_at_wall <= clock.time() + idp.token_lifetime


# -- with key_file: sealed values, and the client check still applies to JWTs -----


@pytest.mark.usefixtures("other_client")
async def test_sealed_fleet_adopts_in_claims_mode_but_not_another_clients_jwt(
    sidecar, caches, idp, clock, session
):
    """Sealed values may be adopted without JWKS; another client's JWT still is not."""
    key = os.urandom(32)
    foreign = await idp_token(session, idp, OTHER_CLIENT, OTHER_SECRET)
    await plant(caches(key=key), idp, clock, foreign, expires_at=clock.time() + 3600)
    before = idp.token_requests
    first = sidecar(key=key, verify="claims")
    served = await asyncio.wait_for(first.get("api"), 5)
    assert served.token.value != foreign
    assert idp.token_requests == before + 1
    second = sidecar(key=key, verify="claims")
    adopted = await asyncio.wait_for(second.get("api"), 5)
    assert adopted.token.value == served.token.value
    assert idp.token_requests == before + 1
