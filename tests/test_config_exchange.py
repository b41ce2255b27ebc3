"""Exchange profiles: ``grant``, the per-user cache keys and ``[profiles.NAME.subject]``."""

from pathlib import Path

import pytest

from sidecar.config import (
    ACCESS_TOKEN_TYPE,
    ProfileConfig,
    SubjectConfig,
    config_from_mapping,
    load_config,
    redacted,
)
from sidecar.errors import ConfigError
from tests.support.e2e import run_cli

CANARY = "s3cret-LEAKCANARY-exchange-config"

DESIGN_EXAMPLE = """
[profiles.user-api]
grant = "token_exchange"
auth0_domain = "example.us.auth0.com"
client_id = "abc"
client_secret_file = "/var/run/secrets/auth0/client_secret"
audience = "https://api.example.com/"
scope = "read:things"
subject_token_type = "urn:ietf:params:oauth:token-type:access_token"
requested_token_type = "urn:ietf:params:oauth:token-type:access_token"
cache_max_entries = 10000
negative_ttl = "5s"

[profiles.user-api.subject]
issuer = "https://login.example.com/"
jwks_url = "https://login.example.com/.well-known/jwks.json"
audience = "https://mcp.example.com/"
verify = "jwks"
"""

# The smallest valid token exchange profile; exchange() overrides or drops its keys.
BASE = {
    "grant": '"token_exchange"',
    "auth0_domain": '"example.us.auth0.com"',
    "client_id": '"abc"',
    "client_secret_file": '"/run/secret"',
    "audience": '"https://api.example.com/"',
}
SUBJECT = '[profiles.user-api.subject]\naudience = "https://mcp.example.com/"\n'
OBO = {
    "grant": '"jwt_bearer"',
    "auth0_domain": None,
    "token_url": '"https://login.microsoftonline.com/t/oauth2/v2.0/token"',
    "scope": '"https://api.example.com/.default"',
}
ENTRA = "https://login.microsoftonline.com/t"
OBO_SUBJECT = f'{SUBJECT}issuer = "{ENTRA}/v2.0"\njwks_url = "{ENTRA}/discovery/v2.0/keys"\n'


def exchange(tail: str = SUBJECT, /, **fields: str | None) -> str:
    """A [profiles.user-api] table from BASE plus ``fields`` (None drops a key), then ``tail``."""
    values = {**BASE, **fields}
    lines = [f"{key} = {value}" for key, value in values.items() if value is not None]
    return "[profiles.user-api]\n" + "\n".join(lines) + "\n" + tail


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_design_example_loads(tmp_path):
    """The DESIGN.md exchange example loads with exactly its values."""
    profile = load_config(write(tmp_path, DESIGN_EXAMPLE)).profiles["user-api"]
    assert profile.grant == "token_exchange"
    assert profile.exchanges
    assert (profile.audience, profile.scope) == ("https://api.example.com/", "read:things")
    assert profile.subject_token_type == ACCESS_TOKEN_TYPE
    assert profile.requested_token_type == ACCESS_TOKEN_TYPE
    assert (profile.cache_max_entries, profile.negative_ttl) == (10000, 5.0)
    assert profile.subject == SubjectConfig(
        verify="jwks",
        issuer="https://login.example.com/",
        jwks_url="https://login.example.com/.well-known/jwks.json",
        audience="https://mcp.example.com/",
        leeway=0.0,
    )
    assert profile.required is False  # exchange profiles are never required for readiness


def test_client_credentials_is_the_default_grant(tmp_path):
    """A profile without grant is a client-credentials profile with no subject."""
    text = exchange("", grant=None, audience=None)
    profile = load_config(write(tmp_path, text)).profiles["user-api"]
    assert (profile.grant, profile.subject) == ("client_credentials", None)
    assert not profile.exchanges
    assert profile.required is True


def test_subject_issuer_and_jwks_default_to_the_profile_idp(tmp_path):
    """With auth0_domain, user tokens are checked against the same tenant unless told otherwise."""
    profile = load_config(write(tmp_path, exchange())).profiles["user-api"]
    assert profile.subject == SubjectConfig(
        verify="jwks",
        issuer="https://example.us.auth0.com/",
        jwks_url="https://example.us.auth0.com/.well-known/jwks.json",
        audience="https://mcp.example.com/",
    )


def test_jwt_bearer_profile_with_opaque_subjects_and_leeway(tmp_path):
    """An Entra on-behalf-of profile loads; verify = "none" needs no issuer, JWKS or audience."""
    tail = '[profiles.user-api.subject]\nverify = "none"\nleeway = "30s"\n'
    profile = load_config(write(tmp_path, exchange(tail, **OBO))).profiles["user-api"]
    assert profile.grant == "jwt_bearer"
    assert profile.subject == SubjectConfig(verify="none", leeway=30.0)
    assert profile.scope == "https://api.example.com/.default"


