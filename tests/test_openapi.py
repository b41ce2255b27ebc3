"""docs/openapi.yaml: a valid OpenAPI document, and a live token API that conforms to it.

The live test serves the real token app on an ephemeral loopback port, with one
profile holding a token (``api``) and one whose IdP rejects its secret
(``bad``), so 200, 400, 403, 404, 405 and 503 answers all occur. Schemathesis
generates the requests from the document: the deterministic coverage cases
(boundary values, missing header, wrong methods, wrong media types), then
Hypothesis-generated valid and invalid requests; hand-picked boundary values
check that the document's patterns accept exactly what the sidecar serves.
Each request is sent from a worker thread with ``requests`` while the app runs
on the test's event loop, and every answer goes through schemathesis' response
checks. Valid requests are also held to an exact oracle, since the schema
cannot express every rule (which profiles exist, the half-lifetime cap on
``min_ttl``).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.generation.meta import (
    CONTENT_TYPE_PROBES,
    REQUEST_SHAPE_PROBES,
    CoveragePhaseData,
)
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from sidecar.config import InlineSecret, ServerConfig, UpstreamConfig
from sidecar.token import fingerprint
from sidecar.token_api import make_token_app
from tests.support.builders import MCP_AUDIENCE, make_exchange_profile, make_profile
from tests.support.virtual_time import idle

SPEC = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
GET_TOKEN = "GET /v1/token/{profile}"
INVALIDATE = "POST /v1/token/{profile}/invalidate"
EXCHANGE = "POST /v1/exchange/{profile}"
#: The scope of the live test's exchange profile; a caller's may only narrow it.
EXCHANGE_SCOPE = "read:tools write:tools"
WRONG_SECRET = "wrong-secret-LEAKCANARY-5e0b"
#: The dev IdP's default token lifetime; min_ttl may be at most half of it.
LIFETIME = 86400
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    missing_required_header,
    unsupported_method,
]
#: Schemathesis skips these for request-shape probes; the probes' answers are documented too.
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
#: Headers that trip the proxy and Host guards; each answer must be a documented 403.
GUARD_BREAKERS = (
    {"Via": "1.1 proxy.example"},
    {"X-Forwarded-For": "203.0.113.7"},
    {"Forwarded": "for=203.0.113.7"},
    {"Host": "evil.example"},
    {"Host": "127.0.0.1.nip.io:8700"},
)
MAX_EXAMPLES = 100
HEADERS = {"Token-Sidecar": "1"}
#: Boundary values the generators rarely hit; the document must accept exactly those served.
MIN_TTLS = (
    *("0", "5.", "0.5", "300", "43200", "43200.000001", "999999999", "999999999.999999"),
    *("", "-1", "+1", "1e3", "0.0000001", "1234567890", " 5", "5\n", "nan", "inf", "0x10"),
    "\uff15",  # a fullwidth digit five
)
BODIES: tuple[object, ...] = (
    {"fingerprint": "0123456789ab"},
    {"fingerprint": "0123456789ab", "note": "other keys are ignored"},
    {"access_token": "x"},
    {"fingerprint": "0123456789AB"},
    {"fingerprint": "0123456789a"},
    {"fingerprint": "0123456789abc"},
    {"fingerprint": "0123456789ab\n"},
    {"fingerprint": ""},
    {"access_token": ""},
    {"access_token": "x", "fingerprint": "0123456789ab"},
    {"access_token": None},
    {},
    [],
)


def load_schema():
    """The document, with 503 accepted by not_a_server_error (it is the documented outage)."""
    config = schemathesis.Config.from_dict(
        {"checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]}}}
    )
    return schemathesis.openapi.from_path(SPEC, config=config)


PROXY = "/v1/proxy/{upstream}/{path}"
PROXY_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def operations(schema) -> dict[str, Any]:
    """The token API's operations (the proxy's answers are the upstream's; tested elsewhere)."""
    return {
        result.ok().label: result.ok()
        for result in schema.get_all_operations()
        if not result.ok().label.endswith(PROXY)
    }


def test_spec_is_valid_openapi():
    """The document validates against the OpenAPI 3.0 schema and documents every status."""
    schema = load_schema()
    schema.validate()
    ops = operations(schema)
    assert set(ops) == {GET_TOKEN, INVALIDATE, EXCHANGE}
    for label, operation in ops.items():
        statuses = {"200", "400", "403", "404", "405", "503"}
        if label == EXCHANGE:
            statuses.add("401")
        assert set(operation.responses.status_codes) == statuses, label
    proxied = {r.ok().label: r.ok() for r in schema.get_all_operations()}.keys() - ops.keys()
    assert proxied == {f"{method} {PROXY}" for method in PROXY_METHODS}


