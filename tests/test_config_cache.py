"""The [cache] table: TLS files, ACL user and password file are refused in every contradiction."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import CacheConfig, config_from_mapping, load_config, redacted, url_credentials
from sidecar.errors import ConfigError

CANARY = "redis-pw-LEAKCANARY-cache"
PROFILE = (
    '[profiles.api]\nauth0_domain = "example.us.auth0.com"\nclient_id = "abc"\n'
    'client_secret_file = "/s"\n'
)
PROFILE_MAPPING = {
    "api": {"auth0_domain": "example.us.auth0.com", "client_id": "abc", "client_secret_file": "/s"}
}


def cache_toml(**keys: str) -> str:
    return PROFILE + "[cache]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())


BAD = [
    pytest.param(
        {"url": '"redis://redis:6379/0"', "ssl_ca_file": '"/ca.pem"'},
        "cache.ssl_ca_file",
        "need a rediss:// URL",
        id="ca-without-tls",
    ),
    pytest.param(
        {"url": '"unix:///run/redis.sock"', "ssl_certfile": '"/c"', "ssl_keyfile": '"/k"'},
        "cache.ssl_certfile",
        "need a rediss:// URL",
        id="client-cert-on-unix-socket",
    ),
    pytest.param(
        {"url": '"rediss://redis:6380/0"', "ssl_certfile": '"/c.pem"'},
        "cache.ssl_keyfile",
        "set ssl_certfile and ssl_keyfile together",
        id="cert-without-key",
    ),
    pytest.param(
        {"url": '"rediss://redis:6380/0"', "ssl_keyfile": '"/k.pem"'},
        "cache.ssl_certfile",
        "set ssl_certfile and ssl_keyfile together",
        id="key-without-cert",
    ),
    pytest.param(
        {"url": f'"rediss://default:{CANARY}@redis:6380/0"', "password_file": '"/pw"'},
        "cache.password_file",
        "carries a password too",
        id="password-in-url-and-file",
    ),
    pytest.param(
        {"url": f'"rediss://redis:6380/0?password={CANARY}"', "password_file": '"/pw"'},
        "cache.password_file",
        "carries a password too",
        id="password-in-query-and-file",
    ),
    pytest.param(
        {"url": '"rediss://app@redis:6380/0"', "username": '"app"', "password_file": '"/pw"'},
        "cache.username",
        "names a user too",
        id="user-in-url-and-key",
    ),
    pytest.param(
        {"url": '"rediss://redis:6380/0"', "username": '"app"'},
        "cache.username",
        "needs a password",
        id="user-without-password",
    ),
    pytest.param(
        {"url": f'"rediss://:{CANARY}@redis:6380/0?ssl_cert_reqs=none"'},
        "cache.url",
        "turns TLS certificate checks off",
        id="no-certificate-check",
    ),
    pytest.param(
        {"url": '"rediss://redis:6380/0?ssl_check_hostname=false"'},
        "cache.url",
        "turns TLS certificate checks off",
        id="no-hostname-check",
    ),
    pytest.param({"url": '"https://redis:6380/0"'}, "cache.url", "redis://", id="not-redis"),
    pytest.param({"passwd_file": '"/pw"'}, "cache.passwd_file", "'password_file'", id="typo"),
]


@pytest.mark.parametrize(("keys", "key", "problem"), BAD)
def test_contradictions_name_file_key_and_problem(tmp_path, keys, key, problem):
    """Each contradiction in [cache] is a ConfigError naming the file, the key and the problem."""
    path = tmp_path / "sidecar.toml"
    path.write_text(cache_toml(**keys))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.source) == (key, str(path))
    assert problem in info.value.problem
    assert CANARY not in str(info.value)


GOOD = [
    pytest.param(
        {
            "url": "rediss://redis.example:6380/0",
            "username": "token-sidecar",
            "password_file": "/run/secrets/redis/password",
            "ssl_ca_file": "/etc/redis-ca/ca.crt",
            "ssl_certfile": "/etc/redis-client/tls.crt",
            "ssl_keyfile": "/etc/redis-client/tls.key",
        },
        id="everything",
    ),
    pytest.param(
        {"url": "rediss://default@fly-x.upstash.io:6379", "password_file": "/run/pw"},
        id="user-in-url-password-in-file",
    ),
    pytest.param(
        {"url": f"rediss://:{CANARY}@fly-x.upstash.io:6379", "username": "default"},
        id="password-in-url-user-in-key",
    ),
    pytest.param({"url": "redis://redis:6379/0", "password_file": "/pw"}, id="plain-with-file"),
    pytest.param({"url": "rediss://redis:6380/0?ssl_cert_reqs=required"}, id="explicit-check"),
]


@pytest.mark.parametrize("cache", GOOD)
def test_consistent_tables_load_as_written(cache):
    """Consistent [cache] tables load with every key as written; paths become Paths."""
    config = config_from_mapping({"cache": cache, "profiles": PROFILE_MAPPING}, source="t")
    for key, value in cache.items():
        loaded = getattr(config.cache, key)
        assert (str(loaded) if isinstance(loaded, Path) else loaded) == value


def test_defaults_need_no_tls_and_no_password():
    """Without the new keys nothing changes: no user, no password file, no TLS files."""
    config = config_from_mapping({"profiles": PROFILE_MAPPING}, source="t")
    assert config.cache == CacheConfig()
    assert (config.cache.username, config.cache.password_file, config.cache.ssl_ca_file) == (
        None,
        None,
        None,
    )


def test_check_view_shows_where_the_password_is_never_what():
    """The check view names the password file and TLS files; a URL password is redacted."""
    cache = {
        "backend": "redis",
        "url": f"rediss://default:{CANARY}@redis:6380/0",
        "ssl_ca_file": "/ca.pem",
    }
    view = redacted(config_from_mapping({"cache": cache, "profiles": PROFILE_MAPPING}, source="t"))
    assert CANARY not in json.dumps(view)
    assert view["cache"]["url"] == "rediss://default:[redacted]@redis:6380/0"  # positive control
    assert view["cache"]["ssl_ca_file"] == "/ca.pem"
    view = redacted(
        config_from_mapping(
            {
                "cache": {"url": "rediss://redis:6380/0", "password_file": "/pw", "username": "a"},
                "profiles": PROFILE_MAPPING,
            },
            source="t",
        )
    )
    assert (view["cache"]["password_file"], view["cache"]["username"]) == ("/pw", "a")


@pytest.mark.parametrize(
    ("url", "username", "has_password"),
    [
        ("rediss://default:pw@h:6379/0", "default", True),
        ("rediss://:pw@h:6379/0", None, True),
        ("rediss://app@h:6379/0", "app", False),
        ("rediss://h:6379/0?username=app&password=pw", "app", True),
        ("redis://h:6379/0", None, False),
        ("unix:///run/redis.sock?db=1", None, False),
    ],
)
def test_url_credentials_read_like_redis_py(url, username, has_password):
    """User info and the username/password query arguments both count, as redis-py reads them."""
    found = url_credentials(url)
    assert (found.username, found.has_password) == (username, has_password)


ROOT = Path(__file__).resolve().parent.parent
TOML_BLOCK = re.compile(r"^( *)```toml\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def managed_redis_examples() -> list[Any]:
    """Every TOML example of a TLS [cache] in the docs (the fly.toml snippet is not ours)."""
    found: list[Any] = []
    for doc in ("deploy.md", "configuration.md"):
        for indent, body in TOML_BLOCK.findall((ROOT / "docs" / doc).read_text()):
            text = "\n".join(line.removeprefix(indent) for line in body.splitlines())
            if "rediss://" in text and "[cache]" in text:
                found.append(pytest.param(text, id=f"{doc}:{len(found)}"))
    return found


@pytest.mark.parametrize("text", managed_redis_examples())
def test_docs_managed_redis_examples_load(text):
    """The managed-Redis [cache] examples in the docs are valid configs as written."""
    data = tomllib.loads(text)
    data.setdefault("profiles", PROFILE_MAPPING)
    config = config_from_mapping(data, source="docs")
    assert config.cache.backend == "redis"
    assert config.cache.url.startswith("rediss://")
    assert config.cache.password_file is not None


def test_docs_have_the_managed_redis_examples():
    """Positive control for the test above: the Fly.io and Kubernetes examples are found."""
    assert len(managed_redis_examples()) >= 3
