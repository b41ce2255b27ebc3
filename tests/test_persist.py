"""The cold-start file in a service: restored at start without the IdP, written after refreshes.

Each test runs TokenServices on the fake clock against the in-process dev
IdP, with ``[cache] persist_file`` in the test's directory, and reads or
plants the file through the same codec the daemon uses.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.config import CacheConfig, Config, ProfileConfig
from sidecar.devidp import DevClient, DevIdP
from sidecar.fleet import SharedToken, TokenCache, TokenCodec, identity_of
from sidecar.metrics import Metrics
from sidecar.persist import decode_file, encode_file, entry_aad, identity_hash
from sidecar.service import TokenService
from sidecar.testing import FakeClock
from sidecar.token import fingerprint
from tests.support.builders import AUDIENCE, CLIENT_ID, CLIENT_SECRET, make_profile
from tests.support.metrics import sample
from tests.support.virtual_time import run_for

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
OTHER_CLIENT, OTHER_SECRET = "client-b", "other-secret-LEAKCANARY-c3"
OTHER_AUDIENCE = "https://other.example.com/"


class Persisted(Protocol):
    def __call__(
        self, *profiles: ProfileConfig, key: bytes = ..., cache: TokenCache | None = ...
    ) -> TokenService: ...


@pytest.fixture
def tokens_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "tokens"


@pytest.fixture
async def persisted(
    session: aiohttp.ClientSession, clock: FakeClock, tmp_path: Path, tokens_path: Path
) -> AsyncIterator[Persisted]:
    """Start TokenServices whose [cache] persists to ``tokens_path``; closed at teardown."""
    tokens_path.parent.mkdir(exist_ok=True)
    made: list[TokenService] = []

    def build(
        *profiles: ProfileConfig, key: bytes = KEY, cache: TokenCache | None = None
    ) -> TokenService:
        key_file = tmp_path / f"key-{len(made)}"
        key_file.write_bytes(key)
        config = Config(
            profiles=MappingProxyType({p.name: p for p in profiles}),
            cache=CacheConfig(key_file=key_file, persist_file=tokens_path),
        )
        service = TokenService(
            config,
            session,
            clock=clock,
            rng=random.Random(1),
            environ={},
            metrics=cache._metrics if cache is not None else Metrics(),  # type: ignore[attr-defined]
            cache=cache,
        )
        service.start()
        made.append(service)
        return service

    yield build
    for service in made:
        await service.aclose()


async def written(service: TokenService) -> None:
    """Wait (bounded) until the service's pending file writes are done."""
    assert service.token_file is not None
    await asyncio.wait_for(service.token_file.settled(), 5)


async def checked(service: TokenService) -> None:
    """Wait (bounded) until the signature checks of restored tokens ended."""
    await asyncio.wait_for(asyncio.gather(*service._checks), 5)


def stored_tokens(path: Path, key: bytes = KEY) -> dict[str, SharedToken]:
    """The file's entries, opened with ``key``."""
    codec = TokenCodec(key)
    entries = decode_file(path.read_bytes())
    return {k: codec.decode(blob, aad=entry_aad(k)) for k, blob in entries.items()}


def plant(path: Path, identity: str, value: str, *, key: bytes = KEY, **record: Any) -> None:
    """Write a file holding ``value`` as the token of ``identity``, sealed with ``key``."""
    claims = jwt.decode(value, options={"verify_signature": False}) if "." in value else {}
    fields = {"obtained_at": claims.get("iat", 0.0), "expires_at": claims.get("exp", 0.0)}
    fields.update(record)
    token = SharedToken(
        value=value,
        token_type="Bearer",
        scope="read:tools",
        fingerprint=fingerprint(value),
        **fields,
    )
    entry = identity_hash(identity)
    blob = TokenCodec(key).encode(token, aad=entry_aad(entry))
    path.write_bytes(encode_file({entry: blob}))


def identity(idp: DevIdP, **overrides: Any) -> str:
    return identity_of(make_profile(idp, **overrides), CLIENT_ID)