def summary(response) -> str:
    """The answer for a failure message, with any token redacted."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} {response.text[:200]!r}"
    if isinstance(body, dict) and "access_token" in body:
        body = {**body, "access_token": "[redacted]"}
    return f"{response.status_code} {body}"


def scenario(case):
    """The coverage scenario that produced ``case``, if any."""
    data = case.meta.phase.data if case.meta is not None else None
    return data.scenario if isinstance(data, CoveragePhaseData) else None


def expected(case, extra: dict[str, str]) -> tuple[int, str | None, str | None]:
    """The exact (status, error code, profile) the sidecar must give a schema-valid request."""
    profile = case.path_parameters["profile"]
    configured = profile if profile in {"api", "bad"} else None
    if extra:
        return 403, "forbidden", None
    if configured is None:
        return 404, "unknown_profile", None
    if profile == "bad":
        return 503, "misconfigured", "bad"
    min_ttl = (case.query or {}).get("min_ttl")
    if case.method == "GET" and min_ttl is not None and float(min_ttl) > LIFETIME / 2:
        return 400, "bad_request", "api"
    return 200, None, "api"


def expected_exchange(case, extra: dict[str, str]) -> tuple[int, str | None, str | None]:
    """The exact answer to a schema-valid exchange request whose subject_token is no JWT."""
    profile = case.path_parameters["profile"]
    if extra:
        return 403, "forbidden", None
    if profile not in {"api", "user-api"}:
        return 404, "unknown_profile", None
    if profile == "api":
        return 400, "bad_request", "api"  # a client-credentials profile
    scope = case.body.get("scope")
    words = None if scope is None else scope.split()
    if words is not None and not (words and set(words) <= set(EXCHANGE_SCOPE.split())):
        return 400, "bad_request", "user-api"
    return 401, "invalid_subject", "user-api"  # generated tokens fail the local check


class Runner:
    """Sends cases to the live app from a worker thread and validates every answer.

    ``profiles`` are the configured profiles coverage cases are aimed at, and
    ``oracle`` the exact answer to a schema-valid request.
    """

    def __init__(
        self,
        base_url: str,
        *,
        profiles: tuple[str, ...] = ("api", "bad"),
        oracle: Any = expected,
    ) -> None:
        self.base_url = base_url
        self.profiles = profiles
        self.oracle = oracle
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy from the environment: loopback only
        self.seen: Counter[tuple[str, int]] = Counter()

    def send(
        self,
        case,
        extra: dict[str, str] | None = None,
        *,
        valid: bool | None = None,
        answer: tuple[int, str | None, str | None] | None = None,
    ) -> Any:
        """Send ``case`` (plus ``extra`` headers) and run every check on the answer.

        ``valid`` says whether the document accepts the request; by default it is
        taken from how schemathesis generated the case. ``answer`` overrides the
        oracle's (status, code, profile) for a hand-made case.
        """
        extra = extra or {}
        response = case.call(base_url=self.base_url, session=self.session, headers=extra, timeout=5)
        case.validate_response(
            response,
            checks=CHECKS,
            headers=extra,
            transport_kwargs={"base_url": self.base_url, "session": self.session},
        )
        probe = scenario(case)
        if probe in REQUEST_SHAPE_PROBES:
            # A copy without generation metadata is checked like any other answer.
            plain = case.operation.Case(
                method=case.method,
                path_parameters=case.path_parameters,
                headers=case.headers,
                query=case.query,
                body=case.body,
                media_type=case.media_type,
            )
            plain.validate_response(response, checks=CONFORMANCE)
        if valid is None:
            positive = case.meta is None or case.meta.generation.mode is GenerationMode.POSITIVE
            # The Content-Type of a request is never looked at: those probes get normal answers.
            same_method = case.method == case.operation.method.upper()
            valid = (positive and same_method) or probe in CONTENT_TYPE_PROBES
        elif not valid:
            assert response.status_code == 400, (case.as_curl_command(), summary(response))
            assert response.json()["error"] == "bad_request", summary(response)
        if valid:
            status, code, profile = answer or self.oracle(case, extra)
            assert response.status_code == status, (
                case.as_curl_command(),
                extra,
                summary(response),
            )
            body = response.json()
            assert (body.get("error"), body["profile"]) == (code, profile), summary(response)
        self.seen[case.operation.label, response.status_code] += 1
        return response

    def coverage(self, operation) -> Iterator[Any]:
        """The coverage-phase cases, aimed at each configured profile where they name one."""
        schema = operation.schema
        generation = schema.config.generation_for(operation=operation)
        for profile in self.profiles:
            for case in schema.iter_coverage_cases(
                operation,
                generation_modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                generation_config=generation,
            ):
                if case.path_parameters["profile"] in {"demo", "demo-user"}:  # the examples
                    case.path_parameters["profile"] = profile
                yield case

    def fuzz(self, operation) -> None:
        """Hypothesis-generated valid and invalid requests, some with a guard-breaking header."""
        fixed_profiles = [{"profile": name} for name in self.profiles]
        strategy = st.one_of(
            *(
                operation.as_strategy(generation_mode=mode, path_parameters=fixed)
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                for fixed in (*fixed_profiles, None)
            )
        )
        extras = st.sampled_from(({},) * 4 + GUARD_BREAKERS)

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            # Each example is a real HTTP round trip; that is slow by Hypothesis' measure.
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(case=strategy, extra=extras)
        def run(case, extra):
            self.send(case, extra)

        run()

    def boundaries(self, schema) -> None:
        """Hand-picked values: the document's schemas accept exactly what the sidecar serves."""
        raw = schema.raw_schema
        ops = operations(schema)
        min_ttl = jsonschema_rs.validator_for(
            raw["paths"]["/v1/token/{profile}"]["get"]["parameters"][0]["schema"]
        )
        for value in MIN_TTLS:
            case = ops[GET_TOKEN].Case(
                path_parameters={"profile": "api"}, headers=dict(HEADERS), query={"min_ttl": value}
            )
            self.send(case, valid=min_ttl.is_valid(value))
        body = jsonschema_rs.validator_for(raw["components"]["schemas"]["InvalidateRequest"])
        for payload in BODIES:
            case = ops[INVALIDATE].Case(
                path_parameters={"profile": "api"},
                headers=dict(HEADERS),
                body=payload,
                media_type="application/json",
            )
            self.send(case, valid=body.is_valid(payload))

    def run_all(self, schema, current_fingerprint: str) -> None:
        """Coverage cases, boundary values and fuzzing, then one real invalidation."""
        ops = operations(schema)
        for label, operation in ops.items():
            if label == EXCHANGE:
                continue  # its own test: it needs an exchange profile and users' tokens
            for case in self.coverage(operation):
                self.send(case)
            self.fuzz(operation)
        self.boundaries(schema)
        # Reporting the current token replaces it: the answer is the fresh token.
        case = ops[INVALIDATE].Case(
            path_parameters={"profile": "api"},
            headers=dict(HEADERS),
            body={"fingerprint": current_fingerprint},
            media_type="application/json",
        )
        body = self.send(case).json()
        assert fingerprint(body["access_token"]) != current_fingerprint
        assert body["stale"] is False


