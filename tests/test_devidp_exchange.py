"""The development IdP's exchange grants: RFC 8693 token exchange and Entra on-behalf-of."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.devidp import (
    ACCESS_TOKEN_TYPE,
    ASSERTION_TYPE,
    JWT_BEARER_GRANT,
    TOKEN_EXCHANGE_GRANT,
    DevClient,
    DevIdP,
    generate_private_key,
    public_key_pem,
)
from sidecar.testing import FakeClock

API = "https://api.example.com/"
MCP = "https://mcp.example.com/"
SECRET = "s3cret-LEAKCANARY-devidp-exchange"
NOW = 1_800_000_000
CLAIMS = '{"access_token":{"acrs":{"essential":true,"value":"c1"}}}'


@pytest.fixture(scope="module")
def client_key() -> rsa.RSAPrivateKey:
    return generate_private_key()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall_start=NOW)


@pytest.fixture
def idp(clock, client_key) -> DevIdP:
    idp = DevIdP(clock=clock, audience=API)
    for client_id, secret, key in (
        ("mcp-server", SECRET, None),
        ("mcp-jwt", None, public_key_pem(client_key)),
    ):
        idp.add_client(
            DevClient(
                client_id=client_id,
                client_secret=secret,
                public_key_pem=key,
                audiences={API: ("read:tools", "write:tools")},
                grant_types=(TOKEN_EXCHANGE_GRANT, JWT_BEARER_GRANT),
                subject_audiences=(MCP,),
            )
        )
    idp.register("m2m", SECRET, scopes=("read:tools",))  # client credentials only
    return idp


@pytest.fixture
async def client(idp, aiohttp_client):
    client = await aiohttp_client(idp.app)
    idp.set_base_url(str(client.make_url("")).rstrip("/"))
    return client


def exchange_form(subject: str, **overrides: str | None) -> dict[str, str]:
    fields: dict[str, str | None] = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "client_id": "mcp-server",
        "client_secret": SECRET,
        "subject_token": subject,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "audience": API,
        "scope": "read:tools",
        **overrides,
    }
    return {name: value for name, value in fields.items() if value is not None}


def obo_form(subject: str, **overrides: str | None) -> dict[str, str]:
    fields: dict[str, str | None] = {
        "grant_type": JWT_BEARER_GRANT,
        "client_id": "mcp-server",
        "client_secret": SECRET,
        "assertion": subject,
        "requested_token_use": "on_behalf_of",
        "scope": f"{API}read:tools",
        **overrides,
    }
    return {name: value for name, value in fields.items() if value is not None}


async def post(client: TestClient[Any, Any], **kwargs: Any) -> tuple[int, Any]:
    async with client.post("/oauth/token", **kwargs) as response:
        return response.status, await response.json()


async def test_token_exchange_issues_a_token_for_the_user_with_act(client, idp):
    """The issued token's sub is the user's; act names the client; aud and scope as asked."""
    subject = idp.issue_user_token("user-1", MCP)
    status, body = await post(client, data=exchange_form(subject))
    assert status == 200, body
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert (body["token_type"], body["expires_in"], body["scope"]) == (
        "Bearer",
        86400,
        "read:tools",
    )
    claims = idp.verify_token(body["access_token"], API)
    assert claims["sub"] == "user-1"
    assert claims["act"] == {"sub": "mcp-server"}
    assert (claims["azp"], claims["scope"], claims["exp"]) == (
        "mcp-server",
        "read:tools",
        NOW + 86400,
    )
    assert idp.issued == 1
    assert idp.issued_tokens == [body["access_token"]]
    assert idp.user_tokens == [subject]
    record = idp.requests[-1]
    assert record.subject_token == subject
    assert "subject_token" not in record.fields
    assert subject not in repr(record)


async def test_delegation_nests_the_subjects_act(client, idp):
    """A subject that already carries act gets it nested under the client, as Auth0 does."""
    subject = idp.issue_user_token("user-1", MCP, claims={"act": {"sub": "front-door"}})
    status, body = await post(client, data=exchange_form(subject))
    assert status == 200, body
    claims = idp.verify_token(body["access_token"], API)
    assert claims["act"] == {"sub": "mcp-server", "act": {"sub": "front-door"}}
    deep: dict[str, Any] = {"sub": "a"}
    for level in range(4):
        deep = {"sub": f"a{level}", "act": deep}
    too_deep = idp.issue_user_token("user-1", MCP, claims={"act": deep})
    status, body = await post(client, data=exchange_form(too_deep))
    assert (status, body["error"]) == (401, "invalid_grant")


async def test_every_client_auth_method_can_exchange(client, idp, client_key):
    """client_secret_post, client_secret_basic and private_key_jwt all work for the exchange."""
    subject = idp.issue_user_token("user-2", MCP)
    raw = f"mcp-server:{SECRET}".encode()
    basic = {"Authorization": "Basic " + base64.b64encode(raw).decode()}
    assertion = jwt.encode(
        {
            "iss": "mcp-jwt",
            "sub": "mcp-jwt",
            "aud": idp.issuer,
            "iat": NOW,
            "exp": NOW + 60,
            "jti": uuid.uuid4().hex,
        },
        client_key,
        "RS256",
    )
    jwt_auth = {
        "client_id": "mcp-jwt",
        "client_secret": None,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    for fields, headers in (
        (exchange_form(subject), {}),
        (exchange_form(subject, client_id=None, client_secret=None), basic),
        (exchange_form(subject, **jwt_auth), {}),
    ):
        status, body = await post(client, data=fields, headers=headers)
        assert status == 200, body
        assert idp.verify_token(body["access_token"], API)["sub"] == "user-2"
    assert [r.auth_method for r in idp.requests] == [
        "client_secret_post",
        "client_secret_basic",
        "private_key_jwt",
    ]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda idp: idp.issue_user_token("u", MCP, expires_in=-1), id="expired"),
        pytest.param(lambda idp: idp.issue_user_token("u", "https://other/"), id="wrong-aud"),
        pytest.param(
            lambda idp: idp.issue_user_token("u", MCP, issuer="https://evil.example/"),
            id="foreign-issuer",
        ),
        pytest.param(
            lambda idp: idp.issue_user_token("u", MCP, unpublished_key=True), id="unknown-key"
        ),
        pytest.param(lambda idp: idp.issue_user_token("m2m@clients", MCP), id="client-token"),
        pytest.param(lambda _: "not-a-jwt", id="garbage"),
    ],
)
async def test_unusable_subject_is_invalid_grant(client, idp, make):
    """Expired, foreign, unknown-key or non-user subjects get Auth0's 401 invalid_grant."""
    status, body = await post(client, data=exchange_form(make(idp)))
    assert (status, body["error"]) == (401, "invalid_grant")
    assert idp.issued == 0
    good = idp.issue_user_token("u", MCP)  # positive control
    assert (await post(client, data=exchange_form(good)))[0] == 200


