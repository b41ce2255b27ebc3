"""The development IdP, served for real on loopback and driven through its knobs."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.types import Options

from sidecar.devidp import (
    ASSERTION_TYPE,
    NO_AUDIENCE,
    WRONG_AUDIENCE,
    DevClient,
    DevIdP,
    MaskedValues,
    RecordedRequest,
    generate_private_key,
    public_key_pem,
)
from sidecar.testing import FakeClock

API = "https://api.example.com/"
SCOPES = ("read:tools", "write:tools")
SECRET = "s3cret-value"
NOW = 1_800_000_000
NO_TIME: Options = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}


@pytest.fixture(scope="module")
def client_key() -> rsa.RSAPrivateKey:
    return generate_private_key()


@pytest.fixture(scope="module")
def stranger_key() -> rsa.RSAPrivateKey:
    return generate_private_key()


@pytest.fixture
def clock():
    return FakeClock(wall_start=NOW)


@pytest.fixture
def idp(clock, client_key):
    idp = DevIdP(clock=clock, audience=API)
    idp.register("m2m", SECRET, scopes=SCOPES)
    idp.register("jwt-app", public_key_pem=public_key_pem(client_key), scopes=SCOPES)
    return idp


@pytest.fixture
async def client(idp, aiohttp_client):
    client = await aiohttp_client(idp.app)
    idp.set_base_url(str(client.make_url("")).rstrip("/"))
    return client


def form(**overrides: str | None) -> dict[str, str]:
    fields = {
        "grant_type": "client_credentials",
        "client_id": "m2m",
        "client_secret": SECRET,
        "audience": API,
    }
    fields.update(overrides)  # type: ignore[arg-type]
    return {name: value for name, value in fields.items() if value is not None}


def assertion(key: rsa.RSAPrivateKey, aud: str, **claims: Any) -> str:
    payload = {
        "iss": "jwt-app",
        "sub": "jwt-app",
        "aud": aud,
        "iat": NOW,
        "exp": NOW + 60,
        "jti": uuid.uuid4().hex,
    }
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, "RS256")


def jwt_form(token: str, **overrides: str | None) -> dict[str, str]:
    fields: dict[str, str | None] = {
        "client_id": None,
        "client_secret": None,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": token,
    }
    return form(**{**fields, **overrides})


async def post(client: TestClient[Any, Any], **kwargs: Any) -> tuple[int, Any]:
    async with client.post("/oauth/token", **kwargs) as response:
        return response.status, await response.json()


async def get_token(client: TestClient[Any, Any], **overrides: str | None) -> str:
    status, body = await post(client, data=form(**overrides))
    assert status == 200, body
    return str(body["access_token"])


# -- successful issuance ----------------------------------------------------------


async def test_client_secret_post_issues_an_auth0_shaped_jwt(client, idp):
    """A form request with client_secret_post gets an Auth0-shaped RS256 JWT."""
    async with client.post("/oauth/token", data=form()) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        body = await response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86400
    assert body["scope"] == "read:tools write:tools"
    header = jwt.get_unverified_header(body["access_token"])
    assert header == {"alg": "RS256", "kid": idp.signing_kid, "typ": "JWT"}
    claims = idp.verify_token(body["access_token"], API)
    assert claims["iss"] == idp.base_url + "/"
    assert claims["sub"] == "m2m@clients"
    assert (claims["aud"], claims["azp"], claims["gty"]) == (API, "m2m", "client-credentials")
    assert claims["scope"] == "read:tools write:tools"
    assert (claims["iat"], claims["exp"]) == (NOW, NOW + 86400)
    assert len(claims["jti"]) == 32
    assert idp.requests[-1].auth_method == "client_secret_post"


async def test_json_body_is_accepted(client, idp):
    """A JSON body works like a form body."""
    status, body = await post(client, json=form())
    assert status == 200
    assert idp.verify_token(body["access_token"], API)["azp"] == "m2m"
    assert idp.requests[-1].content_type == "application/json"


async def test_every_token_has_a_fresh_jti(client, idp):
    """Two tokens issued at the same instant differ in jti."""
    first, second = await get_token(client), await get_token(client)
    assert idp.verify_token(first, API)["jti"] != idp.verify_token(second, API)["jti"]


async def test_client_secret_basic_decodes_urlencoded_special_characters(client, idp):
    """Basic auth form-urlencodes id and secret before base64, per RFC 6749 section 2.3.1."""
    client_id, secret = "id:with/special+chars é", "p@ss:w+rd/=%&é "
    idp.register(client_id, secret)
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    headers = {"Authorization": "Basic " + base64.b64encode(raw).decode()}
    fields = form(client_id=None, client_secret=None)
    status, body = await post(client, data=fields, headers=headers)
    assert status == 200, body
    assert idp.verify_token(body["access_token"], API)["azp"] == client_id
    record = idp.requests[-1]
    assert (record.auth_method, record.client_id) == ("client_secret_basic", client_id)
    assert record.sensitive["client_secret"] == secret


async def test_private_key_jwt_with_issuer_audience(client, idp, client_key):
    """A client assertion addressed to the issuer authenticates the client."""
    status, body = await post(client, data=jwt_form(assertion(client_key, idp.issuer)))
    assert status == 200, body
    assert idp.verify_token(body["access_token"], API)["sub"] == "jwt-app@clients"
    record = idp.requests[-1]
    assert (record.auth_method, record.client_id) == ("private_key_jwt", "jwt-app")
    assert record.client_assertion is not None
    assert "client_assertion" not in record.fields


async def test_private_key_jwt_with_token_endpoint_audience(client, idp, client_key):
    """RFC 7523 also allows the token endpoint URL as the assertion audience."""
    status, _ = await post(client, json=jwt_form(assertion(client_key, idp.token_url)))
    assert status == 200


async def test_replayed_assertion_jti_is_rejected(client, idp, client_key):
    """The same client assertion is accepted once and then refused as a replay."""
    fields = jwt_form(assertion(client_key, idp.issuer))
    assert (await post(client, data=fields))[0] == 200
    status, body = await post(client, data=fields)
    assert status == 401
    assert body["error"] == "invalid_client"
    assert "already been used" in body["error_description"]


BAD_ASSERTIONS: dict[str, Callable[[rsa.RSAPrivateKey, rsa.RSAPrivateKey, str], str]] = {
    "wrong audience": lambda key, _, __: assertion(key, "https://elsewhere.example/"),
    "issuer without slash": lambda key, _, aud: assertion(key, aud.rstrip("/")),
    "iss differs from sub": lambda key, _, aud: assertion(key, aud, iss="someone-else"),
    "expired": lambda key, _, aud: assertion(key, aud, exp=NOW - 1),
    "exp too far ahead": lambda key, _, aud: assertion(key, aud, exp=NOW + 301),
    "not yet valid": lambda key, _, aud: assertion(key, aud, nbf=NOW + 30),
    "no jti": lambda key, _, aud: assertion(key, aud, jti=None),
    "no exp": lambda key, _, aud: assertion(key, aud, exp=None),
    "signed by another key": lambda _, other, aud: assertion(other, aud),
    "longer than 2048 bytes": lambda key, _, aud: assertion(key, aud, pad="x" * 2048),
    "not a JWT": lambda *_: "not-a-jwt",
}


@pytest.mark.parametrize("case", sorted(BAD_ASSERTIONS))
async def test_bad_client_assertions_are_rejected(client, idp, client_key, stranger_key, case):
    """Every malformed, misaddressed, expired or foreign assertion gets 401 invalid_client."""
    token = BAD_ASSERTIONS[case](client_key, stranger_key, idp.issuer)
    status, body = await post(client, data=jwt_form(token))
    assert (status, body["error"]) == (401, "invalid_client")
    assert idp.issued == 0


async def test_assertion_for_a_client_without_a_key_is_rejected(client, idp, client_key):
    """A client registered with only a secret cannot use private_key_jwt."""
    token = assertion(client_key, idp.issuer, iss="m2m", sub="m2m")
    status, body = await post(client, data=jwt_form(token))
    assert (status, body["error"]) == (401, "invalid_client")


async def test_wrong_assertion_type_is_an_invalid_request(client, idp, client_key):
    """A client assertion with the wrong client_assertion_type gets 400 invalid_request."""
    fields = jwt_form(assertion(client_key, idp.issuer), client_assertion_type="urn:nope")
    status, body = await post(client, data=fields)
    assert (status, body["error"]) == (400, "invalid_request")


# -- Auth0 error shapes -------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        form(client_secret="wrong"),
        form(client_id="nobody"),
        form(client_secret=None),
        form(client_id=None, client_secret=None),
    ],
    ids=["bad secret", "unknown client", "no secret", "no credentials"],
)
async def test_bad_client_credentials_get_auth0_unauthorized(client, idp, fields):
    """A wrong, unknown or missing client credential gets Auth0's 401 access_denied."""
    status, body = await post(client, data=fields)
    assert status == 401
    assert body == {"error": "access_denied", "error_description": "Unauthorized"}
    assert idp.requests[-1].status == 401
    assert idp.requests[-1].error == "access_denied"


