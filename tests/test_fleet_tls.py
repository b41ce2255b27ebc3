"""Fleet mode over a managed-style Redis: TLS only, a password, an ACL user limited to its keys.

Each test starts its own ``redis-server`` (TLS port only, a test CA, the
``default`` user behind an admin password, the sidecar's user restricted as
docs/deploy.md says) and stops it after: nothing here touches the shared
Redis. Virtual time: the services run on the FakeClock, Redis on real I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    OutOfMemoryError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sidecar.config import CacheConfig, Config
from sidecar.errors import CacheUnavailableError, ConfigError
from sidecar.fleet import (
    CacheState,
    PasswordFile,
    RedisAccess,
    RedisCache,
    check_cache_files,
    describe_failure,
    make_cache,
)
from sidecar.metrics import Metrics
from sidecar.testing import FakeClock
from tests.support.builders import make_profile
from tests.support.metrics import sample
from tests.support.redis import SIDECAR_ACL, ManagedRedis, RedisServer
from tests.support.redis import SIDECAR_USER as USER
from tests.support.upstream import TLSFiles, make_tls_files

ROOT = Path(__file__).resolve().parent.parent
WRONG_PASSWORD = "not-the-password-LEAKCANARY"


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.fixture
async def tls_caches(clock) -> AsyncIterator[Callable[[CacheConfig], RedisCache]]:
    """Build RedisCaches from a CacheConfig the way the daemon does; all closed at teardown."""
    made: list[RedisCache] = []

    def make(cache: CacheConfig) -> RedisCache:
        config = Config(profiles=MappingProxyType({}), cache=cache)
        built = make_cache(config, clock, Metrics(CollectorRegistry()))
        assert isinstance(built, RedisCache)
        made.append(built)
        return built

    yield make
    for cache in made:
        await cache.aclose()


@pytest.fixture
def tls_fleet(make_service, tls_caches, idp):
    """N started TokenServices in fleet mode on one CacheConfig (own caches and metrics)."""

    def build(cache: CacheConfig, count: int = 2) -> list[Any]:
        services = []
        for seed in range(count):
            built = tls_caches(cache)
            services.append(
                make_service(make_profile(idp), seed=seed, metrics=built._metrics, cache=built)
            )
        return services

    return build


# -- the existing fleet behaviours, over TLS with a password -------------------------


async def test_two_sidecars_share_one_token_over_tls(managed, tls_fleet, idp, log_output):
    """Over TLS with an ACL user and a password file, two sidecars make one IdP request."""
    a, b = tls_fleet(managed.cache_config())
    served = await asyncio.gather(a.get("api"), b.get("api"))
    assert idp.token_requests == 1
    assert served[0].token.value == served[1].token.value
    assert a.status()["cache"] == {"backend": "redis", "state": "ok"}
    # The token really went through the TLS server, under the namespace the ACL allows.
    keys = await managed.keys()
    assert any(b":token:" in key for key in keys)
    assert managed.password not in log_output.getvalue()
    assert managed.password not in repr(a.cache)


async def test_lock_and_notifications_work_for_the_restricted_user(managed, tls_caches, clock):
    """The documented ACL allows all fleet mode does: lock, release, publish, subscribe, expire."""
    a, b = tls_caches(managed.cache_config()), tls_caches(managed.cache_config())
    a.start()
    b.start()
    async with b.watch("id") as written:
        async with a.lock("id", 5.0) as held_a:
            assert held_a
            async with b.lock("id", 5.0) as held_b:
                assert not held_b  # and the PTTL/PEXPIRE script ran for the restricted user
        await asyncio.wait_for(written.wait(), 5)
    assert (a.state, b.state) == (CacheState.OK, CacheState.OK)


async def test_the_acl_user_cannot_reach_other_keys(managed, tls_caches):
    """Positive control for the ACL: outside its namespace the sidecar's user is refused."""
    cache = tls_caches(managed.cache_config())
    await cache.read("id")  # allowed: under the namespace
    with pytest.raises(NoPermissionError, match="no permissions"):
        await cache._redis.get("someone-else:token")