@pytest.mark.parametrize(
    "auth",
    [
        {"client_auth": '"client_secret_basic"'},
        {"client_secret_file": None, "client_secret_env": '"SECRET"'},
        {
            "client_auth": '"private_key_jwt"',
            "client_secret_file": None,
            "private_key_file": '"/keys/k.pem"',
        },
    ],
)
@pytest.mark.parametrize("grant", [{}, OBO])
def test_every_client_auth_method_works_with_both_grants(tmp_path, auth, grant):
    """Exchange profiles authenticate like any profile: secret (post, basic) or private_key_jwt."""
    text = exchange(OBO_SUBJECT, **{**grant, **auth})
    profile = load_config(write(tmp_path, text)).profiles["user-api"]
    assert profile.exchanges
    assert profile.client_auth == (auth.get("client_auth", '"client_secret_post"').strip('"'))


def test_zero_negative_ttl_switches_the_negative_cache_off(tmp_path):
    """negative_ttl = "0s" is allowed: rejections are then not remembered."""
    profile = load_config(write(tmp_path, exchange(negative_ttl='"0s"'))).profiles["user-api"]
    assert profile.negative_ttl == 0.0


BAD = [
    pytest.param(exchange(grant='"password"'), "grant", "expected one of"),
    pytest.param(
        exchange("", grant=None, negative_ttl='"5s"'),
        "negative_ttl",
        "only used with grant = 'token_exchange' or 'jwt_bearer'",
    ),
    pytest.param(
        exchange("", grant=None, cache_max_entries="10"),
        "cache_max_entries",
        "only used with grant = 'token_exchange'",
    ),
    pytest.param(
        exchange(grant=None), "subject", "only used with grant = 'token_exchange' or 'jwt_bearer'"
    ),
    pytest.param(
        exchange("", grant=None, subject_token_type='"x"'),
        "subject_token_type",
        "only used with grant",
    ),
    pytest.param(
        exchange(refresh_before='"5m"'),
        "refresh_before",
        "only used with grant = 'client_credentials': per-user tokens are never refreshed",
    ),
    pytest.param(exchange(required="false"), "required", "never refreshed or required"),
    pytest.param(exchange(SUBJECT + "[profiles.user-api.backoff]\nbase = '1s'\n"), "backoff", ""),
    pytest.param(
        exchange(OBO_SUBJECT, **OBO, requested_token_type='"x"'),
        "requested_token_type",
        "only used with grant = 'token_exchange'",
    ),
    pytest.param(
        exchange(OBO_SUBJECT, **OBO, resource='"https://api/"'), "resource", "API in scope"
    ),
    pytest.param(
        exchange(OBO_SUBJECT, **{**OBO, "scope": None}), "scope", "required by grant = 'jwt_bearer'"
    ),
    pytest.param(exchange(cache_max_entries="0"), "cache_max_entries", "at least 1"),
    pytest.param(exchange(cache_max_entries="2000000"), "cache_max_entries", "at most 1000000"),
    pytest.param(exchange(cache_max_entries='"many"'), "cache_max_entries", "expected an integer"),
    pytest.param(exchange(negative_ttl='"-1s"'), "negative_ttl", "negative"),
    pytest.param(exchange(negative_ttl='"2h"'), "negative_ttl", "at most 1h"),
    pytest.param(exchange(subject_token_type='""'), "subject_token_type", "must not be empty"),
    pytest.param(
        exchange(extra_params='{ subject_token = "x" }'),
        "extra_params.subject_token",
        "sets this field itself",
    ),
    pytest.param(
        exchange(OBO_SUBJECT, **OBO, extra_params='{ requested_token_use = "x" }'),
        "extra_params.requested_token_use",
        "sets this field itself",
    ),
    # the subject table
    pytest.param(exchange(""), "subject.audience", "the MCP server's own identifier"),
    pytest.param(
        exchange(SUBJECT + 'verify = "claims"\n'), "subject.verify", "one of 'jwks', 'none'"
    ),
    pytest.param(exchange(SUBJECT + 'colour = "red"\n'), "subject.colour", "unknown key"),
    pytest.param(
        exchange(SUBJECT + 'audiance = "x"\n'), "subject.audiance", "did you mean 'audience'?"
    ),
    pytest.param(
        exchange(SUBJECT, auth0_domain=None, token_url='"https://idp.example/token"'),
        "subject.jwks_url",
        "required by verify = 'jwks'",
    ),
    pytest.param(
        exchange(
            SUBJECT + 'jwks_url = "https://idp.example/jwks"\n',
            auth0_domain=None,
            token_url='"https://idp.example/token"',
        ),
        "subject.issuer",
        "required by verify = 'jwks'",
    ),
    pytest.param(
        exchange(SUBJECT + 'jwks_url = "http://idp.example/jwks"\n'),
        "subject.jwks_url",
        "use https",
    ),
    pytest.param(
        exchange('[profiles.user-api.subject]\nverify = "none"\naudience = "x"\n'),
        "subject.audience",
        "only used with verify = 'jwks'",
    ),
    pytest.param(exchange(SUBJECT + 'leeway = "10m"\n'), "subject.leeway", "at most 5m"),
    pytest.param(exchange(SUBJECT + 'leeway = "-1s"\n'), "subject.leeway", "negative"),
    pytest.param(exchange("", subject='"jwks"'), "subject", "expected a table"),
]