async def test_client_without_the_grant_is_unauthorized(client, idp):
    """A client-credentials client may not exchange users' tokens."""
    subject = idp.issue_user_token("u", MCP)
    status, body = await post(client, data=exchange_form(subject, client_id="m2m"))
    assert (status, body["error"]) == (403, "unauthorized_client")


async def test_request_errors(client, idp):
    """Missing or wrong exchange fields are invalid_request; an unknown resource invalid_target."""
    subject = idp.issue_user_token("u", MCP)
    cases = [
        (exchange_form(subject, subject_token=None), 400, "invalid_request"),
        (exchange_form(subject, subject_token_type="urn:x"), 400, "invalid_request"),
        (exchange_form(subject, requested_token_type="urn:x"), 400, "invalid_request"),
        (exchange_form(subject, audience=None, resource="https://x/"), 400, "invalid_target"),
        (exchange_form(subject, audience="https://x/"), 403, "access_denied"),
        (exchange_form(subject, scope="admin"), 403, "invalid_scope"),
    ]
    for fields, status, error in cases:
        answer = await post(client, data=fields)
        assert (answer[0], answer[1]["error"]) == (status, error), fields
    ok = await post(client, data=exchange_form(subject, audience=None, resource=API))
    assert ok[0] == 200


async def test_injected_subject_rejection_and_denial(client, idp):
    """subject_rejected and exchange_error (with a claims challenge) answer as an IdP would."""
    subject = idp.issue_user_token("u", MCP)
    idp.faults.subject_rejected = True
    idp.faults.remaining = 1
    status, body = await post(client, data=exchange_form(subject))
    assert (status, body["error"]) == (401, "invalid_grant")
    assert idp.requests[-1].error == "invalid_grant"
    idp.faults.exchange_error = "interaction_required"
    idp.faults.exchange_claims = CLAIMS
    status, body = await post(client, data=obo_form(subject))
    assert (status, body["error"], body["claims"]) == (403, "interaction_required", CLAIMS)
    idp.faults.clear()
    assert (await post(client, data=exchange_form(subject)))[0] == 200  # positive control


