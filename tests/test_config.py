"""Config loading refuses every invalid config with file, key and problem, and fills defaults."""

import json
from pathlib import Path
from types import MappingProxyType

import pytest

from sidecar.config import (
    BackoffConfig,
    BreakerConfig,
    CacheConfig,
    EnvSecret,
    FileSecret,
    InlineSecret,
    ProfileConfig,
    RefreshDuration,
    RefreshShare,
    ServerConfig,
    config_from_env,
    config_from_mapping,
    format_duration,
    load_config,
    parse_duration,
    redacted,
    resolve_config,
)
from sidecar.errors import ConfigError

CANARY = "s3cret-LEAKCANARY-config"

# The smallest valid profile; go_api() overrides or drops its keys.
BASE = {
    "auth0_domain": '"example.us.auth0.com"',
    "client_id": '"abc"',
    "client_secret_file": '"/var/run/secrets/auth0/client_secret"',
}
HTTPS_IDP = {"auth0_domain": None, "token_url": '"https://idp.example/oauth/token"'}
PKJWT = {"client_auth": '"private_key_jwt"', "private_key_file": '"/keys/sidecar.pem"'}
PKJWT_MAPPING = {
    "auth0_domain": "example.us.auth0.com",
    "client_id_env": "CLIENT_ID",
    "client_auth": "private_key_jwt",
    "private_key_file": "/keys/sidecar.pem",
}


def go_api(tail: str = "", /, **fields: str | None) -> str:
    """A [profiles.go-api] table from BASE plus ``fields`` (None drops a key), then ``tail``."""
    values = {**BASE, **fields}
    lines = [f"{key} = {value}" for key, value in values.items() if value is not None]
    return "[profiles.go-api]\n" + "\n".join(lines) + "\n" + tail


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.toml"
    path.write_text(text, encoding="utf-8")
    return path