async def idp_token(
    session: aiohttp.ClientSession,
    idp: DevIdP,
    client_id: str = CLIENT_ID,
    secret: str = CLIENT_SECRET,
    audience: str = AUDIENCE,
) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": secret,
        "audience": audience,
        "scope": "read:tools",
    }
    async with session.post(f"{idp.base_url}/oauth/token", data=form) as resp:
        assert resp.status == 200, await resp.text()
        return str((await resp.json())["access_token"])


def events(log_output: Any, name: str) -> list[dict[str, Any]]:
    """The logged events called ``name``, parsed."""
    lines = [orjson.loads(line) for line in log_output.getvalue().splitlines()]
    return [line for line in lines if line["event"] == name]


def served_value(service: TokenService) -> str | None:
    served = service.refresher_for("api").serve_now()
    return None if served is None else served.token.value


# -- written after each refresh ----------------------------------------------------


async def test_first_start_writes_the_minted_token_sealed_and_private(
    persisted, idp, tokens_path, clock
):
    """With no file yet the profile mints; the file then holds that token, sealed, mode 0600."""
    service = persisted(make_profile(idp))
    served = await asyncio.wait_for(service.get("api"), 5)
    await written(service)
    assert idp.token_requests == 1
    assert stat.S_IMODE(tokens_path.stat().st_mode) == 0o600
    data = tokens_path.read_bytes()
    for part in (served.token.value, *served.token.value.split(".")):
        assert part.encode() not in data
    # Positive control: opened with the key, the file holds exactly the served token.
    (entry,) = stored_tokens(tokens_path).values()
    assert entry.value == served.token.value
    assert entry.expires_at == served.token.expires_at_wall
    assert sample(service.metrics, "token_sidecar_persist_writes_total", result="success") >= 1


async def test_each_refresh_rewrites_the_file(persisted, idp, tokens_path, clock):
    """After a refresh the file holds the new token, not the old one."""
    service = persisted(make_profile(idp))
    await asyncio.wait_for(service.get("api"), 5)
    await written(service)
    first = idp.issued_tokens[-1]
    await run_for(clock, service, idp.token_lifetime * 0.9)
    await written(service)
    assert idp.token_requests >= 2
    (entry,) = stored_tokens(tokens_path).values()
    assert entry.value == idp.issued_tokens[-1] != first


async def test_an_invalidated_token_leaves_the_file(persisted, idp, tokens_path, clock):
    """A token a caller reported is no longer restorable, even before its replacement."""
    service = persisted(make_profile(idp))
    served = await asyncio.wait_for(service.get("api"), 5)
    await written(service)
    idp.faults.status = 503  # no replacement comes
    service.refresher_for("api").report(served.token.fingerprint)
    await written(service)
    assert stored_tokens(tokens_path) == {}


# -- restored at start, without the IdP ----------------------------------------------


async def test_restart_serves_the_stored_token_with_no_idp_request(
    persisted, idp, tokens_path, clock, log_output
):
    """A second service is ready at start with the first one's token; the IdP is not asked."""
    first = persisted(make_profile(idp))
    served = await asyncio.wait_for(first.get("api"), 5)
    await written(first)
    await first.aclose()
    idp.faults.status = 503
    idp.reset_counters()

    second = persisted(make_profile(idp))
    # No await since start(): restored synchronously, before any refresh loop ran.
    assert second.readiness() == (True, {"api": "ok"})
    assert served_value(second) == served.token.value
    assert second.status()["profiles"]["api"]["state"] == "ready"
    assert sample(second.metrics, "token_sidecar_ready") == 1
    assert sample(second.metrics, "token_sidecar_persist_restore_total", result="restored") == 1
    await checked(second)
    await run_for(clock, second, 1)
    assert idp.token_requests == 0
    (restored,) = events(log_output, "persist.token_restored")
    assert restored["fingerprint"] == served.token.fingerprint
    assert len(events(log_output, "persist.signature_checked")) == 1