# -- wrong CA, wrong password: a clear error and local fallback ------------------------


def _other_ca(managed: ManagedRedis) -> Path:
    return make_tls_files(_mkdir(managed.directory / "other-pki")).ca


@pytest.mark.parametrize(
    ("change", "kind", "detail"),
    [
        pytest.param(
            lambda m: {"ssl_ca_file": _other_ca(m)}, "tls", "CERTIFICATE_VERIFY_FAILED", id="ca"
        ),
        pytest.param(
            lambda _: {"ssl_ca_file": None}, "tls", "CERTIFICATE_VERIFY_FAILED", id="system-store"
        ),
        pytest.param(
            lambda m: {"password_file": _wrong_password(m)},
            "auth",
            "invalid username-password pair",
            id="password",
        ),
    ],
)
async def test_refused_connection_is_clear_and_sidecars_fall_back(
    managed, tls_fleet, idp, leaks, log_output, change, kind, detail
):
    """A certificate or password Redis refuses: logged and in /status; tokens still served."""
    leaks.add(WRONG_PASSWORD)
    a, b = tls_fleet(managed.cache_config(**change(managed)))
    served = await asyncio.gather(a.get("api"), b.get("api"))
    assert all(s.token.value for s in served)
    assert idp.token_requests == 2  # each on its own: nothing is shared
    for service in (a, b):
        cache = service.status()["cache"]
        assert (cache["state"], cache["error"]["kind"]) == ("down", kind)
        assert detail in cache["error"]["detail"]
        fallbacks = sample(
            service.metrics,
            "token_sidecar_fallback_total",
            profile="api",
            reason="cache_backend_down",
        )
        assert fallbacks >= 1
    logged = [line for line in log_output.getvalue().splitlines() if "cache.backend_down" in line]
    assert logged
    assert f'"kind": "{kind}"' in logged[0] or f'"kind":"{kind}"' in logged[0]
    assert await managed.keys() == []


def _wrong_password(managed: ManagedRedis) -> Path:
    path = managed.directory / "wrong-password"
    path.write_text(WRONG_PASSWORD + "\n")
    return path


async def test_password_file_is_read_at_every_new_connection(managed, tls_caches):
    """A rotated password is used from the next connection on: no restart, no stale value."""
    cache = tls_caches(managed.cache_config())
    assert await cache.read("id") is None
    new = f"rotated-pw-LEAKCANARY-{os.urandom(6).hex()}"
    admin = managed.server.admin()
    try:
        await admin.execute_command("ACL", "SETUSER", USER, "resetpass", f">{new}")
        await admin.execute_command("CLIENT", "KILL", "USER", USER)
        # The old password no longer opens a connection (the negative's positive control
        # is the read above, made with it). The first read may still meet the killed
        # connection (unreachable); the next one logs in again and is refused.
        kinds = []
        for _ in range(2):
            with pytest.raises(CacheUnavailableError):
                await cache.read("id")
            assert cache.failure is not None
            kinds.append(cache.failure.kind)
        assert kinds[-1] == "auth"
        managed.password_file.write_text(new)
        assert await cache.read("id") is None
        assert (cache.state, cache.failure) == (CacheState.OK, None)
    finally:
        await admin.aclose()


async def test_client_certificate_is_presented_when_configured(tmp_path, tls_caches):
    """A server that requires a client certificate accepts the configured one, refuses none."""
    tls = make_tls_files(_mkdir(tmp_path / "pki"))
    server = RedisServer(tmp_path, tls=tls, client_certs=True)
    await server.start()
    try:
        base = CacheConfig(backend="redis", url=server.url, ssl_ca_file=tls.ca)
        without = tls_caches(base)
        with pytest.raises(CacheUnavailableError):
            await without.read("id")
        with_cert = tls_caches(
            dataclasses.replace(base, ssl_certfile=tls.client_cert, ssl_keyfile=tls.client_key)
        )
        assert await with_cert.read("id") is None
        assert with_cert.state is CacheState.OK
    finally:
        await server.stop()


