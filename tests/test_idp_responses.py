"""Token endpoint answers map to one typed result each, at one boundary."""

import base64
from types import MappingProxyType

import orjson
import pytest

from sidecar.config import InlineSecret, ProfileConfig
from sidecar.credentials import CredentialStore
from sidecar.errors import (
    IdPRateLimitedError,
    IdPRejectedError,
    IdPResponseError,
    IdPUnavailableError,
    InvalidTokenError,
)
from sidecar.idp import basic_auth_header, classify_response, exchange_form, retry_after_seconds
from sidecar.testing import FakeClock
from sidecar.verify import Expectations, check_claims

NOW = 1_800_000_000.0


def test_success_parses_and_ignores_unknown_fields():
    """A 200 with extra fields yields the token, type and scope."""
    issued = classify_response(
        200,
        {},
        b'{"access_token":"abc","token_type":"Bearer","expires_in":86400,"x":1,"scope":"a b"}',
        now=NOW,
    )
    assert issued.expires_in == 86400
    assert issued.scope == "a b"
    assert repr(issued) == "TokenResponse(expires_in=86400.0, scope='a b', value=[secure])"


@pytest.mark.parametrize(
    ("raw", "expected"), [("3600", 3600.0), (3600, 3600.0), (1.5, 1.5), (None, None)]
)
def test_expires_in_int_string_or_missing(raw, expected):
    """expires_in is accepted as a number or a numeric string, and may be missing."""
    body = {"access_token": "t", "token_type": "bearer"}
    if raw is not None:
        body["expires_in"] = raw
    assert classify_response(200, {}, orjson.dumps(body), now=NOW).expires_in == expected


@pytest.mark.parametrize(
    "body",
    [
        b"<html>oops</html>",
        b"[]",
        b'{"token_type":"Bearer"}',
        b'{"access_token":""}',
        b'{"access_token":"t","expires_in":"soon"}',
        b'{"access_token":"t","expires_in":-5}',
        b'{"access_token":"t","expires_in":true}',
        b'{"access_token":"t","token_type":"mac"}',
    ],
)
def test_garbage_200_is_a_response_error(body):
    """A 200 that is not a usable token response is transient garbage, not a token."""
    with pytest.raises(IdPResponseError):
        classify_response(200, {}, body, now=NOW)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, b'{"error":"access_denied","error_description":"Unauthorized"}', "access_denied"),
        (403, b'{"error":"access_denied","error_description":"no grant"}', "access_denied"),
        (403, b'{"error":"unauthorized_client"}', "unauthorized_client"),
        (400, b'{"error":"invalid_scope"}', "invalid_scope"),
        (401, b'{"error":"invalid_client"}', "invalid_client"),
        (401, b"", "http_401"),
        (404, b"not found", "http_404"),
        (302, b"", "http_302"),
    ],
)
def test_rejections(status, body, error):
    """OAuth errors on 4xx (Auth0's 401 access_denied included) mean misconfigured."""
    with pytest.raises(IdPRejectedError) as info:
        classify_response(status, {}, body, now=NOW)
    assert info.value.error == error
    assert info.value.kind == "rejected"


def test_a_404_says_to_check_token_url():
    """A token endpoint that is not there says what to check; an OAuth 4xx keeps its own words."""
    with pytest.raises(IdPRejectedError) as info:
        classify_response(404, {}, b"<html>not found</html>", now=NOW)
    assert info.value.description == "the token endpoint was not found: check token_url"
    with pytest.raises(IdPRejectedError) as info:
        classify_response(403, {}, b'{"error":"access_denied"}', now=NOW)
    assert info.value.description is None


def test_rejection_carries_description():
    """The IdP's error_description is kept for logs, /status and the 503 body."""
    with pytest.raises(IdPRejectedError) as info:
        classify_response(
            401, {}, b'{"error":"access_denied","error_description":"Unauthorized"}', now=NOW
        )
    assert info.value.description == "Unauthorized"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b'{"error":"server_error"}'),
        (502, b"<html>bad gateway</html>"),
        (503, b""),
        (408, b""),
        (400, b'{"error":"temporarily_unavailable"}'),
        (400, b"not json"),
    ],
)
def test_transient(status, body):
    """5xx, 408, temporarily_unavailable and an unexplained 400 are transient."""
    with pytest.raises(IdPUnavailableError) as info:
        classify_response(status, {}, body, now=NOW)
    assert info.value.retryable


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "30"}, 30.0),
        ({"Retry-After": "30", "x-ratelimit-reset": str(int(NOW) + 5)}, 30.0),
        ({"x-ratelimit-reset": str(int(NOW) + 5)}, 5.0),
        ({"Retry-After": "Fri, 15 Jan 2027 08:00:10 GMT"}, 10.0),
        ({}, None),
        ({"x-ratelimit-reset": "garbage"}, None),
    ],
)
def test_rate_limit_waits(headers, expected):
    """Retry-After wins, else x-ratelimit-reset minus now (a UNIX time), else nothing."""
    with pytest.raises(IdPRateLimitedError) as info:
        classify_response(429, headers, b'{"error":"too_many_requests"}', now=NOW)
    assert info.value.retry_after == expected
    assert info.value.kind == "rate_limited"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "1e308"}, 3600.0),
        ({"x-ratelimit-reset": "1e308"}, 3600.0),
        ({"x-ratelimit-reset": "-inf"}, None),
    ],
)
def test_absurd_waits_are_refused_or_clamped(headers, expected):
    """A non-finite wait is ignored and a huge one clamped to an hour: no profile parks forever."""
    assert retry_after_seconds(headers, now=NOW) == expected