async def test_fault_knobs_apply_to_exchanges(client, idp):
    """The client-credentials knobs (here a 503) answer exchange requests too."""
    subject = idp.issue_user_token("u", MCP)
    idp.faults.status = 503
    assert (await post(client, data=exchange_form(subject)))[0] == 503
    idp.faults.clear()
    idp.faults.wrong_aud = True
    status, body = await post(client, data=exchange_form(subject))
    assert status == 200
    assert jwt.decode(body["access_token"], options={"verify_signature": False})["aud"] != API


async def test_on_behalf_of_issues_a_token_for_the_user(client, idp):
    """Entra's jwt-bearer OBO: scope names the API; sub is the user's; scp the granted names."""
    subject = idp.issue_user_token("user-3", MCP)
    status, body = await post(client, data=obo_form(subject))
    assert status == 200, body
    assert "issued_token_type" not in body
    assert (body["scope"], body["ext_expires_in"]) == (f"{API}read:tools", 86400)
    claims = idp.verify_token(body["access_token"], API)
    assert (claims["sub"], claims["azp"], claims["scp"]) == ("user-3", "mcp-server", "read:tools")
    status, body = await post(client, data=obo_form(subject, scope=f"{API}.default"))
    assert status == 200
    assert idp.verify_token(body["access_token"], API)["scp"] == "read:tools write:tools"
    assert idp.requests[-1].subject_token == subject
    assert "assertion" not in idp.requests[-1].fields


async def test_on_behalf_of_errors(client, idp):
    """OBO refusals follow Entra: 400 invalid_grant for the assertion, invalid_scope, requests."""
    expired = idp.issue_user_token("u", MCP, expires_in=-1)
    good = idp.issue_user_token("u", MCP)
    cases = [
        (obo_form(expired), "invalid_grant"),
        (obo_form(good, requested_token_use=None), "invalid_request"),
        (obo_form(good, assertion=None), "invalid_request"),
        (obo_form(good, scope=None), "invalid_request"),
        (obo_form(good, scope="https://other.example/read"), "invalid_scope"),
        (obo_form(good, scope=f"{API}admin"), "invalid_scope"),
    ]
    for fields, error in cases:
        status, body = await post(client, data=fields)
        assert (status, body["error"]) == (400, error), fields


async def test_discovery_lists_the_exchange_grants(client):
    """The discovery document advertises both exchange grants."""
    async with client.get("/.well-known/openid-configuration") as response:
        document = await response.json()
    assert TOKEN_EXCHANGE_GRANT in document["grant_types_supported"]
    assert JWT_BEARER_GRANT in document["grant_types_supported"]


def test_user_token_is_signed_and_dated(idp, clock):
    """issue_user_token signs with the published key and dates the token by the IdP's clock."""
    idp.set_base_url("http://127.0.0.1:1")
    token = idp.issue_user_token("user-9", MCP, expires_in=60)
    claims = idp.verify_token(token, MCP)
    assert (claims["sub"], claims["iat"], claims["exp"]) == ("user-9", NOW, NOW + 60)
    assert idp.issued == 0
