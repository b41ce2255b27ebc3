"""Cold start end to end: ``serve`` processes, a SIGKILL, an IdP outage, and planted files.

The IdP runs in the test process on the real clock; each sidecar is a child
process whose JSON log events the test waits for. The cold-start file and
its key live in the test's directory.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import stat
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from sidecar.config import config_from_mapping
from sidecar.devidp import DevClient, DevIdP
from sidecar.fleet import SharedToken, TokenCodec, identity_of
from sidecar.persist import decode_file, encode_file, entry_aad, identity_hash
from sidecar.testing import SidecarProcess
from sidecar.token import fingerprint
from tests.support.e2e import E2E_AUDIENCE, E2E_CLIENT_ID, E2E_SECRET, HEADERS, get_json
from tests.support.e2e import profile_toml as base_profile_toml

pytestmark = pytest.mark.slow

OTHER_CLIENT, OTHER_SECRET = "e2e-other-client", "e2e-other-secret-LEAKCANARY-9d"
OTHER_AUDIENCE = "https://other.example.com/"
#: The cold start's bound: from the moment the restarted sidecar listens.
SERVE_WITHIN = 1.0


def profile_toml(idp: DevIdP) -> str:
    # A short wait_timeout: a caller that finds no token learns it within a second.
    return base_profile_toml(idp, wait_timeout='"1s"')


class Files:
    """The key file and cold-start file of one test, and the [cache] table naming them."""

    def __init__(self, tmp_path: Path, key: bytes | None = None) -> None:
        self.key = key if key is not None else os.urandom(32)
        self.key_file = tmp_path / "cache-key"
        self.key_file.write_bytes(base64.b64encode(self.key))
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        self.tokens = state / "tokens"

    def cache_toml(self) -> str:
        return f'[cache]\nkey_file = "{self.key_file}"\npersist_file = "{self.tokens}"\n'

    def stored(self) -> list[SharedToken]:
        codec = TokenCodec(self.key)
        entries = decode_file(self.tokens.read_bytes())
        return [codec.decode(blob, aad=entry_aad(k)) for k, blob in entries.items()]

    def plant(self, idp: DevIdP, value: str, *, key: bytes | None = None) -> None:
        """Write a file holding ``value`` as the profile's token, sealed with ``key``."""
        profile = config_from_mapping(tomllib.loads(profile_toml(idp)), source="planted").profiles[
            "api"
        ]
        entry = identity_hash(identity_of(profile, E2E_CLIENT_ID))
        claims = jwt.decode(value, options={"verify_signature": False})
        token = SharedToken(
            value=value,
            token_type="Bearer",
            scope="read:tools",
            obtained_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
            fingerprint=fingerprint(value),
        )
        blob = TokenCodec(key or self.key).encode(token, aad=entry_aad(entry))
        self.tokens.write_bytes(encode_file({entry: blob}))


async def token_body(http: aiohttp.ClientSession, sidecar: SidecarProcess) -> tuple[int, Any]:
    return await get_json(http, f"{sidecar.url}/v1/token/api", headers=HEADERS)


def order_of(sidecar: SidecarProcess, *names: str) -> list[str]:
    """The events among ``names`` in the order the sidecar logged them."""
    return [str(e["event"]) for e in sidecar.events if e.get("event") in names]


@pytest.mark.parametrize("outage", ["failing", "stopped"])
async def test_cold_start_serves_the_persisted_token_while_the_idp_is_down(
    real_idp, sidecar_factory, http, tmp_path, outage
):
    """SIGKILL, IdP down, restart: token served and /readyz 200 at once, with no IdP request."""
    files = Files(tmp_path)
    config = files.cache_toml() + profile_toml(real_idp)
    first = await sidecar_factory(config)
    refreshed = await first.wait_event("token.refreshed")
    status, body = await token_body(http, first)
    assert status == 200
    value = body["access_token"]
    await first.wait_until(
        lambda: any(e.get("fingerprints") == [refreshed["fingerprint"]] for e in first.events)
    )
    assert stat.S_IMODE(files.tokens.stat().st_mode) == 0o600
    for part in (value, *value.split(".")):
        assert part.encode() not in files.tokens.read_bytes()
    assert [t.value for t in files.stored()] == [value]  # positive control: the key opens it
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL

    if outage == "failing":
        real_idp.faults.status = 503
    else:
        await real_idp.stop()
    real_idp.reset_counters()

    second = await sidecar_factory(config)  # returns once it logged sidecar.started
    async with asyncio.timeout(SERVE_WITHIN):
        ready, readiness = await get_json(http, f"{second.ops}/readyz")
        status, body = await token_body(http, second)
    assert (ready, readiness) == (200, {"ready": True, "profiles": {"api": "ok"}})
    assert status == 200
    assert body["access_token"] == value
    assert body["stale"] is False
    # Restored before the listeners opened: served from the first request on.
    assert order_of(second, "persist.token_restored", "sidecar.started") == [
        "persist.token_restored",
        "sidecar.started",
    ]
    assert real_idp.token_requests == 0
    if outage == "failing":
        # The JWKS still answers: the restored token's signature is checked too.
        await second.wait_event("persist.signature_checked")
    else:
        await second.wait_event("persist.signature_unchecked")
    assert real_idp.token_requests == 0
    assert second.count("token.refreshed") == 0