async def test_malformed_basic_header_is_unauthorized(client):
    """A Basic header that is not base64 of id:secret gets 401 access_denied."""
    for value in ("Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        status, body = await post(
            client, data=form(client_id=None, client_secret=None), headers={"Authorization": value}
        )
        assert (status, body["error"]) == (401, "access_denied")


async def test_two_authentication_methods_are_an_invalid_request(client, idp, client_key):
    """Sending two client authentication methods at once gets 400 invalid_request."""
    basic = {"Authorization": "Basic " + base64.b64encode(f"m2m:{SECRET}".encode()).decode()}
    status, body = await post(client, data=form(), headers=basic)
    assert (status, body["error"]) == (400, "invalid_request")
    mixed = jwt_form(assertion(client_key, idp.issuer), client_id="m2m", client_secret=SECRET)
    status, body = await post(client, data=mixed)
    assert (status, body["error"]) == (400, "invalid_request")


@pytest.mark.parametrize(
    ("grant_type", "status", "error"),
    [("password", 400, "unsupported_grant_type"), (None, 400, "invalid_request")],
)
async def test_grant_type_must_be_client_credentials(client, grant_type, status, error):
    """Any other or a missing grant_type is refused before authentication."""
    answer, body = await post(client, data=form(grant_type=grant_type))
    assert (answer, body["error"]) == (status, error)