# -- files are read at start: a bad one is exit 2 --------------------------------------


def _bad_files(tmp_path: Path, tls: TLSFiles) -> list[Any]:
    encrypted = tmp_path / "encrypted.key"
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    missing = tmp_path / "missing"
    client = {"ssl_certfile": tls.client_cert, "ssl_keyfile": tls.client_key}
    return [
        ({"ssl_ca_file": missing}, "cache.ssl_ca_file", "No such file"),
        ({"ssl_ca_file": tls.client_key}, "cache.ssl_ca_file", "not a PEM CA bundle"),
        (client | {"ssl_keyfile": missing}, "cache.ssl_keyfile", "No such file"),
        (client | {"ssl_keyfile": tls.server_key}, "cache.ssl_certfile", "KEY_VALUES_MISMATCH"),
        (client | {"ssl_keyfile": encrypted}, "cache.ssl_certfile", "encrypted"),
        ({"password_file": missing}, "cache.password_file", "No such file"),
        ({"password_file": empty}, "cache.password_file", "is empty"),
    ]


def test_unusable_files_stop_the_start_naming_the_key(tmp_path):
    """A missing, empty or unusable TLS or password file is a ConfigError naming its key."""
    tls = make_tls_files(_mkdir(tmp_path / "pki"))
    base = CacheConfig(
        backend="redis",
        url="rediss://127.0.0.1:1/0",
        username=USER,
        password_file=tls.ca,  # any readable, non-empty file will do as a password here
        ssl_ca_file=tls.ca,
    )
    good = Config(profiles=MappingProxyType({}), cache=base, source="c.toml")
    check_cache_files(good)  # positive control: the same files, all usable
    for change, key, problem in _bad_files(tmp_path, tls):
        config = dataclasses.replace(good, cache=dataclasses.replace(base, **change))
        for start in (
            lambda c=config: check_cache_files(c),
            lambda c=config: make_cache(c, FakeClock(), Metrics(CollectorRegistry())),
        ):
            with pytest.raises(ConfigError) as info:
                start()
            assert (info.value.source, info.value.key) == ("c.toml", key), change
            assert problem in info.value.problem, (change, info.value.problem)


def test_client_options_move_the_user_into_the_password_provider():
    """With a password file, the URL's user joins the provider and the URL loses its user info."""
    access = RedisAccess("rediss://app@redis.example:6380/2?db=2", password_file=Path("/pw"))
    url, options = access.client_options()
    assert url == "rediss://redis.example:6380/2?db=2"
    provider = options["credential_provider"]
    assert isinstance(provider, PasswordFile)
    assert (provider.username, provider.path) == ("app", Path("/pw"))
    assert (options["ssl_cert_reqs"], options["ssl_check_hostname"]) == ("required", True)
    plain_url, plain = RedisAccess("redis://redis:6379/0", username="u").client_options()
    assert (plain_url, plain) == ("redis://redis:6379/0", {"username": "u"})
    assert repr(provider) == "PasswordFile(path='/pw', username='app')"
    assert repr(access) == "RedisAccess(tls=True, username=None, password_file='/pw')"


def test_failures_are_classified_without_secrets():
    """Client errors become a kind and one line: tls, auth, timeout, unreachable, out_of_memory."""
    assert describe_failure(AuthenticationError("invalid  password\n")).view() == {
        "kind": "auth",
        "detail": "invalid password",
    }
    assert describe_failure(RedisTimeoutError("Timeout reading")).kind == "timeout"
    assert describe_failure(RedisConnectionError("Error 111")).kind == "unreachable"
    assert describe_failure(OutOfMemoryError("command not allowed")).kind == "out_of_memory"
    assert describe_failure(ResponseError("WRONGTYPE")).kind == "error"
    assert len(describe_failure(ResponseError("x" * 1000)).detail) == 300


def test_docs_give_the_acl_the_tests_use():
    """docs/deploy.md tells operators the exact ACL rules these tests run the sidecar under."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    assert SIDECAR_ACL.replace("NS", "token-sidecar") in re.sub(r"\s*\\\n\s*", " ", text)