async def test_restored_token_keeps_its_expiry_and_refresh_instant(persisted, idp, clock):
    """The restored token expires when it did, and is refreshed on the original schedule."""
    first = persisted(make_profile(idp))
    held = (await asyncio.wait_for(first.get("api"), 5)).token
    await written(first)
    await first.aclose()
    await clock.advance(600)
    before = idp.token_requests

    second = persisted(make_profile(idp))
    restored = second.refresher_for("api").token
    assert restored is not None
    assert restored.expires_at_wall == held.expires_at_wall
    assert restored.scope == "read:tools"
    await run_for(clock, second, idp.token_lifetime - 600 - 60)
    assert idp.token_requests == before + 1  # refreshed before it expired, once


async def test_expired_entries_are_skipped(persisted, idp, tokens_path, clock, log_output):
    """A stored token with min_ttl or less left is not served; the profile mints."""
    first = persisted(make_profile(idp))
    await asyncio.wait_for(first.get("api"), 5)
    await written(first)
    await first.aclose()
    await clock.advance(idp.token_lifetime - 30)  # exactly min_ttl left
    before = idp.token_requests

    second = persisted(make_profile(idp))
    assert served_value(second) is None
    assert sample(second.metrics, "token_sidecar_persist_restore_total", result="expired") == 1
    assert sample(second.metrics, "token_sidecar_persist_restore_total", result="restored") == 0
    assert len(events(log_output, "persist.token_expired")) == 1
    await asyncio.wait_for(second.get("api"), 5)
    assert idp.token_requests == before + 1


async def test_a_changed_profile_finds_no_entry(persisted, idp, session, tokens_path):
    """A profile whose scope changed has another identity: the old entry is not its token."""
    first = persisted(make_profile(idp))
    await asyncio.wait_for(first.get("api"), 5)
    await written(first)
    await first.aclose()
    idp.faults.status = 503

    second = persisted(make_profile(idp, scope="read:tools write:tools"))
    assert served_value(second) is None
    assert sample(second.metrics, "token_sidecar_persist_restore_total", result="restored") == 0


# -- what is never served --------------------------------------------------------------


@pytest.fixture
def other_client(idp: DevIdP) -> None:
    idp.add_client(
        DevClient(
            client_id=OTHER_CLIENT,
            client_secret=OTHER_SECRET,
            audiences={AUDIENCE: ("read:tools",)},
        )
    )
    idp.add_client(
        DevClient(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            audiences={AUDIENCE: ("read:tools", "write:tools"), OTHER_AUDIENCE: ("read:tools",)},
        )
    )


async def planted_value(kind: str, session, idp: DevIdP, clock: FakeClock) -> str:
    if kind == "other_client":
        return await idp_token(session, idp, OTHER_CLIENT, OTHER_SECRET)
    if kind == "other_audience":
        return await idp_token(session, idp, audience=OTHER_AUDIENCE)
    if kind == "opaque":
        return "opaque-planted-token-LEAKCANARY"
    now = int(clock.time())
    claims = {
        "iss": idp.issuer,
        "aud": AUDIENCE,
        "sub": f"{CLIENT_ID}@clients",
        "azp": CLIENT_ID,
        "iat": now,
        "exp": now + 3600,
        "scope": "read:tools",
    }
    if kind == "expired_claims":
        claims["exp"] = now - 10
    return jwt.encode(claims, "", algorithm="none")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("other_client", "azp/client_id/sub mismatch"),
        ("other_audience", "aud mismatch"),
        ("opaque", "verify = 'jwks' needs a JWT"),
        ("expired_claims", "exp is in the past"),
    ],
)
@pytest.mark.usefixtures("other_client")
async def test_a_foreign_token_under_the_right_key_is_rejected(
    persisted, idp, session, tokens_path, clock, leaks, log_output, kind, reason
):
    """A sealed token of another client or audience, or not a JWT, is logged and never served."""
    value = await planted_value(kind, session, idp, clock)
    leaks.add(value)
    plant(tokens_path, identity(idp), value, expires_at=clock.time() + 3600)
    idp.faults.status = 503
    before = idp.token_requests

    service = persisted(make_profile(idp))
    assert served_value(service) is None
    assert service.readiness()[0] is False
    assert sample(service.metrics, "token_sidecar_persist_restore_total", result="rejected") == 1
    (rejected,) = events(log_output, "persist.token_rejected")
    assert reason in rejected["reason"]
    assert rejected["fingerprint"] == fingerprint(value)
    idp.faults.status = None
    minted = await asyncio.wait_for(service.get("api"), 5)
    assert minted.token.value != value
    assert idp.token_requests == before + 1


