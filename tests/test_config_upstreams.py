"""``[upstreams.NAME]``: every DESIGN key is read, every invalid one refused with file and key."""

from pathlib import Path
from types import MappingProxyType

import pytest

from sidecar.config import (
    UpstreamConfig,
    format_size,
    is_private_address,
    load_config,
    parse_size,
    redacted,
)
from sidecar.errors import ConfigError
from tests.support.e2e import run_cli

PROFILE = """
[profiles.go-api]
auth0_domain = "example.us.auth0.com"
client_id = "abc"
client_secret_file = "/var/run/secrets/auth0/client_secret"
"""

DESIGN_UPSTREAM = """
[upstreams.billing]
base_url = "https://billing.example.com/api/v2"
profile = "go-api"
header = "Authorization"
set_headers = {}
connect_timeout = "5s"
response_timeout = "30s"
idle_timeout = "300s"
retry_on_401 = true
retry_body_limit = "64KiB"
allow_private = false
"""

API_KEY = "k3y-LEAKCANARY-upstream"


def upstream(**fields: str | None) -> str:
    """A ``[upstreams.billing]`` table: a valid base plus ``fields`` (None drops a key)."""
    values = {"base_url": '"https://billing.example.com/api/v2"', "profile": '"go-api"', **fields}
    lines = [f"{k} = {v}" for k, v in values.items() if v is not None]
    return PROFILE + EXCHANGE_PROFILE + "[upstreams.billing]\n" + "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sidecar.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_design_example_upstream_loads(tmp_path):
    """The DESIGN.md upstream example loads with exactly its values."""
    config = load_config(write(tmp_path, PROFILE + DESIGN_UPSTREAM))
    assert config.upstreams == MappingProxyType(
        {
            "billing": UpstreamConfig(
                name="billing",
                base_url="https://billing.example.com/api/v2",
                profile="go-api",
            )
        }
    )


def test_no_upstreams_is_fine(tmp_path):
    """A config without [upstreams] has none: proxy mode is optional."""
    assert load_config(write(tmp_path, PROFILE)).upstreams == {}


def test_every_key_is_read(tmp_path):
    """Every key of an upstream lands in the model; a trailing slash of base_url is dropped."""
    text = upstream(
        base_url='"http://10.0.0.7:8080/api/"',
        allow_http="true",
        allow_private="true",
        header='"X-Api-Token"',
        set_headers='{ "X-Tenant" = "acme" }',
        connect_timeout='"2s"',
        response_timeout='"1m"',
        idle_timeout='"1h"',
        retry_on_401="false",
        retry_body_limit='"1MiB"',
        ca_file='"/etc/ca.pem"',
        client_cert_file='"/etc/c.pem"',
        client_key_file='"/etc/k.pem"',
    )
    up = load_config(write(tmp_path, text)).upstreams["billing"]
    assert up == UpstreamConfig(
        name="billing",
        base_url="http://10.0.0.7:8080/api",
        profile="go-api",
        header="X-Api-Token",
        set_headers=MappingProxyType({"X-Tenant": "acme"}),
        connect_timeout=2.0,
        response_timeout=60.0,
        idle_timeout=3600.0,
        retry_on_401=False,
        retry_body_limit=1024 * 1024,
        ca_file=Path("/etc/ca.pem"),
        client_cert_file=Path("/etc/c.pem"),
        client_key_file=Path("/etc/k.pem"),
        allow_private=True,
        allow_http=True,
    )


EXCHANGE_PROFILE = """
[profiles.user-api]
grant = "token_exchange"
auth0_domain = "example.us.auth0.com"
client_id = "abc"
client_secret_file = "/var/run/secrets/auth0/client_secret"
audience = "https://api.example.com/"
[profiles.user-api.subject]
audience = "https://mcp.example.com/"
"""


def test_exchange_names_a_token_exchange_profile(tmp_path):
    """exchange = PROFILE (instead of profile): per-user tokens of that exchange profile."""
    text = upstream(profile=None, exchange='"user-api"')
    up = load_config(write(tmp_path, text)).upstreams["billing"]
    assert (up.profile, up.exchange) == ("user-api", True)
    assert redacted(load_config(write(tmp_path, text)))["upstreams"]["billing"]["exchange"] == (
        "user-api"
    )
    plain = load_config(write(tmp_path, upstream())).upstreams["billing"]  # positive control
    assert (plain.profile, plain.exchange) == ("go-api", False)