async def test_client_without_the_grant_type_is_unauthorized_client(client, idp):
    """A client not allowed client_credentials gets 403 unauthorized_client."""
    idp.add_client(DevClient("spa", SECRET, audiences={API: ()}, grant_types=("implicit",)))
    status, body = await post(client, data=form(client_id="spa"))
    assert (status, body["error"]) == (403, "unauthorized_client")


async def test_audience_without_client_grant_is_access_denied(client):
    """An audience the client has no grant for gets 403 access_denied."""
    status, body = await post(client, data=form(audience="https://other.example/"))
    assert (status, body["error"]) == (403, "access_denied")
    assert "https://other.example/" in body["error_description"]


async def test_missing_audience_without_default_is_access_denied(client, idp):
    """Without an audience and a tenant default, Auth0's 403 access_denied comes back."""
    status, body = await post(client, data=form(audience=None))
    assert status == 403
    assert body == {"error": "access_denied", "error_description": NO_AUDIENCE}
    idp.default_audience = API
    assert (await post(client, data=form(audience=None)))[0] == 200


async def test_ungranted_scope_is_invalid_scope(client):
    """Asking for a scope outside the client grant gets 403 invalid_scope naming it."""
    status, body = await post(client, data=form(scope="read:tools admin"))
    assert (status, body["error"]) == (403, "invalid_scope")
    assert body["error_description"] == "Client has not been granted scopes: admin"


async def test_requested_scope_subset_is_granted(client, idp):
    """A requested subset of the granted scopes is what the token carries."""
    status, body = await post(client, data=form(scope="write:tools"))
    assert (status, body["scope"]) == (200, "write:tools")
    assert idp.verify_token(body["access_token"], API)["scope"] == "write:tools"


async def test_no_granted_scopes_means_no_scope_key(client, idp):
    """A grant without scopes yields a response and token without scope."""
    idp.register("bare", SECRET)
    status, body = await post(client, data=form(client_id="bare"))
    assert status == 200
    assert "scope" not in body
    assert "scope" not in idp.verify_token(body["access_token"], API)