BAD_CONFIGS = [
    # top level
    pytest.param('[profile.go-api]\nclient_id = "x"\n', "profile", "did you mean 'profiles'?"),
    pytest.param('[server]\nlisten = "127.0.0.1:8700"\n', "profiles", "at least one profile"),
    pytest.param("[profiles]\n", "profiles", "at least one profile"),
    pytest.param("[profiles]\ngo-api = 3\n", "profiles.go-api", "expected a table"),
    pytest.param(go_api().replace("go-api", "Go_API"), "profiles.Go_API", "invalid profile name"),
    pytest.param('server = "x"\n' + go_api(), "server", "expected a table"),
    # unknown keys
    pytest.param(
        go_api(client_secert_file='"/x"'),
        "profiles.go-api.client_secert_file",
        "unknown key; did you mean 'client_secret_file'?",
    ),
    pytest.param(go_api(colour='"red"'), "profiles.go-api.colour", "unknown key"),
    pytest.param(
        go_api("[profiles.go-api.backoff]\ncaps = '1m'\n"),
        "profiles.go-api.backoff.caps",
        "did you mean 'cap'?",
    ),
    # endpoint
    pytest.param(
        go_api(token_url='"https://idp.example/oauth/token"'),
        "profiles.go-api.token_url",
        "conflicts with auth0_domain",
    ),
    pytest.param(go_api(auth0_domain=None), "profiles.go-api.token_url", "required"),
    pytest.param(
        go_api(auth0_domain='"https://example.us.auth0.com/"'),
        "profiles.go-api.auth0_domain",
        "bare host name",
    ),
    pytest.param(
        go_api(auth0_domain=None, token_url='"http://idp.example/oauth/token"'),
        "profiles.go-api.token_url",
        "plain http sends the client secret in clear; use https",
    ),
    pytest.param(
        go_api(auth0_domain=None, token_url='"/oauth/token"'),
        "profiles.go-api.token_url",
        "absolute http(s) URL",
    ),
    pytest.param(
        go_api(auth0_domain=None, token_url='"https://[idp/token"'),
        "profiles.go-api.token_url",
        "absolute http(s) URL",
    ),
    pytest.param(
        go_api(jwks_url='"http://idp.example/jwks.json"'),
        "profiles.go-api.jwks_url",
        "use https",
    ),
    pytest.param(go_api(issuer='""'), "profiles.go-api.issuer", "must not be empty"),
    # client credentials
    pytest.param(go_api(client_id=None), "profiles.go-api.client_id", "required"),
    pytest.param(
        go_api(client_id_env='"CLIENT_ID"'),
        "profiles.go-api.client_id_env",
        "conflicts with client_id",
    ),
    pytest.param(
        go_api(client_id=None, client_id_env='"1BAD"'),
        "profiles.go-api.client_id_env",
        "environment variable name",
    ),
    pytest.param(
        go_api(client_secret=f'"{CANARY}"'),
        "profiles.go-api.client_secret_file",
        "conflicts with client_secret",
    ),
    pytest.param(go_api(client_secret_file='""'), "profiles.go-api.client_secret_file", "empty"),
    pytest.param(
        go_api(client_secret_file=None, client_secret="12345"),
        "profiles.go-api.client_secret",
        "expected a string",
    ),
    pytest.param(
        go_api(client_auth='"client_secret_jwt"'), "profiles.go-api.client_auth", "expected one of"
    ),
    pytest.param(
        go_api(client_secret_file=None),
        "profiles.go-api.client_secret",
        "'client_secret_post' needs a client secret",
    ),
    pytest.param(
        go_api(**PKJWT),
        "profiles.go-api.client_secret_file",
        "never send two client authentication methods",
    ),
    pytest.param(
        go_api(client_auth='"private_key_jwt"', client_secret_file=None),
        "profiles.go-api.private_key_file",
        "required by client_auth = 'private_key_jwt'",
    ),
    pytest.param(
        go_api(private_key_kid='"k1"'),
        "profiles.go-api.private_key_kid",
        "only used with client_auth = 'private_key_jwt'",
    ),
    pytest.param(
        go_api(client_secret_file=None, assertion_alg='"HS256"', **PKJWT),
        "profiles.go-api.assertion_alg",
        "expected one of",
    ),
    # token request
    pytest.param(go_api(audience="42"), "profiles.go-api.audience", "expected a string"),
    pytest.param(
        go_api(extra_params='{ grant_type = "password" }'),
        "profiles.go-api.extra_params.grant_type",
        "sets this field itself",
    ),
    pytest.param(
        go_api(extra_params="{ organization = 1 }"),
        "profiles.go-api.extra_params.organization",
        "expected a string",
    ),
    # lifecycle
    pytest.param(go_api(required='"yes"'), "profiles.go-api.required", "expected a boolean"),
    pytest.param(go_api(refresh_before='"100%"'), "profiles.go-api.refresh_before", "percentage"),
    pytest.param(go_api(refresh_before='"0%"'), "profiles.go-api.refresh_before", "percentage"),
    pytest.param(
        go_api(refresh_before='"soon"'), "profiles.go-api.refresh_before", "expected a duration"
    ),
    pytest.param(
        go_api(refresh_before='"5s"'),
        "profiles.go-api.refresh_before",
        "refresh_before (5s) must be above min_ttl (30s): there would be no window to refresh in",
    ),
    pytest.param(go_api(min_ttl='"0s"'), "profiles.go-api.min_ttl", "must be above zero"),
    pytest.param(go_api(wait_timeout='"-1s"'), "profiles.go-api.wait_timeout", "negative"),
    pytest.param(go_api(verify='"sig"'), "profiles.go-api.verify", "expected one of"),
    pytest.param(
        go_api(verify='"jwks"', **HTTPS_IDP), "profiles.go-api.verify", "needs a JWKS URL"
    ),
    pytest.param(go_api(allow_uids="[1000, -1]"), "profiles.go-api.allow_uids", "user ids"),
    pytest.param(go_api(allow_uids="[true]"), "profiles.go-api.allow_uids", "user ids"),
    pytest.param(
        go_api(connect_timeout='"20s"'),
        "profiles.go-api.connect_timeout",
        "must not exceed timeout (10s)",
    ),
    pytest.param(
        go_api("[profiles.go-api.backoff]\nbase = '2m'\ncap = '1m'\n"),
        "profiles.go-api.backoff.base",
        "must not exceed cap (1m)",
    ),
    pytest.param(
        go_api("[profiles.go-api.breaker]\nfailures = 0\n"),
        "profiles.go-api.breaker.failures",
        "at least 1",
    ),
    pytest.param(
        go_api("[profiles.go-api.breaker]\nfailures = true\n"),
        "profiles.go-api.breaker.failures",
        "expected an integer",
    ),
    pytest.param(
        go_api("[profiles.go-api.breaker]\nreset = 'later'\n"),
        "profiles.go-api.breaker.reset",
        "expected a duration",
    ),
    pytest.param(go_api(breaker="5"), "profiles.go-api.breaker", "expected a table"),
    # server
    pytest.param(
        go_api('[server]\nlisten = "0.0.0.0:8700"\n'),
        "server.listen",
        "the token API must listen on loopback; set server.allow_non_loopback = true",
    ),
    pytest.param(go_api('[server]\nlisten = "127.0.0.1:99999"\n'), "server.listen", "port"),
    pytest.param(go_api('[server]\nlisten = "::1:8700"\n'), "server.listen", "brackets"),
    pytest.param(go_api('[server]\nlisten = ":8700"\n'), "server.listen", "HOST:PORT"),
    pytest.param(go_api('[server]\nlisten = "[idp]:8700"\n'), "server.listen", "IPv6 address"),
    pytest.param(go_api("[server]\nlisten = 8700\n"), "server.listen", "expected a string"),
    pytest.param(
        go_api('[server]\nlisten = ""\n'), "server.listen", "needs a TCP listener or a Unix socket"
    ),
    pytest.param(go_api("[server]\nsocket_mode = 660\n"), "server.socket_mode", "octal"),
    pytest.param(go_api('[server]\nsocket_mode = "0999"\n'), "server.socket_mode", "octal"),
    pytest.param(
        go_api("[server]\nallow_non_loopbak = true\n"),
        "server.allow_non_loopbak",
        "did you mean 'allow_non_loopback'?",
    ),
    pytest.param(go_api('[server]\naccess_log = "yes"\n'), "server.access_log", "boolean"),
    pytest.param(go_api('[server]\nops_listen = "9700"\n'), "server.ops_listen", "HOST:PORT"),
    pytest.param(go_api("[server]\nmax_connections = 0\n"), "server.max_connections", "at least 1"),
    pytest.param(
        go_api('[server]\nmax_connections = "many"\n'), "server.max_connections", "integer"
    ),
    pytest.param(
        go_api('[server]\nheader_timeout = "0s"\n'), "server.header_timeout", "above zero"
    ),
    pytest.param(
        go_api('[server]\nkeepalive_timeout = "soon"\n'), "server.keepalive_timeout", "duration"
    ),
    # cache
    pytest.param(go_api('[cache]\nbackend = "memcached"\n'), "cache.backend", "expected one of"),
    pytest.param(go_api('[cache]\nurl = "http://redis:6379"\n'), "cache.url", "redis://"),
    pytest.param(go_api('[cache]\nnamespace = "token sidecar"\n'), "cache.namespace", "letters"),
]