@pytest.fixture
def other_grants(real_idp: DevIdP) -> None:
    """Another client of the same API, and this client granted a second API."""
    real_idp.add_client(
        DevClient(
            client_id=OTHER_CLIENT,
            client_secret=OTHER_SECRET,
            audiences={E2E_AUDIENCE: ("read:tools",)},
        )
    )
    real_idp.add_client(
        DevClient(
            client_id=E2E_CLIENT_ID,
            client_secret=E2E_SECRET,
            audiences={E2E_AUDIENCE: ("read:tools",), OTHER_AUDIENCE: ("read:tools",)},
        )
    )


async def issued(
    http: aiohttp.ClientSession,
    idp: DevIdP,
    client_id: str = E2E_CLIENT_ID,
    secret: str = E2E_SECRET,
    audience: str = E2E_AUDIENCE,
) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": secret,
        "audience": audience,
        "scope": "read:tools",
    }
    async with http.post(f"{idp.base_url}/oauth/token", data=form) as resp:
        assert resp.status == 200
        return str((await resp.json())["access_token"])


@pytest.mark.parametrize(
    ("damage", "event", "reason"),
    [
        ("tampered", "persist.entry_unreadable", "undecryptable"),
        ("other_key", "persist.entry_unreadable", "undecryptable"),
        ("other_client", "persist.token_rejected", "azp/client_id/sub mismatch"),
        ("other_audience", "persist.token_rejected", "aud mismatch"),
    ],
)
@pytest.mark.usefixtures("other_grants")
async def test_a_tampered_or_foreign_file_is_logged_and_not_served(
    real_idp, sidecar_factory, http, tmp_path, damage, event, reason
):
    """A file that does not open, or holds another client's or API's token, is never served."""
    files = Files(tmp_path)
    if damage == "other_client":
        files.plant(real_idp, await issued(http, real_idp, OTHER_CLIENT, OTHER_SECRET))
    elif damage == "other_audience":
        files.plant(real_idp, await issued(http, real_idp, audience=OTHER_AUDIENCE))
    elif damage == "other_key":
        files.plant(real_idp, await issued(http, real_idp), key=os.urandom(32))
    else:
        files.plant(real_idp, await issued(http, real_idp))
        document = orjson.loads(files.tokens.read_bytes())
        (entry,) = document["entries"]
        blob = bytearray(base64.b64decode(document["entries"][entry]))
        blob[20] ^= 0x80
        document["entries"][entry] = base64.b64encode(bytes(blob)).decode()
        files.tokens.write_bytes(orjson.dumps(document))
    planted = real_idp.issued_tokens[-1]
    real_idp.faults.status = 503
    real_idp.reset_counters()

    sidecar = await sidecar_factory(files.cache_toml() + profile_toml(real_idp))
    (logged,) = sidecar.named(event)
    assert reason in str(logged.get("reason"))
    assert logged["profile"] == "api"
    ready, _ = await get_json(http, f"{sidecar.ops}/readyz")
    status, body = await token_body(http, sidecar)
    assert ready == 503
    assert (status, body["error"]) == (503, "token_unavailable")
    assert planted not in sidecar.stderr.decode()

    real_idp.faults.status = None  # once the IdP is back, the sidecar mints its own
    refreshed = await sidecar.wait_event("token.refreshed")
    status, body = await token_body(http, sidecar)
    assert status == 200
    assert body["access_token"] != planted
    assert body["access_token"] == real_idp.issued_tokens[-1]
    await sidecar.wait_until(
        lambda: any(e.get("fingerprints") == [refreshed["fingerprint"]] for e in sidecar.events)
    )
    assert [t.value for t in files.stored()] == [body["access_token"]]


async def test_a_genuine_planted_file_is_served(real_idp, sidecar_factory, http, tmp_path):
    """Positive control for the refusals: the same planting with this profile's token serves."""
    files = Files(tmp_path)
    value = await issued(http, real_idp)
    files.plant(real_idp, value)
    real_idp.faults.status = 503
    real_idp.reset_counters()
    sidecar = await sidecar_factory(files.cache_toml() + profile_toml(real_idp))
    status, body = await token_body(http, sidecar)
    assert (status, body["access_token"]) == (200, value)
    assert real_idp.token_requests == 0