async def test_resource_is_the_audience_unless_audience_is_given(client, idp):
    """RFC 8707 resource works as the audience, and audience wins when both are sent."""
    token = await get_token(client, audience=None, resource=API)
    assert idp.verify_token(token, API)["aud"] == API
    token = await get_token(client, resource="https://other.example/")
    assert idp.verify_token(token, API)["aud"] == API


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
        {"json": ["a", "list"]},
        {"json": {**form(), "scope": 7}},
        {"data": [*form().items(), ("audience", API)]},
    ],
    ids=["bad json", "json list", "non-string value", "repeated field"],
)
async def test_malformed_bodies_are_invalid_requests(client, kwargs):
    """Unparsable JSON, non-object JSON, non-string values and repeated fields get 400."""
    status, body = await post(client, **kwargs)
    assert (status, body["error"]) == (400, "invalid_request")


# -- faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [500, 503])
async def test_status_fault_answers_auth0_server_error(client, idp, code):
    """An injected 5xx answers with a JSON server_error body and issues nothing."""
    idp.faults.status = code
    status, body = await post(client, data=form())
    assert (status, body["error"]) == (code, "server_error")
    assert (idp.token_requests, idp.issued) == (1, 0)


async def test_status_fault_502_is_an_html_gateway_page(client, idp):
    """An injected 502 looks like a gateway's HTML error page."""
    idp.faults.status = 502
    async with client.post("/oauth/token", data=form()) as response:
        assert response.status == 502
        assert response.content_type == "text/html"
        assert "Bad Gateway" in await response.text()


async def test_status_fault_4xx_uses_auth0_shapes(client, idp):
    """An injected 401 carries Auth0's access_denied body even for good credentials."""
    idp.faults.status = 401
    assert await post(client, data=form()) == (
        401,
        {"error": "access_denied", "error_description": "Unauthorized"},
    )


async def test_remaining_switches_the_fault_off(client, idp):
    """With remaining set, a fault applies that many times and then every knob is off."""
    idp.faults.status = 503
    idp.faults.remaining = 2
    statuses = [(await post(client, data=form()))[0] for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert idp.faults.status is None
    assert idp.faults.remaining is None


async def test_remaining_also_limits_token_shaping_faults(client, idp):
    """A token-shaping knob with remaining=1 shapes one token only."""
    idp.faults.opaque = True
    idp.faults.remaining = 1
    opaque, normal = await get_token(client), await get_token(client)
    assert opaque.count(".") == 0
    assert idp.verify_token(normal, API)["azp"] == "m2m"


async def test_rate_limit_sends_auth0_body_and_headers(client, idp, clock):
    """A rate-limited answer is a 429 with Auth0's body and x-ratelimit headers."""
    idp.faults.rate_limit = True
    async with client.post("/oauth/token", data=form()) as response:
        assert response.status == 429
        assert await response.json() == {
            "error": "too_many_requests",
            "error_description": "Global limit has been reached",
        }
        assert response.headers["x-ratelimit-limit"] == "30"
        assert response.headers["x-ratelimit-remaining"] == "0"
        assert response.headers["x-ratelimit-reset"] == str(NOW + 1)
        assert "Retry-After" not in response.headers


async def test_rate_limit_retry_after_and_explicit_reset(client, idp):
    """Retry-After and x-ratelimit-reset carry the configured values."""
    idp.faults.rate_limit = True
    idp.faults.retry_after = 7
    idp.faults.ratelimit_reset = NOW + 42
    async with client.post("/oauth/token", data=form()) as response:
        assert response.headers["Retry-After"] == "7"
        assert response.headers["x-ratelimit-reset"] == str(NOW + 42)


async def test_delay_slows_the_answer_past_a_tiny_client_timeout(client, idp):
    """A delayed answer trips a client timeout shorter than the delay."""
    idp.faults.delay = 0.1
    with pytest.raises(asyncio.TimeoutError):
        await post(client, data=form(), timeout=aiohttp.ClientTimeout(total=0.02))
    idp.faults.delay = 0
    assert (await post(client, data=form()))[0] == 200


async def test_hang_holds_the_answer_until_released(client, idp):
    """A hung request is parked until release_hang, then answered normally."""
    idp.faults.hang = True
    pending = asyncio.ensure_future(post(client, data=form()))
    await asyncio.wait_for(idp.faults.wait_hung(1), 1)
    assert not pending.done()
    assert idp.requests[-1].status is None
    idp.release_hang()
    status, _ = await asyncio.wait_for(pending, 1)
    assert status == 200
    assert (idp.faults.hang, idp.faults.hung) == (False, 0)
    assert idp.requests[-1].status == 200


async def test_hang_outlasts_a_client_timeout(client, idp):
    """A client with a timeout gives up on a hung IdP."""
    idp.faults.hang = True
    with pytest.raises(asyncio.TimeoutError):
        await post(client, data=form(), timeout=aiohttp.ClientTimeout(total=0.05))
    assert idp.faults.hung == 1
    idp.release_hang()


async def test_hang_with_remaining_parks_only_the_first_request(client, idp):
    """With remaining=1 the first request hangs and the next is answered at once."""
    idp.faults.hang = True
    idp.faults.remaining = 1
    pending = asyncio.ensure_future(post(client, data=form()))
    await asyncio.wait_for(idp.faults.wait_hung(1), 1)
    assert (await post(client, data=form()))[0] == 200
    assert not pending.done()
    idp.release_hang()
    assert (await asyncio.wait_for(pending, 1))[0] == 200


async def test_reset_drops_the_connection(client, idp):
    """A reset fault aborts the connection, so the client sees a connection error."""
    idp.faults.reset = True
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(client, data=form())
    assert idp.requests[-1].status is None
    assert idp.issued == 0


async def test_garbage_is_a_200_without_json(client, idp):
    """The garbage fault answers 200 with a body that is not JSON."""
    idp.faults.garbage = True
    async with client.post("/oauth/token", data=form()) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ContentTypeError):
            await response.json()
    assert idp.issued == 0