BAD_UPSTREAMS = [
    pytest.param(upstream(colour='"red"'), "upstreams.billing.colour", "unknown key"),
    pytest.param(
        upstream(retry_on_40l="true"),
        "upstreams.billing.retry_on_40l",
        "did you mean 'retry_on_401'?",
    ),
    pytest.param(
        PROFILE + "[upstreams.Billing]\nbase_url = 'https://x.example'\nprofile = 'go-api'\n",
        "upstreams.Billing",
        "invalid upstream name",
    ),
    pytest.param(PROFILE + "[upstreams]\nbilling = 3\n", "upstreams.billing", "expected a table"),
    pytest.param(upstream(base_url=None), "upstreams.billing.base_url", "required"),
    pytest.param(
        upstream(base_url='"http://billing.example.com"'),
        "upstreams.billing.base_url",
        "allow_http = true",
    ),
    pytest.param(
        upstream(base_url='"ftp://billing.example.com"'), "upstreams.billing.base_url", "absolute"
    ),
    pytest.param(
        upstream(base_url='"https://billing.example.com:99999"'),
        "upstreams.billing.base_url",
        "absolute",
    ),
    pytest.param(
        upstream(base_url='"https://u:p@billing.example.com"'),
        "upstreams.billing.base_url",
        "user info",
    ),
    pytest.param(
        upstream(base_url='"https://billing.example.com/a\\r\\nX-Injected: 1\\r\\n"'),
        "upstreams.billing.base_url",
        "whitespace or control characters",
    ),
    pytest.param(
        upstream(base_url='"https://billing.example.com\\t/api"'),
        "upstreams.billing.base_url",
        "whitespace or control characters",
    ),
    pytest.param(
        upstream(base_url='"https://billing.example.com/api?x=1"'),
        "upstreams.billing.base_url",
        "query or fragment",
    ),
    pytest.param(
        upstream(base_url='"https://127.0.0.1/api"'), "upstreams.billing.base_url", "allow_private"
    ),
    pytest.param(
        upstream(base_url='"https://169.254.169.254/latest"'),
        "upstreams.billing.base_url",
        "metadata address",
    ),
    pytest.param(
        upstream(base_url='"https://[::ffff:10.0.0.1]/"'),
        "upstreams.billing.base_url",
        "allow_private",
    ),
    pytest.param(
        upstream(base_url='"https://localhost:8443"'), "upstreams.billing.base_url", "allow_private"
    ),
    pytest.param(upstream(profile=None), "upstreams.billing.profile", "required"),
    pytest.param(
        upstream(profile='"nope"'),
        "upstreams.billing.profile",
        "unknown profile 'nope'; configured: go-api, user-api",
    ),
    pytest.param(upstream(exchange='"user-api"'), "upstreams.billing.exchange", "either profile"),
    pytest.param(
        upstream(profile=None, exchange='"nope"'),
        "upstreams.billing.exchange",
        "unknown profile 'nope'",
    ),
    pytest.param(
        upstream(profile=None, exchange='"go-api"'),
        "upstreams.billing.exchange",
        "not a token exchange profile (grant = 'client_credentials')",
    ),
    pytest.param(upstream(profile=None, exchange="3"), "upstreams.billing.exchange", "string"),
    pytest.param(upstream(header='"Bad Header"'), "upstreams.billing.header", "header name"),
    pytest.param(upstream(header='"Host"'), "upstreams.billing.header", "by the proxy itself"),
    pytest.param(
        upstream(header='"Token-Sidecar-Subject"'),
        "upstreams.billing.header",
        "by the proxy itself",
    ),
    pytest.param(
        upstream(set_headers='{ "X-Forwarded-Host" = "x" }'),
        "upstreams.billing.set_headers.X-Forwarded-Host",
        "by the proxy itself",
    ),
    pytest.param(
        upstream(set_headers='{ "authorization" = "Basic eA==" }'),
        "upstreams.billing.set_headers.authorization",
        "credential header",
    ),
    pytest.param(
        upstream(set_headers='{ "X-Tenant" = 3 }'),
        "upstreams.billing.set_headers.X-Tenant",
        "expected a string",
    ),
    pytest.param(
        upstream(set_headers='{ "X-Tenant" = "a\\r\\nEvil: 1" }'),
        "upstreams.billing.set_headers.X-Tenant",
        "line breaks",
    ),
    pytest.param(upstream(set_headers='"x"'), "upstreams.billing.set_headers", "expected a table"),
    pytest.param(
        upstream(connect_timeout='"soon"'), "upstreams.billing.connect_timeout", "duration"
    ),
    pytest.param(
        upstream(response_timeout='"0s"'), "upstreams.billing.response_timeout", "above zero"
    ),
    pytest.param(
        upstream(idle_timeout='"-5s"'), "upstreams.billing.idle_timeout", "must not be negative"
    ),
    pytest.param(
        upstream(retry_body_limit='"64 kilos"'), "upstreams.billing.retry_body_limit", "size"
    ),
    pytest.param(upstream(retry_body_limit="-1"), "upstreams.billing.retry_body_limit", "negative"),
    pytest.param(
        upstream(retry_body_limit='"1GiB"'), "upstreams.billing.retry_body_limit", "at most 16MiB"
    ),
    pytest.param(upstream(retry_on_401='"yes"'), "upstreams.billing.retry_on_401", "boolean"),
    pytest.param(
        upstream(client_cert_file='"/c.pem"'),
        "upstreams.billing.client_key_file",
        "together",
    ),
]