@pytest.mark.parametrize(("text", "key", "problem"), BAD_CONFIGS)
def test_bad_config_names_file_key_and_problem(tmp_path, text, key, problem):
    """Each invalid config raises a ConfigError naming the file, the key path and the problem."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert error.key == key
    assert str(path) in str(error)
    assert problem in error.problem
    assert CANARY not in str(error)


def test_wrong_inline_secret_is_never_echoed():
    """A refused inline client secret does not appear in the error message."""
    bad: list[dict[str, object]] = [
        {"client_secret": CANARY, "client_auth": "private_key_jwt", "private_key_file": "/k"},
        {"client_secret": CANARY, "client_secret_env": "SECRET"},
        {"client_secret": [CANARY]},
    ]
    for fields in bad:
        profile = {"auth0_domain": "example.us.auth0.com", "client_id": "abc", **fields}
        with pytest.raises(ConfigError) as info:
            config_from_mapping({"profiles": {"go-api": profile}}, source="test")
        assert CANARY not in str(info.value)


DESIGN_EXAMPLE = """
[server]
listen = "127.0.0.1:8700"
socket = "/run/token-sidecar/token.sock"
socket_mode = "0660"
allow_uids = []
ops_listen = "0.0.0.0:9700"

[cache]
backend = "memory"
url = "redis://127.0.0.1:6379/0"
namespace = "token-sidecar"