def test_retry_after_never_negative():
    """A Retry-After date in the past means no wait, not a negative one."""
    assert retry_after_seconds({"Retry-After": "Fri, 15 Jan 2027 08:00:00 GMT"}, now=NOW) == 0.0


def test_basic_auth_urlencodes_before_base64():
    """Client id and secret are form-urlencoded, then joined and base64-encoded (RFC 6749)."""
    header = basic_auth_header("id:with space", "s3cr&t/+")
    raw = base64.b64decode(header.removeprefix("Basic ")).decode()
    assert raw == "id%3Awith+space:s3cr%26t%2F%2B"


def test_claim_mismatches_show_expected_and_actual():
    """An iss or aud mismatch names what was expected and what the token said."""
    claims = {"exp": NOW + 60, "iss": "https://other.example/", "aud": "https://api.example.com/"}
    expect = Expectations(audience="https://api.example.com/", issuer="https://idp.example/")
    with pytest.raises(InvalidTokenError) as info:
        check_claims(claims, expect, now=NOW)
    assert info.value.description == (
        "iss mismatch: expected 'https://idp.example/', got 'https://other.example/'"
    )
    claims["iss"] = "https://idp.example/"
    check_claims(claims, expect, now=NOW)  # the positive control: the same claims, matching
    claims["aud"] = ["https://a/", "https://b/"]
    with pytest.raises(InvalidTokenError) as info:
        check_claims(claims, expect, now=NOW)
    assert info.value.description == (
        "aud mismatch: expected 'https://api.example.com/', got ['https://a/', 'https://b/']"
    )


# -- exchange answers and requests ----------------------------------------------------------


def test_exchange_answer_keeps_issued_type_and_accepts_n_a():
    """An exchange answer carries issued_token_type; N_A is a token type only there."""
    body = orjson.dumps(
        {
            "access_token": "t",
            "token_type": "N_A",
            "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "expires_in": 60,
        }
    )
    issued = classify_response(200, {}, body, now=NOW, exchange=True)
    assert (issued.token_type, issued.issued_token_type) == (
        "N_A",
        "urn:ietf:params:oauth:token-type:jwt",
    )
    with pytest.raises(IdPResponseError):
        classify_response(200, {}, body, now=NOW)  # client credentials: Bearer only
    plain = classify_response(200, {}, body.replace(b"N_A", b"bearer"), now=NOW)
    assert (plain.token_type, plain.issued_token_type) == ("Bearer", None)


def test_claims_challenge_is_kept_with_the_refusal():
    """An Entra refusal with a claims challenge keeps it (bounded); one without has none."""
    challenge = '{"access_token":{"acrs":{"essential":true,"value":"c1"}}}'
    body = orjson.dumps(
        {"error": "invalid_grant", "error_description": "AADSTS50076", "claims": challenge}
    )
    with pytest.raises(IdPRejectedError) as info:
        classify_response(400, {}, body, now=NOW, exchange=True)
    assert (info.value.error, info.value.claims) == ("invalid_grant", challenge)
    huge = orjson.dumps({"error": "interaction_required", "claims": "x" * 10000})
    with pytest.raises(IdPRejectedError) as info:
        classify_response(400, {}, huge, now=NOW, exchange=True)
    assert info.value.claims is not None
    assert len(info.value.claims) == 4096
    with pytest.raises(IdPRejectedError) as info:
        classify_response(401, {}, b'{"error":"invalid_grant","claims":7}', now=NOW)
    assert info.value.claims is None


@pytest.mark.parametrize("grant", ["token_exchange", "jwt_bearer"])
def test_exchange_form_of_each_grant(grant):
    """RFC 8693 sends subject_token and its types; Entra's OBO sends assertion and its use."""
    profile = ProfileConfig(
        name="p",
        token_url="https://idp.example/token",
        client_id=InlineSecret("c"),
        client_secret=InlineSecret("s"),
        grant=grant,
        audience="https://api/",
        resource="https://res/" if grant == "token_exchange" else None,
        scope="a b",
        extra_params=MappingProxyType({"tenant": "acme"}),
    )
    creds = CredentialStore(profile).load()
    form = exchange_form(profile, creds, FakeClock(), "USER-TOKEN", "a")
    common = {"scope": "a", "tenant": "acme", "client_id": "c", "client_secret": "s"}
    if grant == "token_exchange":
        assert form == {
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token": "USER-TOKEN",
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "audience": "https://api/",
            "resource": "https://res/",
            **common,
        }
    else:
        assert form == {
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": "USER-TOKEN",
            "requested_token_use": "on_behalf_of",
            **common,
        }
    no_scope = exchange_form(profile, creds, FakeClock(), "USER-TOKEN", None)
    assert "scope" not in no_scope