@pytest.mark.parametrize(("text", "key", "problem"), BAD_UPSTREAMS)
def test_bad_upstream_names_file_key_and_problem(tmp_path, text, key, problem):
    """Each invalid upstream raises a ConfigError naming the file, the key path and the problem."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert str(path) in str(info.value)
    assert problem in info.value.problem


def test_private_literal_allowed_with_allow_private(tmp_path):
    """A literal private address is accepted once allow_private says so."""
    text = upstream(base_url='"https://10.1.2.3/api"', allow_private="true")
    assert (
        load_config(write(tmp_path, text)).upstreams["billing"].base_url == "https://10.1.2.3/api"
    )


@pytest.mark.parametrize(
    ("host", "private"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),  # noqa: S104 - an address under test, not a bind
        ("224.0.0.1", True),
        ("fd00:ec2::254", True),
        ("fe80::1%eth0", True),
        ("::ffff:127.0.0.1", True),
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of the metadata address
        ("64:ff9b::5db8:d822", False),  # NAT64 of a public address
        ("64:ff9b:1::5db8:d822", True),  # local-use NAT64 (RFC 8215)
        ("2002:a9fe:a9fe::1", True),  # 6to4 of the metadata address
        ("2002:5db8:d822::1", False),
        ("::a9fe:a9fe", True),  # IPv4-compatible
        ("localhost", True),
        ("LOCALHOST", True),
        ("93.184.216.34", False),
        ("2606:4700::1111", False),
        ("billing.example.com", False),
    ],
)
def test_is_private_address(host, private):
    """Any address that is not globally routable counts as private; names are left to connect."""
    assert is_private_address(host) is private


@pytest.mark.parametrize(
    ("value", "size"),
    [(0, 0), (65536, 65536), ("512B", 512), ("64KiB", 65536), ("500KB", 500_000), ("1MiB", 2**20)],
)
def test_parse_size(value, size):
    """Sizes are bytes, or a number with B, KB, KiB, MB, MiB, GB or GiB."""
    assert parse_size(value, source="t", key="k") == size


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0B"), (512, "512B"), (65536, "64KiB"), (2**20, "1MiB")]
)
def test_format_size_round_trips(size, text):
    """Sizes are shown the way the config writes them, and read back to the same value."""
    assert format_size(size) == text
    assert parse_size(text, source="t", key="k") == size


def test_redacted_shows_upstreams_without_header_values(tmp_path):
    """check shows every upstream key; set_headers values (maybe API keys) are redacted."""
    text = upstream(set_headers=f'{{ "X-Api-Key" = "{API_KEY}" }}')
    view = redacted(load_config(write(tmp_path, text)))
    assert view["upstreams"] == {
        "billing": {
            "base_url": "https://billing.example.com/api/v2",
            "profile": "go-api",
            "header": "Authorization",
            "set_headers": {"X-Api-Key": "[redacted]"},
            "connect_timeout": "5s",
            "response_timeout": "30s",
            "idle_timeout": "5m",
            "retry_on_401": True,
            "retry_body_limit": "64KiB",
            "ca_file": None,
            "client_cert_file": None,
            "client_key_file": None,
            "allow_private": False,
            "allow_http": False,
        }
    }
    assert API_KEY not in str(view)


async def test_check_prints_upstreams_and_exits_2_on_a_bad_one(tmp_path):
    """check prints upstreams redacted; a bad upstream exits 2 naming file, key and problem."""
    good = write(tmp_path, upstream(set_headers=f'{{ "X-Api-Key" = "{API_KEY}" }}'))
    code, out, _ = await run_cli("check", "--config", str(good))
    assert code == 0
    assert '"billing"' in out
    assert API_KEY not in out
    bad = tmp_path / "bad.toml"
    bad.write_text(upstream(profile='"nope"'), encoding="utf-8")
    code, _, err = await run_cli("check", "--config", str(bad))
    assert code == 2
    assert f"{bad}: upstreams.billing.profile: unknown profile 'nope'" in err


async def test_check_exits_2_on_an_exchange_upstream_naming_a_plain_profile(tmp_path):
    """exchange = a client-credentials profile: exit 2 with file, key and problem; valid: 0."""
    good = write(tmp_path, upstream(profile=None, exchange='"user-api"'))
    code, out, _ = await run_cli("check", "--config", str(good))
    assert code == 0, out
    assert '"exchange": "user-api"' in out
    bad = tmp_path / "bad.toml"
    bad.write_text(upstream(profile=None, exchange='"go-api"'), encoding="utf-8")
    code, _, err = await run_cli("check", "--config", str(bad))
    assert code == 2
    assert f"{bad}: upstreams.billing.exchange: profile 'go-api' is not a token exchange" in err