async def test_a_genuine_planted_token_is_served(persisted, idp, session, tokens_path, clock):
    """Positive control for the rejections: the same planting with this profile's token serves."""
    value = await idp_token(session, idp)
    plant(tokens_path, identity(idp), value)
    idp.faults.status = 503
    before = idp.token_requests
    service = persisted(make_profile(idp))
    assert served_value(service) == value
    assert idp.token_requests == before


async def test_an_opaque_token_restores_only_where_nothing_is_verified(
    persisted, idp, tokens_path, clock, leaks
):
    """Positive control for the opaque rejection: a profile with verify = "none" takes it."""
    value = "opaque-stored-token-LEAKCANARY"
    leaks.add(value)
    profile = make_profile(idp, verify="none", jwks_url=None)
    plant(tokens_path, identity_of(profile, CLIENT_ID), value, expires_at=clock.time() + 3600)
    idp.faults.status = 503
    service = persisted(profile)
    assert served_value(service) == value
    assert service._checks == set()  # nothing to check a signature against


async def test_vet_sealed_refuses_a_value_that_was_not_sealed(persisted, idp, session, clock):
    """Only the seal stands for the signature: the same token unsealed is refused."""
    from sidecar.errors import InvalidTokenError  # noqa: PLC0415

    value = await idp_token(session, idp)
    claims = jwt.decode(value, options={"verify_signature": False})

    def record(*, sealed: bool) -> SharedToken:
        return SharedToken(
            value=value,
            token_type="Bearer",
            scope="read:tools",
            obtained_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
            fingerprint=fingerprint(value),
            sealed=sealed,
        )

    minter = persisted(make_profile(idp)).refresher_for("api").minter
    assert minter.vet_sealed(record(sealed=True), CLIENT_ID).value == value
    with pytest.raises(InvalidTokenError, match="only a sealed value"):
        minter.vet_sealed(record(sealed=False), CLIENT_ID)


@pytest.mark.parametrize("damage", ["tampered", "other_key", "moved", "unencrypted"])
async def test_an_entry_that_does_not_open_is_ignored(
    persisted, idp, session, tokens_path, clock, log_output, damage
):
    """Tampered, sealed with another key, moved to another identity, or in clear: not served."""
    value = await idp_token(session, idp)
    own = identity(idp)
    if damage == "other_key":
        plant(tokens_path, own, value, key=OTHER_KEY)
    elif damage == "moved":
        plant(tokens_path, identity(idp, scope="read:tools write:tools"), value)
        document = orjson.loads(tokens_path.read_bytes())
        document["entries"] = {identity_hash(own): next(iter(document["entries"].values()))}
        tokens_path.write_bytes(orjson.dumps(document))
    elif damage == "unencrypted":
        record = SharedToken(
            value, "Bearer", "read:tools", 0.0, clock.time() + 3600, fingerprint(value)
        )
        clear = TokenCodec().encode(record, aad=entry_aad(identity_hash(own)))
        tokens_path.write_bytes(encode_file({identity_hash(own): clear}))
    else:
        plant(tokens_path, own, value)
        document = orjson.loads(tokens_path.read_bytes())
        blob = bytearray(base64.b64decode(document["entries"][identity_hash(own)]))
        blob[-5] ^= 0x01
        document["entries"][identity_hash(own)] = base64.b64encode(bytes(blob)).decode()
        tokens_path.write_bytes(orjson.dumps(document))
    idp.faults.status = 503

    service = persisted(make_profile(idp))
    assert served_value(service) is None
    reason = "unencrypted" if damage == "unencrypted" else "undecryptable"
    assert sample(service.metrics, "token_sidecar_persist_restore_total", result=reason) == 1
    (unreadable,) = events(log_output, "persist.entry_unreadable")
    assert unreadable["reason"] == reason
    assert unreadable["profile"] == "api"