async def test_live_api_conforms_to_spec(idp, make_service, leaks):
    """Generated requests to a live sidecar get only documented, schema-conforming answers."""
    leaks.add(WRONG_SECRET)
    service = make_service(
        make_profile(idp),
        make_profile(idp, name="bad", client_secret=InlineSecret(WRONG_SECRET)),
    )
    served = await service.get("api")
    await idle(service)
    assert math.isclose(served.token.lifetime, LIFETIME)
    app_runner = web.AppRunner(make_token_app(service, ServerConfig()), access_log=None)
    await app_runner.setup()
    try:
        await web.TCPSite(app_runner, "127.0.0.1", 0).start()
        port = app_runner.addresses[0][1]
        runner = Runner(f"http://127.0.0.1:{port}")
        try:
            await asyncio.to_thread(runner.run_all, load_schema(), served.token.fingerprint)
        finally:
            runner.session.close()
    finally:
        await app_runner.cleanup()
    for label in (GET_TOKEN, INVALIDATE):
        for status in (200, 400, 403, 404, 405, 503):
            assert runner.seen[label, status] > 0, (label, status, runner.seen)
    assert idp.issued == 2  # the first token and the one after the invalidation


async def test_proxy_refusals_match_the_document(idp, make_service, http):
    """The proxy's own answers have a documented status, code, header and body shape."""
    raw = load_schema().raw_schema
    documented = raw["paths"][PROXY]["get"]["responses"]
    codes = set(raw["components"]["schemas"]["ProxyErrorCode"]["enum"])
    keys = set(raw["components"]["schemas"]["ProxyError"]["properties"])
    closed = UpstreamConfig(
        name="api",
        base_url="http://127.0.0.1:9",
        profile="api",
        allow_http=True,
        allow_private=True,
    )
    users = UpstreamConfig(
        name="users",
        base_url="http://127.0.0.1:9",
        profile="user-api",
        exchange=True,
        allow_http=True,
        allow_private=True,
    )
    service = make_service(make_profile(idp), make_exchange_profile(idp), upstreams=[closed, users])
    await service.get("api")
    expired = idp.issue_user_token("u", MCP_AUDIENCE, expires_in=-5)
    runner = web.AppRunner(make_token_app(service, ServerConfig()), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        cases = [
            ("GET", "/v1/proxy/api/x", {}),
            ("GET", "/v1/proxy/api/a/../b", HEADERS),
            ("GET", "/v1/proxy/api/x", {**HEADERS, "Via": "1.1 p"}),
            ("GET", "/v1/proxy/other/x", HEADERS),
            ("TRACE", "/v1/proxy/api/x", HEADERS),
            ("POST", "/v1/proxy/api/x", HEADERS),
            ("GET", "/v1/proxy/users/x", HEADERS),
            ("GET", "/v1/proxy/users/x", {**HEADERS, "Token-Sidecar-Subject": expired}),
        ]
        seen = set()
        for method, path, headers in cases:
            async with http.request(method, base + path, headers=headers) as resp:
                body = await resp.json()
                assert str(resp.status) in documented, (path, resp.status)
                assert resp.headers["Token-Sidecar-Error"] == body["error"]
                assert body["error"] in codes
                assert set(body) <= keys
                seen.add(resp.status)
    finally:
        await runner.cleanup()
    assert seen == {400, 401, 403, 404, 405, 502}


#: Exchange bodies at the edges of the document's schema; it must accept exactly those served.
EXCHANGE_BODIES: tuple[object, ...] = (
    {"subject_token": "x"},
    {"subject_token": "x", "scope": None, "min_ttl": None},
    {"subject_token": "x", "min_ttl": 0},
    {"subject_token": "x", "min_ttl": 31536000},
    {"subject_token": "x", "min_ttl": 2.5, "note": "other keys are ignored"},
    {"subject_token": "x", "scope": "read:tools"},
    {"subject_token": "x", "scope": "admin"},
    {"subject_token": "x", "scope": " "},
    {"subject_token": "x", "min_ttl": -1},
    {"subject_token": "x", "min_ttl": 31536001},
    {"subject_token": "x", "min_ttl": "30"},
    {"subject_token": "x", "min_ttl": True},
    {"subject_token": "x", "scope": 1},
    {"subject_token": ""},
    {"subject_token": None},
    {},
    [],
)


def _json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 schema as JSON Schema: ``nullable: true`` becomes a ``null`` type."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {k: _json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") and "type" in node:
        converted["type"] = [node["type"], "null"]
    return converted