async def test_expires_in_as_string_and_omitted(client, idp):
    """expires_in can arrive as a string or not at all."""
    idp.faults.expires_in_as_string = True
    assert (await post(client, data=form()))[1]["expires_in"] == "86400"
    idp.faults.clear()
    idp.faults.omit_expires_in = True
    assert "expires_in" not in (await post(client, data=form()))[1]


async def test_token_lifetime_is_mutable(client, idp):
    """Changing token_lifetime changes expires_in and exp of the next token."""
    idp.token_lifetime = 120
    status, body = await post(client, data=form())
    assert (status, body["expires_in"]) == (200, 120)
    assert idp.verify_token(body["access_token"], API)["exp"] == NOW + 120


async def test_opaque_token_is_not_a_jwt(client, idp):
    """The opaque fault issues a random string that does not decode as a JWT."""
    idp.faults.opaque = True
    token = await get_token(client)
    with pytest.raises(jwt.DecodeError):
        jwt.get_unverified_header(token)
    assert idp.issued == 1


async def test_wrong_aud_token_fails_audience_check(client, idp):
    """The wrong_aud fault issues a token for another API."""
    idp.faults.wrong_aud = True
    token = await get_token(client)
    with pytest.raises(jwt.InvalidAudienceError):
        idp.verify_token(token, API)
    assert idp.verify_token(token, WRONG_AUDIENCE)["aud"] == WRONG_AUDIENCE


async def test_expired_token_has_exp_in_the_past(client, idp):
    """The expired fault issues a token whose exp is a minute ago on the IdP clock."""
    idp.faults.expired = True
    token = await get_token(client)
    assert jwt.decode(token, options={"verify_signature": False})["exp"] == NOW - 60
    with pytest.raises(jwt.ExpiredSignatureError):
        idp.verify_token(token, API)


async def test_tokens_expire_on_the_fake_clock(client, idp, clock):
    """verify_token judges exp by the injected clock."""
    idp.token_lifetime = 100
    token = await get_token(client)
    await clock.advance(100)
    with pytest.raises(jwt.ExpiredSignatureError):
        idp.verify_token(token, API)