@pytest.mark.parametrize(
    ("contents", "detail"),
    [
        (b"\x00garbage" * 100, "not JSON"),
        (b'{"format": "token-sidecar-tokens", "version": 9, "entries": {}}', "unknown version 9"),
    ],
)
async def test_a_garbage_file_is_logged_and_ignored(
    persisted, idp, tokens_path, log_output, contents, detail
):
    """A file that is not ours is logged once; the service mints as if there were none."""
    tokens_path.write_bytes(contents)
    service = persisted(make_profile(idp))
    assert sample(service.metrics, "token_sidecar_persist_restore_total", result="malformed") == 1
    (unreadable,) = events(log_output, "persist.file_unreadable")
    assert unreadable["detail"] == detail
    await asyncio.wait_for(service.get("api"), 5)
    await written(service)
    assert len(stored_tokens(tokens_path)) == 1  # replaced by a good file


async def test_leftovers_of_crashed_writes_are_removed_at_start(
    persisted, idp, tokens_path, clock, log_output
):
    """Old ``.tokens.*.tmp`` files go; a young one, a symlink and other files stay."""
    state = tokens_path.parent
    old, young = state / ".tokens.crashed.tmp", state / ".tokens.writing.tmp"
    other, link = state / ".other.old.tmp", state / ".tokens.link.tmp"
    for path in (old, young, other):
        path.write_bytes(b"partial")
    link.symlink_to(other)
    now = clock.time()
    for path in (old, other):
        os.utime(path, (now - 601, now - 601))
    os.utime(young, (now - 60, now - 60))
    os.utime(link, (now - 601, now - 601), follow_symlinks=False)
    persisted(make_profile(idp))
    assert not old.exists()
    assert young.exists()
    assert other.exists()
    assert link.is_symlink()
    (removed,) = events(log_output, "persist.temporaries_removed")
    assert removed["files"] == 1


async def test_a_huge_file_is_ignored_without_reading_it(persisted, idp, tokens_path, log_output):
    """A sparse 2 GiB file is refused from its size; the service runs and mints."""
    with tokens_path.open("wb") as file:
        file.truncate(2 * 1024**3)
    service = persisted(make_profile(idp))
    assert sample(service.metrics, "token_sidecar_persist_restore_total", result="malformed") == 1
    (unreadable,) = events(log_output, "persist.file_unreadable")
    assert unreadable["detail"] == "larger than 1048576 bytes"
    await asyncio.wait_for(service.get("api"), 5)


# -- the later signature check ---------------------------------------------------------


async def test_a_sealed_forgery_is_withdrawn_once_the_jwks_answers(
    persisted, idp, tokens_path, clock, leaks, log_output
):
    """A sealed token with the right claims but a foreign signature stops being served."""
    now = int(clock.time())
    claims = {
        "iss": idp.issuer,
        "aud": AUDIENCE,
        "sub": f"{CLIENT_ID}@clients",
        "azp": CLIENT_ID,
        "iat": now,
        "exp": now + 3600,
    }
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, key, algorithm="RS256", headers={"kid": idp.signing_kid})
    leaks.add(forged)
    plant(tokens_path, identity(idp), forged)
    before = idp.token_requests

    service = persisted(make_profile(idp))
    assert served_value(service) == forged  # the seal vouches for it until the JWKS answers
    await checked(service)
    assert served_value(service) != forged
    assert sample(service.metrics, "token_sidecar_persist_restore_total", result="rejected") == 1
    (withdrawn,) = events(log_output, "persist.token_withdrawn")
    assert withdrawn["reason"] == "InvalidSignatureError"
    minted = await asyncio.wait_for(service.get("api"), 5)
    assert minted.token.value in idp.issued_tokens
    assert idp.token_requests == before + 1
    await written(service)
    assert [t.value for t in stored_tokens(tokens_path).values()] == [minted.token.value]