[profiles.go-api]
auth0_domain = "example.us.auth0.com"
client_id = "abc"
client_secret_file = "/var/run/secrets/auth0/client_secret"
client_auth = "client_secret_post"
audience = "https://api.example.com/"
scope = "read:tools write:tools"
extra_params = {}
required = true
refresh_before = "20%"
min_ttl = "30s"
wait_timeout = "10s"
verify = "jwks"
allow_uids = []

[profiles.go-api.backoff]
base = "1s"
cap = "60s"

[profiles.go-api.breaker]
failures = 5
reset = "30s"
"""


def test_design_example_loads(tmp_path):
    """The DESIGN.md example config loads into the expected model."""
    path = write(tmp_path, DESIGN_EXAMPLE)
    config = load_config(path)
    assert config.source == str(path)
    assert config.server == ServerConfig(
        listen="127.0.0.1:8700",
        socket=Path("/run/token-sidecar/token.sock"),
        socket_mode=0o660,
        allow_uids=(),
        ops_listen="0.0.0.0:9700",
    )
    assert config.cache == CacheConfig()
    assert isinstance(config.profiles, MappingProxyType)
    assert config.profiles["go-api"] == ProfileConfig(
        name="go-api",
        token_url="https://example.us.auth0.com/oauth/token",
        issuer="https://example.us.auth0.com/",
        jwks_url="https://example.us.auth0.com/.well-known/jwks.json",
        client_id=InlineSecret("abc"),
        client_secret=FileSecret(Path("/var/run/secrets/auth0/client_secret")),
        audience="https://api.example.com/",
        scope="read:tools write:tools",
        verify="jwks",
        allow_uids=(),
    )


def test_auth0_domain_expands_and_explicit_keys_win():
    """auth0_domain sets token_url, issuer and jwks_url unless issuer or jwks_url are given."""
    profile = {"auth0_domain": "tenant.eu.auth0.com", "client_id": "abc", "client_secret_env": "S"}
    expanded = config_from_mapping({"profiles": {"a": profile}}, source="t").profiles["a"]
    assert expanded.token_url == "https://tenant.eu.auth0.com/oauth/token"
    assert expanded.issuer == "https://tenant.eu.auth0.com/"
    assert expanded.jwks_url == "https://tenant.eu.auth0.com/.well-known/jwks.json"
    assert expanded.client_secret == EnvSecret("S")
    custom = {**profile, "issuer": "https://login.example/", "jwks_url": "https://keys.example/"}
    overridden = config_from_mapping({"profiles": {"a": custom}}, source="t").profiles["a"]
    assert overridden.token_url == "https://tenant.eu.auth0.com/oauth/token"
    assert overridden.issuer == "https://login.example/"
    assert overridden.jwks_url == "https://keys.example/"


def test_defaults_fill_everything_not_given():
    """A minimal config gets the documented defaults for every optional key."""
    profile = {
        "token_url": "https://idp.example/token",
        "client_id_file": "/id",
        "client_secret": "x",
    }
    config = config_from_mapping({"profiles": {"p": profile}}, source="t")
    assert config.server == ServerConfig()
    assert config.cache == CacheConfig()
    p = config.profiles["p"]
    assert p.client_id == FileSecret(Path("/id"))
    assert p.issuer is None
    assert p.jwks_url is None
    assert p.client_auth == "client_secret_post"
    assert p.refresh_before == RefreshShare(0.2)
    assert (p.min_ttl, p.wait_timeout, p.connect_timeout, p.timeout) == (30, 10, 3, 10)
    assert p.backoff == BackoffConfig(base=1, cap=60)
    assert p.breaker == BreakerConfig(failures=5, reset=30)
    assert p.required is True
    assert p.verify is None
    assert p.allow_uids is None
    assert isinstance(p.extra_params, MappingProxyType)
    assert dict(p.extra_params) == {}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20%", RefreshShare(0.2)),
        ("12.5%", RefreshShare(0.125)),
        ("5m", RefreshDuration(300)),
        ("1h30m", RefreshDuration(5400)),
        (90, RefreshDuration(90)),
    ],
)
def test_refresh_before_share_or_duration(value, expected):
    """refresh_before is a share of the lifetime when it ends in %, else a duration."""
    profile = {**PKJWT_MAPPING, "refresh_before": value}
    config = config_from_mapping({"profiles": {"p": profile}}, source="t")
    assert config.profiles["p"].refresh_before == expected


def test_private_key_jwt_profile():
    """private_key_jwt takes a key file, kid, algorithm and assertion audience, and no secret."""
    profile = {
        **PKJWT_MAPPING,
        "private_key_kid": "k1",
        "assertion_alg": "ES256",
        "assertion_audience": "https://example.us.auth0.com/",
        "extra_params": {"organization": "org_123"},
        "resource": "https://api.example.com/",
    }
    p = config_from_mapping({"profiles": {"p": profile}}, source="t").profiles["p"]
    assert p.client_auth == "private_key_jwt"
    assert p.client_secret is None
    assert p.client_id == EnvSecret("CLIENT_ID")
    assert p.private_key_file == Path("/keys/sidecar.pem")
    assert (p.private_key_kid, p.assertion_alg) == ("k1", "ES256")
    assert p.extra_params == MappingProxyType({"organization": "org_123"})
    assert p.resource == "https://api.example.com/"


@pytest.mark.parametrize(
    "token_url",
    ["http://127.0.0.1:9000/oauth/token", "http://localhost/token", "http://[::1]:8443/token"],
)
def test_plain_http_is_allowed_on_loopback(token_url):
    """A plain-http token endpoint is accepted only when it is on loopback."""
    profile = {"token_url": token_url, "client_id": "a", "client_secret_env": "S"}
    config = config_from_mapping({"profiles": {"dev": profile}}, source="t")
    assert config.profiles["dev"].token_url == token_url


@pytest.mark.parametrize(
    ("server", "listen"),
    [
        ({"listen": "[::1]:8700"}, "[::1]:8700"),
        ({"listen": "localhost:0"}, "localhost:0"),
        ({"listen": "127.0.0.2:8700"}, "127.0.0.2:8700"),
        ({"listen": "0.0.0.0:8700", "allow_non_loopback": True}, "0.0.0.0:8700"),
        ({"listen": "", "socket": "/run/ts.sock"}, None),
    ],
)
def test_listen_addresses(server, listen):
    """The token API listens on loopback, anywhere when allowed, or only on a socket."""
    profile = {"token_url": "https://idp.example/t", "client_id": "a", "client_secret_env": "S"}
    config = config_from_mapping({"server": server, "profiles": {"p": profile}}, source="t")
    assert config.server.listen == listen


ENV_BASE = {
    "TOKEN_SIDECAR_AUTH0_DOMAIN": "example.us.auth0.com",
    "TOKEN_SIDECAR_CLIENT_ID": "abc",
    "TOKEN_SIDECAR_AUDIENCE": "https://api.example.com/",
    "TOKEN_SIDECAR_SCOPE": "read:tools",
}


def test_env_profile_refers_to_the_secret_variable():
    """The env-only profile points at TOKEN_SIDECAR_CLIENT_SECRET and never copies its value."""
    environ = {**ENV_BASE, "TOKEN_SIDECAR_CLIENT_SECRET": CANARY, "TOKEN_SIDECAR_LISTEN": ""}
    environ["TOKEN_SIDECAR_SOCKET"] = "/run/ts.sock"
    config = config_from_env(environ)
    assert config is not None
    assert config.source == "environment"
    assert list(config.profiles) == ["default"]
    p = config.profiles["default"]
    assert p.token_url == "https://example.us.auth0.com/oauth/token"
    assert p.client_id == InlineSecret("abc")
    assert p.client_secret == EnvSecret("TOKEN_SIDECAR_CLIENT_SECRET")
    assert (p.audience, p.scope) == ("https://api.example.com/", "read:tools")
    assert config.server.listen is None
    assert config.server.socket == Path("/run/ts.sock")
    assert CANARY not in repr(config)


def test_env_profile_with_secret_file():
    """TOKEN_SIDECAR_CLIENT_SECRET_FILE becomes a file reference."""
    environ = {
        "TOKEN_SIDECAR_TOKEN_URL": "https://idp.example/oauth/token",
        "TOKEN_SIDECAR_CLIENT_ID": "abc",
        "TOKEN_SIDECAR_CLIENT_SECRET_FILE": "/secrets/client_secret",
        "TOKEN_SIDECAR_OPS_LISTEN": "0.0.0.0:9100",
    }
    config = config_from_env(environ)
    assert config is not None
    p = config.profiles["default"]
    assert p.token_url == "https://idp.example/oauth/token"
    assert p.client_secret == FileSecret(Path("/secrets/client_secret"))
    assert config.server.ops_listen == "0.0.0.0:9100"


def test_env_without_endpoint_defines_no_profile():
    """Without TOKEN_SIDECAR_AUTH0_DOMAIN or TOKEN_SIDECAR_TOKEN_URL there is no env profile."""
    assert config_from_env({"TOKEN_SIDECAR_CLIENT_ID": "abc", "HOME": "/root"}) is None


@pytest.mark.parametrize(
    ("changes", "key", "problem"),
    [
        ({"TOKEN_SIDECAR_CLIENT_ID": None}, "TOKEN_SIDECAR_CLIENT_ID", "required"),
        ({"TOKEN_SIDECAR_CLIENT_SECRET": None}, "TOKEN_SIDECAR_CLIENT_SECRET", "required"),
        ({"TOKEN_SIDECAR_CLIENT_SECRET": ""}, "TOKEN_SIDECAR_CLIENT_SECRET", "empty"),
        (
            {"TOKEN_SIDECAR_CLIENT_SECRET_FILE": "/s"},
            "TOKEN_SIDECAR_CLIENT_SECRET_FILE",
            "conflicts",
        ),
        (
            {"TOKEN_SIDECAR_TOKEN_URL": "https://i.example/t"},
            "TOKEN_SIDECAR_TOKEN_URL",
            "conflicts",
        ),
        ({"TOKEN_SIDECAR_AUTH0_DOMAIN": "https://x/"}, "TOKEN_SIDECAR_AUTH0_DOMAIN", "bare host"),
        ({"TOKEN_SIDECAR_LISTEN": "0.0.0.0:8700"}, "TOKEN_SIDECAR_LISTEN", "loopback"),
        ({"TOKEN_SIDECAR_LISTEN": ""}, "TOKEN_SIDECAR_LISTEN", "needs a TCP listener"),
        ({"TOKEN_SIDECAR_OPS_LISTEN": "9700"}, "TOKEN_SIDECAR_OPS_LISTEN", "HOST:PORT"),
        ({"TOKEN_SIDECAR_SCOPE": " "}, "TOKEN_SIDECAR_SCOPE", "empty"),
    ],
)
def test_env_errors_name_the_variable(changes, key, problem):
    """Errors in the env-only profile name the offending environment variable."""
    environ = {**ENV_BASE, "TOKEN_SIDECAR_CLIENT_SECRET": CANARY}
    for name, value in changes.items():
        if value is None:
            del environ[name]
        else:
            environ[name] = value
    with pytest.raises(ConfigError) as info:
        config_from_env(environ)
    assert info.value.source == "environment"
    assert info.value.key == key
    assert problem in info.value.problem
    assert CANARY not in str(info.value)


def test_resolve_config_precedence(tmp_path):
    """--config beats TOKEN_SIDECAR_CONFIG, which beats the env-only profile."""
    flag = write(tmp_path, go_api().replace("go-api", "from-flag"))
    env_file = tmp_path / "env.toml"
    env_file.write_text(go_api().replace("go-api", "from-env-file"), encoding="utf-8")
    environ = {
        **ENV_BASE,
        "TOKEN_SIDECAR_CLIENT_SECRET": CANARY,
        "TOKEN_SIDECAR_CONFIG": str(env_file),
    }
    assert list(resolve_config(str(flag), environ).profiles) == ["from-flag"]
    assert list(resolve_config(None, environ).profiles) == ["from-env-file"]
    del environ["TOKEN_SIDECAR_CONFIG"]
    assert list(resolve_config(None, environ).profiles) == ["default"]


def test_resolve_config_without_any_source():
    """With no flag, no TOKEN_SIDECAR_CONFIG and no env profile, the error says what to set."""
    with pytest.raises(ConfigError) as info:
        resolve_config(None, {"TOKEN_SIDECAR_CONFIG": ""})
    assert (info.value.source, info.value.key) == ("environment", "TOKEN_SIDECAR_CONFIG")
    assert "pass --config FILE" in info.value.problem


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("24h", 86400),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("2d", 172800),
        ("1.5s", 1.5),
        ("1m500ms", 60.5),
        (45, 45),
        (0.25, 0.25),
    ],
)
def test_parse_duration(value, seconds):
    """Durations are unit strings or plain numbers of seconds."""
    assert parse_duration(value, source="t", key="k") == seconds


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("30", "expected a duration"),
        ("5 m", "expected a duration"),
        ("5min", "expected a duration"),
        ("", "expected a duration"),
        (True, "got a boolean"),
        ([1], "got a list"),
        (float("inf"), "finite"),
        ("-5s", "must not be negative"),
        (-1, "must not be negative"),
        (0, "must be above zero"),
        ("0s", "must be above zero"),
    ],
)
def test_parse_duration_refuses(value, problem):
    """Garbage, negative and (by default) zero durations are refused under the given key."""
    with pytest.raises(ConfigError) as info:
        parse_duration(value, source="file.toml", key="profiles.p.min_ttl")
    assert info.value.key == "profiles.p.min_ttl"
    assert problem in info.value.problem


def test_parse_duration_allow_zero():
    """allow_zero accepts a zero duration but still refuses a negative one."""
    assert parse_duration("0s", source="t", key="k", allow_zero=True) == 0
    with pytest.raises(ConfigError):
        parse_duration("-1s", source="t", key="k", allow_zero=True)


@pytest.mark.parametrize(
    ("seconds", "text"), [(30, "30s"), (90, "1m30s"), (86400, "1d"), (0.5, "0.5s"), (0, "0s")]
)
def test_format_duration_round_trips(seconds, text):
    """format_duration writes what parse_duration reads back."""
    assert format_duration(seconds) == text
    assert parse_duration(text, source="t", key="k", allow_zero=True) == seconds


def test_redacted_hides_inline_secrets():
    """The check view shows references, hides inline secrets and URL passwords, and is JSON."""
    data = {
        "cache": {"backend": "redis", "url": f"redis://:{CANARY}@redis:6379/0"},
        "profiles": {
            "inline": {"auth0_domain": "a.example", "client_id": "abc", "client_secret": CANARY},
            "file": {
                "auth0_domain": "a.example",
                "client_id_env": "ID",
                "client_secret_file": "/s",
            },
        },
    }
    view = redacted(config_from_mapping(data, source="t"))
    text = json.dumps(view)
    assert CANARY not in text
    assert view["profiles"]["inline"]["client_secret"] == "[redacted]"
    assert view["profiles"]["inline"]["client_id"] == "abc"
    assert view["profiles"]["file"]["client_secret"] == "file:/s"
    assert view["profiles"]["file"]["client_id"] == "env:ID"
    assert view["profiles"]["file"]["refresh_before"] == "20%"
    assert view["profiles"]["file"]["verify"] == "auto"
    assert view["cache"]["url"] == "redis://:[redacted]@redis:6379/0"
    assert view["server"]["socket_mode"] == "0660"
    assert (
        view["server"]["max_connections"],
        view["server"]["header_timeout"],
        view["server"]["keepalive_timeout"],
    ) == (1024, "10s", "1m15s")


def test_connection_limits_are_read():
    """max_connections, header_timeout and keepalive_timeout come from [server]."""
    server = {"max_connections": 64, "header_timeout": "2s", "keepalive_timeout": "30s"}
    profile = {"token_url": "https://idp.example/t", "client_id": "a", "client_secret_env": "S"}
    config = config_from_mapping({"server": server, "profiles": {"p": profile}}, source="t")
    assert (
        config.server.max_connections,
        config.server.header_timeout,
        config.server.keepalive_timeout,
    ) == (64, 2.0, 30.0)


def test_redacted_private_key_jwt_profile():
    """The check view of a private_key_jwt profile shows its assertion settings and no secret."""
    profile = {**PKJWT_MAPPING, "refresh_before": "12.5%", "min_ttl": 90}
    view = redacted(config_from_mapping({"profiles": {"p": profile}}, source="t"))["profiles"]["p"]
    assert view["client_secret"] is None
    assert view["private_key_file"] == "/keys/sidecar.pem"
    assert view["assertion_alg"] == "RS256"
    assert view["assertion_audience"] == "https://example.us.auth0.com/"
    assert (view["refresh_before"], view["min_ttl"]) == ("12.5%", "1m30s")


@pytest.mark.parametrize(
    ("value", "shown"), [("20%", "20%"), ("12.5%", "12.5%"), ("5m", "5m"), (5400, "1h30m")]
)
def test_redacted_refresh_before_as_written(value, shown):
    """The check view writes refresh_before the way the config does: a share or a duration."""
    profile = {**PKJWT_MAPPING, "refresh_before": value}
    view = redacted(config_from_mapping({"profiles": {"p": profile}}, source="t"))["profiles"]["p"]
    assert view["refresh_before"] == shown


def test_toml_syntax_error_names_the_line(tmp_path):
    """A TOML syntax error names the file and the line."""
    path = write(tmp_path, '[profiles.go-api]\nclient_id = "abc"\nscope = read\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == ""
    assert str(path) in str(info.value)
    assert "line 3" in info.value.problem


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("absent.toml", None, "no such file"),
        ("directory", b"", "cannot read the file"),
        ("latin1.toml", b'[profiles.p]\nscope = "caf\xe9"\n', "not valid UTF-8"),
    ],
)
def test_unreadable_file(tmp_path, name, content, problem):
    """A missing, unreadable or non-UTF-8 config file is a ConfigError naming the path."""
    path = tmp_path / name
    if name == "directory":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.source, info.value.key) == (str(path), "")
    assert problem in info.value.problem
