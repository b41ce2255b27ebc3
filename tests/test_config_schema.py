"""The config JSON Schema is generated from the key tables, and it and the loader agree."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sidecar.config import DOCUMENT_KEYS, Key, KeyTable, NamedTables
from sidecar.config.schema import DRAFT, config_schema, schema_text
from tests.support.config_keys import (
    ANY_NAME,
    BASES,
    DeclaredKey,
    declared_keys,
    declared_tables,
    json_types,
    key_schema,
    load,
    loader_error,
    placements,
    schema_errors,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "docs" / "config.schema.json"
CONFIGURATION_MD = ROOT / "docs" / "configuration.md"
REGENERATE = "python -m sidecar.config.schema docs/config.schema.json"

KEYS = list(declared_keys())
DEFAULTED = [declared for declared in KEYS if declared.key.default is not None]
#: One value of each JSON type; a key is given each one its schema does not admit.
WRONG_TYPES: dict[str, Any] = {
    "integer": 5,
    "number": 1.5,
    "string": "x",
    "boolean": True,
    "array": [1],
    "object": {"x": "y"},
}


def by_path(declared: DeclaredKey) -> str:
    return declared.dotted


def toml(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


# --------------------------------------------------------------------------- the file


def test_the_committed_schema_is_the_generated_one():
    """docs/config.schema.json is exactly what the key tables generate today."""
    committed = SCHEMA_FILE.read_text(encoding="utf-8")
    assert committed == schema_text(), f"docs/config.schema.json is stale: run {REGENERATE}"


def test_the_schema_is_valid_json_schema_draft_07():
    """The generated schema is itself valid against the draft-07 meta-schema."""
    schema = config_schema()
    assert schema["$schema"] == DRAFT
    jsonschema.Draft7Validator.check_schema(schema)
    with pytest.raises(jsonschema.SchemaError):
        jsonschema.Draft7Validator.check_schema({**schema, "type": "table"})


def test_python_m_prints_or_writes_the_schema(tmp_path):
    """`python -m sidecar.config.schema` prints the schema, or writes it to the file named."""
    printed = subprocess.run(
        [sys.executable, "-m", "sidecar.config.schema"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert printed.stdout == schema_text()
    assert printed.stderr == ""
    out = tmp_path / "config.schema.json"
    subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "-m", "sidecar.config.schema", str(out)], check=True, timeout=30
    )
    assert json.loads(out.read_text(encoding="utf-8")) == config_schema()


# --------------------------------------------------------------------------- descriptions


def undescribed(table: KeyTable) -> list[str]:
    """Names of the tables and keys (nested too) whose description is missing or a stub."""

    def stub(text: str) -> bool:
        return len(text) < 20 or not text.endswith((".", ")"))

    found = []
    for inner in declared_tables(table):
        if stub(inner.description):
            found.append(inner.title)
        found += [f"{inner.title} {key.name}" for key in inner.keys if stub(key.description)]
    return found


def test_every_table_and_key_has_a_description():
    """Every table and key carries a real sentence, which the schema shows as its description."""
    assert undescribed(DOCUMENT_KEYS) == []
    schema = config_schema()
    for declared in KEYS:
        assert key_schema(schema, declared.path)["description"] == declared.key.description


def test_a_missing_description_is_caught():
    """The description check finds a stub description (positive control of the test above)."""
    named = NamedTables(KeyTable("[t.NAME]", "Tables under names.", ()), "[a-z]+")
    table = KeyTable(
        "[t]", "A table that has one key only.", (Key("k", named, "TODO", default=None),)
    )
    assert undescribed(table) == ["[t] k", "[t.NAME]"]


def test_every_key_is_documented_in_configuration_md():
    """docs/configuration.md names every declared key (`key`, or a table as [table])."""
    text = CONFIGURATION_MD.read_text(encoding="utf-8")

    def documented(name: str) -> bool:
        return any(form in text for form in (f"`{name}`", f"[{name}]", f".{name}]"))

    assert sorted({d.key.name for d in KEYS if not documented(d.key.name)}) == []
    assert not documented("client_secert_file")


def test_a_key_added_to_the_tables_appears_in_the_schema():
    """A key declared in a table reaches the schema with no change to the generator."""
    profiles_key = DOCUMENT_KEYS["profiles"]
    assert isinstance(profiles_key.kind, NamedTables)
    profile = profiles_key.kind.table
    added = dataclasses.replace(
        profile["scope"],
        name="dpop_alg",
        description="Signing algorithm of DPoP proofs (a key of a later version).",
        default="ES256",
    )
    document = dataclasses.replace(
        DOCUMENT_KEYS,
        keys=tuple(
            dataclasses.replace(
                key,
                kind=dataclasses.replace(
                    profiles_key.kind,
                    table=dataclasses.replace(profile, keys=(*profile.keys, added)),
                ),
            )
            if key is profiles_key
            else key
            for key in DOCUMENT_KEYS.keys
        ),
    )
    rendered = key_schema(config_schema(document), ("profiles", ANY_NAME, "dpop_alg"))
    assert rendered["description"] == "Signing algorithm of DPoP proofs (a key of a later version)."
    assert rendered["default"] == "ES256"
    assert "dpop_alg" not in key_schema(config_schema(), ("profiles", ANY_NAME))["properties"]


# --------------------------------------------------------------------------- defaults and types


def test_the_bases_are_valid_for_loader_and_schema():
    """The configs every key is placed into are accepted by both (the control for what follows)."""
    for base in BASES:
        load(base)
        assert schema_errors(base) == []


@pytest.mark.parametrize("declared", DEFAULTED, ids=by_path)
def test_writing_a_default_out_changes_nothing(declared: DeclaredKey):
    """A key set to its documented default loads exactly as if it were left out."""
    default = declared.key.default
    assert default is not None
    accepted = []
    for data, where in placements(declared.path, default):
        if loader_error(data) is None:
            accepted.append(where)
            assert schema_errors(data) == [], where
            assert load(data) == load(_without(data, where)), where
    assert accepted, f"{declared.dotted} = {default!r} is refused in every base config"


def _without(data: dict[str, Any], dotted: str) -> dict[str, Any]:
    """``data`` with the key at ``dotted`` removed (and a table it leaves empty)."""
    copy: dict[str, Any] = json.loads(json.dumps(data))
    parts = dotted.split(".")
    nodes = [copy]
    for part in parts[:-1]:
        nodes.append(nodes[-1][part])
    del nodes[-1][parts[-1]]
    for depth in range(len(parts) - 1, 0, -1):
        if nodes[depth] == {}:
            del nodes[depth - 1][parts[depth - 1]]
    return copy


@pytest.mark.parametrize("declared", KEYS, ids=by_path)
def test_a_value_of_the_wrong_type_is_refused_by_both(declared: DeclaredKey):
    """Each key refuses every JSON type its schema does not admit, in the loader and the schema."""
    admitted = json_types(key_schema(config_schema(), declared.path))
    wrong = {
        kind: value
        for kind, value in WRONG_TYPES.items()
        if kind not in admitted and not (kind == "integer" and "number" in admitted)
    }
    assert wrong, declared.dotted
    for value in wrong.values():
        named = []
        for data, where in placements(declared.path, value):
            error = loader_error(data)
            assert error is not None, f"loader accepts {where} = {value!r}"
            assert schema_errors(data), f"schema accepts {where} = {value!r}"
            named.append(error.key.startswith(where))
        # Where the base sets a conflicting key, the error may name that one instead.
        assert any(named), f"no loader error names {declared.dotted} = {value!r}"


# --------------------------------------------------------------------------- the agreed set

PROFILE = '[profiles.api]\nauth0_domain = "example.us.auth0.com"\nclient_id = "abc"\n'
SECRET = 'client_secret_file = "/run/secrets/client_secret"\n'
IDP = 'token_url = "https://idp.example.com/oauth/token"\nclient_id = "abc"\n'
EXCHANGE = (
    '[profiles.user]\ngrant = "token_exchange"\nauth0_domain = "example.us.auth0.com"\n'
    'client_id = "abc"\n' + SECRET + 'audience = "https://api.example.com/"\n'
)
SUBJECT = '[profiles.user.subject]\naudience = "https://mcp.example.com/"\n'
OBO = (
    '[profiles.graph]\ngrant = "jwt_bearer"\n'
    + IDP
    + SECRET
    + 'jwks_url = "https://idp.example.com/keys"\nissuer = "https://idp.example.com/"\n'
)
OBO_SCOPE = 'scope = "https://api.example.com/.default"\n'
OBO_SUBJECT = '[profiles.graph.subject]\naudience = "api://mcp"\n'
REDISS = '[cache]\nbackend = "redis"\nurl = "rediss://redis.example.com:6380/0"\n'

GOOD = [
    pytest.param(PROFILE + SECRET, id="minimal"),
    pytest.param(
        '[server]\nlisten = ""\nsocket = "/run/token-sidecar/token.sock"\nallow_uids = [10002]\n'
        + PROFILE
        + SECRET,
        id="socket only",
    ),
    pytest.param(
        '[server]\nlisten = "[::1]:8700"\nops_listen = "0.0.0.0:0"\nsocket_mode = "0600"\n'
        'max_connections = 10\nheader_timeout = 2.5\nkeepalive_timeout = "1m15s"\n'
        + PROFILE
        + SECRET,
        id="server keys",
    ),
    pytest.param(
        '[server]\nlisten = "10.0.0.5:8700"\nallow_non_loopback = true\n' + PROFILE + SECRET,
        id="non-loopback allowed",
    ),
    pytest.param(
        '[cache]\nbackend = "redis"\nurl = "rediss://:pw@redis.example.com:6380/0"\n'
        'namespace = "prod:tokens"\n' + PROFILE + SECRET,
        id="fleet mode, verified by JWKS",
    ),
    pytest.param(
        '[cache]\nbackend = "redis"\nkey_file = "/run/secrets/cache-key"\n[profiles.api]\n'
        + IDP
        + 'client_secret_env = "SECRET"\nverify = "none"\n',
        id="fleet mode with a key file",
    ),
    pytest.param(
        "[profiles.k]\n"
        + IDP
        + 'client_auth = "private_key_jwt"\nprivate_key_file = "/k.pem"\nprivate_key_kid = "k1"\n'
        'assertion_alg = "ES256"\nassertion_audience = "https://idp.example.com/"\n',
        id="private_key_jwt",
    ),
    pytest.param(
        PROFILE
        + SECRET
        + 'client_auth = "client_secret_basic"\nrefresh_before = "12.5%"\nmin_ttl = 45\n'
        'wait_timeout = "500ms"\nverify = "jwks"\nextra_params = { organization = "org_1" }\n'
        '[profiles.api.backoff]\nbase = 0.5\ncap = "2m"\n'
        '[profiles.api.breaker]\nfailures = 1\nreset = "1h"\n',
        id="profile policy",
    ),
    pytest.param(
        "[profiles.local]\n"
        'token_url = "http://127.0.0.1:8600/oauth/token"\n'
        'jwks_url = "http://localhost:8600/jwks.json"\nclient_id = "c"\nclient_secret = "s"\n'
        'refresh_before = "10m"\n',
        id="plain http to loopback",
    ),
    pytest.param(
        PROFILE
        + SECRET
        + '[upstreams.billing]\nbase_url = "https://billing.example.com/v2/"\nprofile = "api"\n'
        'header = "X-Api-Token"\nset_headers = { "X-Tenant" = "acme" }\nretry_body_limit = 0\n'
        'idle_timeout = "1h"\nretry_on_401 = false\nca_file = "/ca.pem"\n'
        'client_cert_file = "/c.pem"\nclient_key_file = "/k.pem"\n'
        '[upstreams.local]\nbase_url = "http://127.0.0.1:8800"\nprofile = "api"\n'
        "allow_http = true\nallow_private = true\n",
        id="upstreams",
    ),
    pytest.param(
        REDISS + 'username = "token-sidecar"\npassword_file = "/run/secrets/redis/password"\n'
        'ssl_ca_file = "/etc/redis-ca/ca.crt"\nssl_certfile = "/tls/tls.crt"\n'
        'ssl_keyfile = "/tls/tls.key"\nkey_file = "/run/secrets/cache-key"\n' + PROFILE + SECRET,
        id="managed Redis",
    ),
    pytest.param(
        '[cache]\nkey_file = "/run/secrets/cache-key"\npersist_file = "/tmp/tokens"\n'
        + PROFILE
        + SECRET,
        id="cold-start cache",
    ),
    pytest.param(
        EXCHANGE
        + 'scope = "read:things"\nsubject_token_type = "urn:ietf:params:oauth:token-type:jwt"\n'
        'requested_token_type = "urn:ietf:params:oauth:token-type:access_token"\n'
        'cache_max_entries = 1000000\nnegative_ttl = 0\nmin_ttl = "1m"\n'
        '[profiles.user.subject]\nverify = "jwks"\nissuer = "https://users.example.com/"\n'
        'jwks_url = "https://users.example.com/jwks.json"\naudience = "https://mcp.example.com/"\n'
        'leeway = "5m"\n',
        id="token exchange",
    ),
    pytest.param(
        OBO + OBO_SCOPE + 'negative_ttl = "1h"\n' + OBO_SUBJECT + "leeway = 0\n",
        id="jwt_bearer",
    ),
    pytest.param(
        EXCHANGE + '[profiles.user.subject]\nverify = "none"\n',
        id="exchange with an unchecked subject",
    ),
    pytest.param(
        PROFILE + SECRET + 'grant = "client_credentials"\nrefresh_before = "25%"\n'
        "required = false\n",
        id="client_credentials written out",
    ),
]

#: Refused by both; the loader names this key.
BAD = [
    pytest.param('[server]\nlisten = "127.0.0.1:8700"\n', "profiles", id="no profile"),
    pytest.param("[profiles]\n", "profiles", id="empty profiles"),
    pytest.param(PROFILE.replace("api", "API") + SECRET, "profiles.API", id="profile name"),
    pytest.param(PROFILE + SECRET + 'colour = "red"\n', "profiles.api.colour", id="unknown key"),
    pytest.param('[logging]\nlevel = "x"\n' + PROFILE + SECRET, "logging", id="unknown table"),
    pytest.param(
        PROFILE + SECRET + 'token_url = "https://x.example.com/t"\n',
        "profiles.api.token_url",
        id="two endpoints",
    ),
    pytest.param(
        '[profiles.api]\nclient_id = "abc"\n' + SECRET, "profiles.api.token_url", id="no endpoint"
    ),
    pytest.param(
        PROFILE.replace('client_id = "abc"\n', "") + SECRET,
        "profiles.api.client_id",
        id="no client id",
    ),
    pytest.param(
        PROFILE + SECRET + 'client_id_env = "ID"\n', "profiles.api.client_id_env", id="two ids"
    ),
    pytest.param(PROFILE, "profiles.api.client_secret", id="no secret"),
    pytest.param(
        PROFILE + SECRET + 'client_secret_env = "S"\n',
        "profiles.api.client_secret_env",
        id="two secrets",
    ),
    pytest.param(
        PROFILE + SECRET + 'client_auth = "private_key_jwt"\nprivate_key_file = "/k.pem"\n',
        "profiles.api.client_secret_file",
        id="private_key_jwt with a secret",
    ),
    pytest.param(
        PROFILE + 'client_auth = "private_key_jwt"\n',
        "profiles.api.private_key_file",
        id="private_key_jwt without a key",
    ),
    pytest.param(
        PROFILE + SECRET + 'private_key_kid = "k1"\n',
        "profiles.api.private_key_kid",
        id="assertion key with a secret",
    ),
    pytest.param(
        PROFILE + SECRET + 'client_auth = "tls_client_auth"\n',
        "profiles.api.client_auth",
        id="unknown client_auth",
    ),
    pytest.param(
        "[profiles.api]\n" + IDP + SECRET + 'verify = "jwks"\n',
        "profiles.api.verify",
        id="jwks without a JWKS URL",
    ),
    pytest.param(
        "[profiles.api]\n" + IDP.replace("https://idp", "http://idp") + SECRET,
        "profiles.api.token_url",
        id="plain http to a remote IdP",
    ),
    pytest.param(
        PROFILE.replace("example.us", "https://example.us") + SECRET,
        "profiles.api.auth0_domain",
        id="auth0_domain with a scheme",
    ),
    pytest.param(
        PROFILE + SECRET + 'client_id_env = "1D"\n'.replace("client_id_env", "client_secret_env"),
        "profiles.api.client_secret_env",
        id="bad env name",
    ),
    pytest.param(
        PROFILE + SECRET + 'refresh_before = "100%"\n',
        "profiles.api.refresh_before",
        id="refresh_before 100%",
    ),
    pytest.param(
        PROFILE + SECRET + 'min_ttl = "30 s"\n', "profiles.api.min_ttl", id="duration spaced"
    ),
    pytest.param(
        PROFILE + SECRET + 'timeout = "-5s"\n', "profiles.api.timeout", id="negative duration"
    ),
    pytest.param(
        PROFILE + SECRET + 'extra_params = { scope = "x" }\n',
        "profiles.api.extra_params.scope",
        id="reserved extra param",
    ),
    pytest.param(
        PROFILE + SECRET + "[profiles.api.breaker]\nfailures = 0\n",
        "profiles.api.breaker.failures",
        id="breaker failures 0",
    ),
    pytest.param(
        '[server]\nlisten = "0.0.0.0:8700"\n' + PROFILE + SECRET,
        "server.listen",
        id="non-loopback listen",
    ),
    pytest.param(
        '[server]\nlisten = ""\n' + PROFILE + SECRET, "server.listen", id="no token listener"
    ),
    pytest.param(
        '[server]\nlisten = "::1:8700"\n' + PROFILE + SECRET,
        "server.listen",
        id="IPv6 without brackets",
    ),
    pytest.param(
        '[server]\nops_listen = "0.0.0.0:65536"\n' + PROFILE + SECRET,
        "server.ops_listen",
        id="port out of range",
    ),
    pytest.param(
        "[server]\nsocket_mode = 660\n" + PROFILE + SECRET,
        "server.socket_mode",
        id="socket_mode as an integer",
    ),
    pytest.param(
        '[server]\nsocket_mode = "1777"\n' + PROFILE + SECRET,
        "server.socket_mode",
        id="socket_mode above 0777",
    ),
    pytest.param(
        "[server]\nallow_uids = [-1]\n" + PROFILE + SECRET,
        "server.allow_uids",
        id="negative uid",
    ),
    pytest.param(
        '[cache]\nbackend = "memcached"\n' + PROFILE + SECRET, "cache.backend", id="backend"
    ),
    pytest.param(
        '[cache]\nurl = "http://redis:6379"\n' + PROFILE + SECRET, "cache.url", id="cache url"
    ),
    pytest.param(
        '[cache]\nnamespace = "a b"\n' + PROFILE + SECRET, "cache.namespace", id="namespace"
    ),
    pytest.param(
        PROFILE + SECRET + '[upstreams.b]\nbase_url = "https://b.example.com"\n',
        "upstreams.b.profile",
        id="upstream without a profile",
    ),
    pytest.param(
        PROFILE + SECRET + '[upstreams.b]\nbase_url = "http://b.example.com"\nprofile = "api"\n',
        "upstreams.b.base_url",
        id="upstream over plain http",
    ),
    pytest.param(
        PROFILE + SECRET + '[upstreams.b]\nbase_url = "https://b.example.com"\nprofile = "api"\n'
        'client_cert_file = "/c.pem"\n',
        "upstreams.b.client_key_file",
        id="certificate without its key",
    ),
    pytest.param(
        PROFILE + SECRET + '[upstreams.b]\nbase_url = "https://b.example.com"\nprofile = "api"\n'
        'set_headers = { "Bad Name" = "x" }\n',
        "upstreams.b.set_headers.Bad Name",
        id="header name with a space",
    ),
    pytest.param(
        PROFILE + SECRET + '[upstreams.b]\nbase_url = "https://b.example.com"\nprofile = "api"\n'
        'retry_body_limit = "1.5MiB"\n',
        "upstreams.b.retry_body_limit",
        id="size with decimals",
    ),
    pytest.param(
        PROFILE
        + SECRET
        + '[upstreams.b]\nbase_url = "https://b.example.com"\nprofile = "api"\nexchange = "x"\n',
        "upstreams.b.exchange",
        id="exchange is reserved",
    ),
    pytest.param(
        PROFILE + SECRET + 'grant = "password"\n', "profiles.api.grant", id="unknown grant"
    ),
    pytest.param(
        PROFILE + SECRET + "cache_max_entries = 10\n",
        "profiles.api.cache_max_entries",
        id="exchange key with client_credentials",
    ),
    pytest.param(
        PROFILE + SECRET + 'subject_token_type = "urn:x"\n',
        "profiles.api.subject_token_type",
        id="token type with client_credentials",
    ),
    pytest.param(
        PROFILE + SECRET + '[profiles.api.subject]\naudience = "x"\n',
        "profiles.api.subject",
        id="subject with client_credentials",
    ),
    pytest.param(
        EXCHANGE + 'refresh_before = "10m"\n' + SUBJECT,
        "profiles.user.refresh_before",
        id="refresh_before with token_exchange",
    ),
    pytest.param(
        EXCHANGE + "required = true\n" + SUBJECT,
        "profiles.user.required",
        id="required with token_exchange",
    ),
    pytest.param(
        EXCHANGE + SUBJECT + "[profiles.user.backoff]\nbase = 1\n",
        "profiles.user.backoff",
        id="backoff with token_exchange",
    ),
    pytest.param(EXCHANGE, "profiles.user.subject.audience", id="exchange without a subject"),
    pytest.param(
        EXCHANGE + "[profiles.user.subject]\nleeway = 1\n",
        "profiles.user.subject.audience",
        id="subject without an audience",
    ),
    pytest.param(
        EXCHANGE + SUBJECT + 'verify = "none"\n',
        "profiles.user.subject.audience",
        id="audience with an unchecked subject",
    ),
    pytest.param(
        EXCHANGE + SUBJECT + 'verify = "claims"\n',
        "profiles.user.subject.verify",
        id="unknown subject verify",
    ),
    pytest.param(
        EXCHANGE + SUBJECT + 'colour = "red"\n',
        "profiles.user.subject.colour",
        id="unknown subject key",
    ),
    pytest.param(
        EXCHANGE + SUBJECT + 'jwks_url = "http://users.example.com/jwks.json"\n',
        "profiles.user.subject.jwks_url",
        id="subject JWKS over plain http",
    ),
    pytest.param(
        EXCHANGE + "cache_max_entries = 0\n" + SUBJECT,
        "profiles.user.cache_max_entries",
        id="cache_max_entries 0",
    ),
    pytest.param(
        EXCHANGE + "cache_max_entries = 1000001\n" + SUBJECT,
        "profiles.user.cache_max_entries",
        id="cache_max_entries above the limit",
    ),
    pytest.param(
        EXCHANGE + "negative_ttl = -1\n" + SUBJECT,
        "profiles.user.negative_ttl",
        id="negative negative_ttl",
    ),
    pytest.param(
        EXCHANGE + 'extra_params = { subject_token = "x" }\n' + SUBJECT,
        "profiles.user.extra_params.subject_token",
        id="reserved exchange param",
    ),
    pytest.param(OBO + OBO_SUBJECT, "profiles.graph.scope", id="jwt_bearer without a scope"),
    pytest.param(
        OBO + OBO_SCOPE + 'resource = "https://api.example.com/"\n' + OBO_SUBJECT,
        "profiles.graph.resource",
        id="resource with jwt_bearer",
    ),
    pytest.param(
        OBO + OBO_SCOPE + 'requested_token_type = "urn:x"\n' + OBO_SUBJECT,
        "profiles.graph.requested_token_type",
        id="token type with jwt_bearer",
    ),
    pytest.param(
        '[cache]\npersist_file = "/tmp/tokens"\n' + PROFILE + SECRET,
        "cache.persist_file",
        id="persist_file without key_file",
    ),
    pytest.param(
        '[cache]\nssl_ca_file = "/etc/redis-ca/ca.crt"\n' + PROFILE + SECRET,
        "cache.ssl_ca_file",
        id="TLS file without a URL",
    ),
    pytest.param(
        '[cache]\nurl = "redis://redis:6379"\nssl_certfile = "/c.pem"\nssl_keyfile = "/k.pem"\n'
        + PROFILE
        + SECRET,
        "cache.ssl_certfile",
        id="TLS files with a redis:// URL",
    ),
    pytest.param(
        REDISS + 'ssl_certfile = "/c.pem"\n' + PROFILE + SECRET,
        "cache.ssl_keyfile",
        id="client certificate without its key",
    ),
    pytest.param(
        REDISS + "username = 7\n" + PROFILE + SECRET, "cache.username", id="username not a string"
    ),
]

#: Rules that need more than one value's shape: only the loader (and so `check`) knows them.
LOADER_ONLY = [
    pytest.param(
        PROFILE + SECRET + 'refresh_before = "30s"\n',
        "profiles.api.refresh_before",
        id="refresh_before not above min_ttl",
    ),
    pytest.param(
        PROFILE + SECRET + 'connect_timeout = "20s"\n',
        "profiles.api.connect_timeout",
        id="connect_timeout above timeout",
    ),
    pytest.param(
        PROFILE + SECRET + '[profiles.api.backoff]\nbase = "2m"\n',
        "profiles.api.backoff.base",
        id="backoff base above cap",
    ),
    pytest.param(
        PROFILE + SECRET + 'wait_timeout = "0s"\n',
        "profiles.api.wait_timeout",
        id="zero duration",
    ),
    pytest.param(
        PROFILE + SECRET + '[upstreams.b]\nbase_url = "https://b.example.com"\nprofile = "nope"\n',
        "upstreams.b.profile",
        id="upstream names an unknown profile",
    ),
    pytest.param(
        PROFILE + SECRET + '[upstreams.b]\nbase_url = "https://10.0.0.1"\nprofile = "api"\n',
        "upstreams.b.base_url",
        id="upstream at a private address",
    ),
    pytest.param(
        '[cache]\nbackend = "redis"\n[profiles.api]\n' + IDP + SECRET,
        "profiles.api.verify",
        id="fleet mode without trust",
    ),
    pytest.param(
        PROFILE
        + SECRET
        + '[upstreams.b]\nbase_url = "https://b.example.com"\nprofile = "user"\n'
        + EXCHANGE
        + SUBJECT,
        "upstreams.b.profile",
        id="upstream names an exchange profile",
    ),
    pytest.param(
        EXCHANGE + 'negative_ttl = "2h"\n' + SUBJECT,
        "profiles.user.negative_ttl",
        id="negative_ttl above 1h",
    ),
    pytest.param(
        EXCHANGE + SUBJECT + 'leeway = "10m"\n',
        "profiles.user.subject.leeway",
        id="leeway above 5m",
    ),
    pytest.param(
        EXCHANGE.replace('auth0_domain = "example.us.auth0.com"', IDP.splitlines()[0])
        + 'jwks_url = "https://idp.example.com/keys"\n'
        + SUBJECT,
        "profiles.user.subject.issuer",
        id="subject issuer known nowhere",
    ),
    pytest.param(
        '[cache]\nkey_file = "/run/secrets/cache-key"\n'
        'persist_file = "/nonexistent-token-sidecar/tokens"\n' + PROFILE + SECRET,
        "cache.persist_file",
        id="persist_file in a missing directory",
    ),
    pytest.param(
        '[cache]\nkey_file = "/tmp/key"\npersist_file = "/tmp/key"\n' + PROFILE + SECRET,
        "cache.persist_file",
        id="persist_file is the key file",
    ),
    pytest.param(
        REDISS + 'username = "token-sidecar"\n' + PROFILE + SECRET,
        "cache.username",
        id="Redis user without a password",
    ),
    pytest.param(
        REDISS.replace("rediss://", "rediss://:pw@")
        + 'password_file = "/run/secrets/pw"\n'
        + PROFILE
        + SECRET,
        "cache.password_file",
        id="Redis password twice",
    ),
    pytest.param(
        REDISS.replace("6380/0", "6380/0?ssl_cert_reqs=none") + PROFILE + SECRET,
        "cache.url",
        id="Redis URL without certificate checks",
    ),
]


@pytest.mark.parametrize("text", GOOD)
def test_loader_and_schema_accept_the_good_configs(text: str):
    """Each good config loads and validates."""
    data = toml(text)
    assert loader_error(data) is None
    assert schema_errors(data) == []


@pytest.mark.parametrize(("text", "key"), BAD)
def test_loader_and_schema_refuse_the_bad_configs(text: str, key: str):
    """Each bad config is refused by the loader, naming the key, and by the schema."""
    data = toml(text)
    error = loader_error(data)
    assert error is not None
    assert error.key == key, str(error)
    assert schema_errors(data) != []


@pytest.mark.parametrize(("text", "key"), LOADER_ONLY)
def test_rules_between_values_are_the_loaders_alone(text: str, key: str):
    """The schema admits what only a cross-key rule refuses; the loader refuses it by name."""
    data = toml(text)
    error = loader_error(data)
    assert error is not None
    assert error.key == key, str(error)
    assert schema_errors(data) == []