async def test_while_the_jwks_is_down_the_restored_token_is_served_and_checked_later(
    persisted, idp, session, tokens_path, clock, log_output
):
    """With the whole IdP down the stored token serves; its signature is checked when it is back."""
    value = await idp_token(session, idp)
    plant(tokens_path, identity(idp), value)
    port = int(idp.base_url.rsplit(":", 1)[1])
    await idp.stop()

    service = persisted(make_profile(idp))
    assert served_value(service) == value
    await clock.wait_for_sleepers(2)  # the refresh loop, and the check backing off
    assert len(events(log_output, "persist.signature_unchecked")) == 1
    assert events(log_output, "persist.signature_checked") == []
    assert service.readiness()[0] is True

    await idp.start(port=port)
    await clock.advance(60)  # the profile's backoff cap: the check tries again
    await checked(service)
    assert len(events(log_output, "persist.signature_checked")) == 1
    assert served_value(service) == value


# -- both backends, and the key --------------------------------------------------------


async def test_fleet_mode_restores_from_the_file_and_shares_later(
    persisted, caches, idp, tokens_path, clock
):
    """With the Redis backend the file is written and read the same; Redis keeps its copy."""
    first = persisted(make_profile(idp), cache=caches(key=KEY))
    served = await asyncio.wait_for(first.get("api"), 5)
    await written(first)
    await first.aclose()
    idp.faults.status = 503
    before = idp.token_requests

    second = persisted(make_profile(idp), cache=caches(key=KEY))
    assert served_value(second) == served.token.value
    assert idp.token_requests == before
    assert (await caches(key=KEY).read(identity(idp))).value == served.token.value


async def test_a_wrong_key_never_opens_the_file_and_the_next_write_replaces_it(
    persisted, idp, tokens_path
):
    """A restart with a new key serves nothing from the old file and writes a new one."""
    first = persisted(make_profile(idp))
    old = await asyncio.wait_for(first.get("api"), 5)
    await written(first)
    await first.aclose()

    second = persisted(make_profile(idp), key=OTHER_KEY)
    assert served_value(second) is None
    new = await asyncio.wait_for(second.get("api"), 5)
    await written(second)
    assert new.token.value != old.token.value
    assert [t.value for t in stored_tokens(tokens_path, OTHER_KEY).values()] == [new.token.value]


async def test_a_failed_write_is_logged_and_counted_never_fatal(
    persisted, idp, tokens_path, log_output
):
    """When the file cannot be written the service keeps serving; the failure is visible."""
    service = persisted(make_profile(idp))
    first = await asyncio.wait_for(service.get("api"), 5)
    await written(service)
    assert sample(service.metrics, "token_sidecar_persist_writes_total", result="error") == 0
    for child in tokens_path.parent.iterdir():
        child.unlink()
    tokens_path.parent.rmdir()
    refresher = service.refresher_for("api")
    refresher.report(first.token.fingerprint)  # forces a refresh, hence writes
    served = await asyncio.wait_for(service.get("api"), 5)
    await written(service)
    assert served.token.value != first.token.value
    assert sample(service.metrics, "token_sidecar_persist_writes_total", result="error") >= 1
    (failed, *_) = events(log_output, "persist.write_failed")
    assert failed["error"] == "No such file or directory"
    assert refresher.serve_now().token.value == served.token.value
    assert not tokens_path.exists()


async def test_service_does_not_start_with_an_unreadable_key(session, clock, idp, tmp_path):
    """A persist_file whose key_file is missing fails at start with a ConfigError on key_file."""
    from sidecar.errors import ConfigError  # noqa: PLC0415

    config = Config(
        profiles=MappingProxyType({"api": make_profile(idp)}),
        cache=CacheConfig(key_file=tmp_path / "missing", persist_file=tmp_path / "tokens"),
        source="sidecar.toml",
    )
    with pytest.raises(ConfigError) as info:
        TokenService(config, session, clock=clock, environ={})
    assert info.value.key == "cache.key_file"
    assert info.value.source == "sidecar.toml"