async def test_unpublished_key_token_has_unknown_kid(client, idp):
    """The unpublished_key fault signs with a kid missing from the JWKS."""
    idp.faults.unpublished_key = True
    token = await get_token(client)
    kid = jwt.get_unverified_header(token)["kid"]
    assert kid not in {key["kid"] for key in idp.jwks()["keys"]}
    with pytest.raises(jwt.InvalidTokenError, match="not in the JWKS"):
        idp.verify_token(token, API)


# -- keys, secrets, discovery ---------------------------------------------------------


async def test_jwks_publishes_rsa_signing_keys(client, idp):
    """The JWKS lists RS256 signing keys that pyjwt can load."""
    async with client.get("/.well-known/jwks.json") as response:
        jwks = await response.json()
    (key,) = jwks["keys"]
    assert {k: key[k] for k in ("kty", "use", "alg", "kid")} == {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": idp.signing_kid,
    }
    assert {"n", "e"} <= key.keys()
    token = await get_token(client)
    signing = jwt.PyJWKSet.from_dict(jwks)[idp.signing_kid]
    # The fake clock runs in 2027, so pyjwt's wall-clock checks are off here.
    claims = jwt.decode(token, signing, algorithms=["RS256"], audience=API, options=NO_TIME)
    assert claims["azp"] == "m2m"


async def test_key_rotation_keeps_old_tokens_verifiable(client, idp):
    """After a rotation with keep_old, tokens signed by either key verify."""
    old_kid, old = idp.signing_kid, await get_token(client)
    new_kid = idp.rotate_signing_key()
    new = await get_token(client)
    assert new_kid != old_kid
    assert jwt.get_unverified_header(new)["kid"] == new_kid
    assert {key["kid"] for key in idp.jwks()["keys"]} == {old_kid, new_kid}
    assert idp.verify_token(old, API)["azp"] == idp.verify_token(new, API)["azp"]


async def test_key_rotation_without_old_or_unpublished(client, idp):
    """Dropping the old key invalidates its tokens; an unpublished key fails its own."""
    old = await get_token(client)
    idp.rotate_signing_key(keep_old=False)
    with pytest.raises(jwt.InvalidTokenError):
        idp.verify_token(old, API)
    idp.rotate_signing_key(publish=False)
    with pytest.raises(jwt.InvalidTokenError):
        idp.verify_token(await get_token(client), API)


async def test_secret_rotation_switches_secrets_at_once(client, idp):
    """After rotate_secret the old secret is refused and the new one works."""
    idp.rotate_secret("m2m", "fresh-secret")
    assert (await post(client, data=form()))[0] == 401
    assert (await post(client, data=form(client_secret="fresh-secret")))[0] == 200


async def test_a_file_backed_secret_is_read_at_each_request(client, idp, tmp_path):
    """With secret_file the IdP accepts what the file holds now: rewriting it rotates the secret."""
    secret_file = tmp_path / "client_secret"
    secret_file.write_text("first-secret\n")
    idp.add_client(DevClient("filed", audiences={API: SCOPES}, secret_file=secret_file))
    filed = form(client_id="filed", client_secret="first-secret")
    assert (await post(client, data=filed))[0] == 200
    secret_file.write_text("second-secret")
    assert (await post(client, data=filed))[0] == 401
    assert (await post(client, data={**filed, "client_secret": "second-secret"}))[0] == 200
    secret_file.unlink()
    assert (await post(client, data={**filed, "client_secret": "second-secret"}))[0] == 401
    assert repr(idp.clients["filed"]) == (
        "DevClient(client_id='filed', client_secret=None, public_key_pem=None, "
        "audiences=['https://api.example.com/'], grant_types=('client_credentials',), "
        f"secret_file={str(secret_file)!r})"
    )


async def test_openid_configuration_points_at_the_endpoints(client, idp):
    """Discovery names the issuer, token endpoint and JWKS URI."""
    async with client.get("/.well-known/openid-configuration") as response:
        config = await response.json()
    assert config["issuer"] == idp.issuer
    assert config["token_endpoint"] == idp.token_url
    assert config["jwks_uri"] == idp.base_url + "/.well-known/jwks.json"