@pytest.mark.parametrize(("text", "key", "problem"), BAD)
def test_bad_exchange_config_names_file_key_and_problem(tmp_path, text, key, problem):
    """Each invalid exchange setting raises a ConfigError naming the file, key path and problem."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == f"profiles.user-api.{key}"
    assert str(path) in str(info.value)
    assert problem in info.value.problem


def test_proxy_refuses_an_exchange_profile(tmp_path):
    """An upstream's profile must hold a client-credentials token, not per-user ones."""
    upstream = '[upstreams.billing]\nbase_url = "https://b.example"\nprofile = "user-api"\n'
    text = exchange() + upstream
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == "upstreams.billing.profile"
    assert "exchanges users' tokens" in info.value.problem


def test_fleet_mode_does_not_ask_exchange_profiles_for_jwks(tmp_path):
    """Per-user tokens are never shared, so fleet mode's trust rule does not apply to them."""
    text = exchange('[profiles.user-api.subject]\nverify = "none"\n', verify='"none"')
    config = load_config(write(tmp_path, text + '[cache]\nbackend = "redis"\n'))
    assert config.profiles["user-api"].verify == "none"
    client_credentials = text.replace('grant = "token_exchange"', "").split("[profiles.user-api.s")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, client_credentials[0] + '[cache]\nbackend = "redis"\n'))
    assert info.value.key == "profiles.user-api.verify"


def test_redacted_shows_exchange_keys_and_no_secret():
    """check shows an exchange profile's grant, cache and subject keys; no secret or refresh key."""
    profile = {
        "grant": "token_exchange",
        "auth0_domain": "example.us.auth0.com",
        "client_id": "abc",
        "client_secret": CANARY,
        "audience": "https://api.example.com/",
        "negative_ttl": 90,
        "subject": {"audience": "https://mcp.example.com/", "leeway": "5s"},
    }
    view = redacted(config_from_mapping({"profiles": {"u": profile}}, source="t"))["profiles"]["u"]
    assert CANARY not in str(view)
    assert view["client_secret"] == "[redacted]"
    assert view["grant"] == "token_exchange"
    assert (view["cache_max_entries"], view["negative_ttl"]) == (10000, "1m30s")
    assert view["subject_token_type"] == ACCESS_TOKEN_TYPE
    assert view["subject"] == {
        "verify": "jwks",
        "issuer": "https://example.us.auth0.com/",
        "jwks_url": "https://example.us.auth0.com/.well-known/jwks.json",
        "audience": "https://mcp.example.com/",
        "leeway": "5s",
    }
    for absent in ("refresh_before", "required", "backoff"):
        assert absent not in view
    plain = dict(profile, grant="client_credentials")
    for key in ("negative_ttl", "subject"):
        del plain[key]
    view = redacted(config_from_mapping({"profiles": {"u": plain}}, source="t"))["profiles"]["u"]
    assert (view["grant"], view["refresh_before"], view["required"]) == (
        "client_credentials",
        "20%",
        True,
    )
    assert "subject" not in view


def test_model_defaults():
    """A ProfileConfig built in code is a client-credentials profile unless told otherwise."""
    profile = ProfileConfig(name="p", token_url="https://idp/t", client_id=None)  # type: ignore[arg-type]
    assert (profile.grant, profile.subject) == ("client_credentials", None)
    assert not profile.exchanges
    assert (profile.cache_max_entries, profile.negative_ttl) == (10000, 5.0)


async def test_check_prints_an_exchange_profile_and_exits_2_on_a_bad_one(tmp_path):
    """check prints exchange profiles redacted, --probe skips them; a bad one exits 2."""
    good = write(tmp_path, exchange(client_secret_file=None, client_secret=f'"{CANARY}"'))
    code, out, _ = await run_cli("check", "--config", str(good))
    assert code == 0, out
    assert '"grant": "token_exchange"' in out
    assert '"audience": "https://mcp.example.com/"' in out
    assert CANARY not in out
    code, out, _ = await run_cli("check", "--probe", "--config", str(good))
    assert code == 0  # nothing to exchange without a user's token: skipped, not failed
    assert "skipped profile user-api: grant = token_exchange exchanges users' tokens" in out
    bad = tmp_path / "bad.toml"
    bad.write_text(exchange(""), encoding="utf-8")
    code, _, err = await run_cli("check", "--config", str(bad))
    assert code == 2
    assert f"{bad}: profiles.user-api.subject.audience: required by verify = 'jwks'" in err