async def test_live_exchange_conforms_to_spec(idp, make_service, leaks):
    """Generated and hand-made exchange requests get only documented, conforming answers."""
    service = make_service(
        make_profile(idp), make_exchange_profile(idp, scope=EXCHANGE_SCOPE, negative_ttl=0.0)
    )
    await service.get("api")
    schema = load_schema()
    operation = operations(schema)[EXCHANGE]
    body_schema = jsonschema_rs.validator_for(
        _json_schema(schema.raw_schema["components"]["schemas"]["ExchangeRequest"])
    )
    app_runner = web.AppRunner(make_token_app(service, ServerConfig()), access_log=None)
    await app_runner.setup()

    def case(body: object) -> Any:
        return operation.Case(
            path_parameters={"profile": "user-api"},
            headers=dict(HEADERS),
            body=body,
            media_type="application/json",
        )

    try:
        await web.TCPSite(app_runner, "127.0.0.1", 0).start()
        runner = Runner(
            f"http://127.0.0.1:{app_runner.addresses[0][1]}",
            profiles=("user-api", "api"),
            oracle=expected_exchange,
        )
        try:

            def generated() -> None:
                for made in runner.coverage(operation):
                    runner.send(made)
                runner.fuzz(operation)
                for body in EXCHANGE_BODIES:
                    runner.send(case(body), valid=body_schema.is_valid(body))

            await asyncio.to_thread(generated)
            user = idp.issue_user_token("u", MCP_AUDIENCE)
            ok = (200, None, "user-api")
            for body, answer, faults in (
                ({"subject_token": user}, ok, {}),
                ({"subject_token": user, "scope": "read:tools", "min_ttl": 60}, ok, {}),
                (
                    {"subject_token": user, "min_ttl": 31536000},
                    (401, "invalid_subject", "user-api"),
                    {},
                ),
                (
                    {"subject_token": user, "scope": "write:tools"},
                    (401, "subject_rejected", "user-api"),
                    {"subject_rejected": True},
                ),
                (
                    {"subject_token": user, "scope": "write:tools"},
                    (403, "exchange_denied", "user-api"),
                    {"exchange_error": "interaction_required", "exchange_claims": "{}"},
                ),
                (
                    {"subject_token": user, "scope": "write:tools"},
                    (503, "token_unavailable", "user-api"),
                    {"status": 503},
                ),
            ):
                idp.faults.clear()
                for knob, value in faults.items():
                    setattr(idp.faults, knob, value)
                response = await asyncio.to_thread(runner.send, case(body), answer=answer)
                if answer[0] == 403:
                    assert response.json()["idp"]["claims"] == "{}"
        finally:
            runner.session.close()
    finally:
        await app_runner.cleanup()
    for status in (200, 400, 401, 403, 404, 405, 503):
        assert runner.seen[EXCHANGE, status] > 0, (status, runner.seen)