async def test_issuer_is_learned_from_the_first_request(aiohttp_client, clock):
    """Without issuer or base URL, the IdP adopts the address it was reached at."""
    idp = DevIdP(clock=clock)
    idp.register("m2m", SECRET)
    with pytest.raises(RuntimeError):
        _ = idp.issuer
    client = await aiohttp_client(idp.app)
    token = await get_token(client)
    assert idp.issuer == str(client.make_url("/"))
    assert idp.verify_token(token, API)["iss"] == idp.issuer


async def test_explicit_issuer_is_used_for_tokens_and_assertions(aiohttp_client, client_key):
    """A custom-domain issuer goes into iss and is accepted as assertion audience."""
    idp = DevIdP(issuer="https://tenant.example/")
    idp.register("jwt-app", public_key_pem=public_key_pem(client_key))
    client = await aiohttp_client(idp.app)
    now = int(idp.clock.time())
    token = assertion(client_key, "https://tenant.example/", iat=now, exp=now + 60)
    status, body = await post(client, data=jwt_form(token))
    assert status == 200, body
    assert idp.verify_token(body["access_token"], API)["iss"] == "https://tenant.example/"


async def test_start_and_stop_serve_on_an_ephemeral_port(clock):
    """start() serves on 127.0.0.1:0 and returns the base URL; stop() releases hangs."""
    idp = DevIdP(clock=clock)
    idp.register("m2m", SECRET)
    url = await idp.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        assert idp.issuer == url + "/"
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/oauth/token", data=form()) as response:
                assert response.status == 200
            idp.faults.hang = True
            pending = asyncio.ensure_future(session.post(url + "/oauth/token", data=form()))
            await asyncio.wait_for(idp.faults.wait_hung(1), 1)
            await asyncio.wait_for(idp.stop(), 2)
            response = await asyncio.wait_for(pending, 1)
            response.release()
    finally:
        await idp.stop()


async def test_start_twice_is_refused(clock):
    """A started IdP cannot be started again until stopped."""
    idp = DevIdP(clock=clock)
    await idp.start()
    try:
        with pytest.raises(RuntimeError):
            await idp.start()
    finally:
        await idp.stop()


# -- counters and reprs ---------------------------------------------------------------


async def test_counters_and_records(client, idp):
    """Counters count token requests, issued tokens and JWKS fetches until reset."""
    await get_token(client)
    await post(client, data=form(client_secret="wrong"))
    async with client.get("/.well-known/jwks.json"):
        pass
    assert (idp.token_requests, idp.issued, idp.jwks_requests) == (2, 1, 1)
    ok, bad = idp.requests
    assert (ok.status, bad.status, bad.error) == (200, 401, "access_denied")
    assert ok.fields == {"grant_type": "client_credentials", "client_id": "m2m", "audience": API}
    assert (ok.client_secret, ok.client_assertion) == (SECRET, None)
    assert len(idp.issued_tokens) == 1
    idp.reset_counters()
    assert (idp.token_requests, idp.issued, idp.jwks_requests, idp.requests) == (0, 0, 0, [])
    assert len(idp.issued_tokens) == 1


async def test_reprs_never_show_secrets(client, idp, client_key):
    """Client, request record and IdP reprs mask secrets and assertions."""
    token = assertion(client_key, idp.issuer)
    await post(client, data=jwt_form(token))
    await post(client, data=form())
    texts = [repr(idp.clients["m2m"]), repr(idp), *map(repr, idp.requests)]
    assert all(SECRET not in text and token not in text for text in texts)
    assert repr(idp.clients["m2m"]) == (
        "DevClient(client_id='m2m', client_secret=[secure], public_key_pem=None, "
        "audiences=['https://api.example.com/'], grant_types=('client_credentials',))"
    )
    assert repr(idp.requests[0].sensitive) == "MaskedValues(client_assertion=[secure])"


def test_masked_values_repr_is_exact():
    """MaskedValues shows names only, and RecordedRequest embeds that repr."""
    values = MaskedValues({"client_secret": "x", "client_assertion": "y"})
    assert repr(values) == "MaskedValues(client_secret=[secure], client_assertion=[secure])"
    assert "client_secret=[secure]" in repr(RecordedRequest("x", sensitive=values))
