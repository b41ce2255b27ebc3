"""The development IdP: an Auth0-compatible token endpoint with runtime fault injection.

:class:`DevIdP` is a real :class:`aiohttp.web.Application` that issues
client-credentials tokens the way an Auth0 tenant does (RS256 JWTs with
``iss``/``sub``/``aud``/``azp``/``gty``, Auth0's error shapes and rate-limit
headers) and publishes its keys at ``/.well-known/jwks.json``. Tests serve it on
an ephemeral loopback port and flip the knobs of :class:`Faults` on the Python
object between requests; ``token-sidecar dev`` embeds it in the same process.

Endpoints::

    POST /oauth/token                       form or JSON body; faults apply here only
    GET  /.well-known/jwks.json             the published signing keys
    GET  /.well-known/openid-configuration  issuer, token_endpoint, jwks_uri

A request to the token endpoint goes through, in order: fault knobs that
replace the answer (delay, hang, reset, status, rate limit, garbage), then
``grant_type``, client authentication (exactly one of ``client_secret_post``,
``client_secret_basic``, ``private_key_jwt``), the client's grants (audience,
scopes), and issuance, where the token-shaping knobs apply. Time for claims
and rate-limit headers comes from the injected :class:`~sidecar.clock.Clock`;
only ``delay`` waits in real time. Secrets, assertions and tokens never appear
in a repr.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import dataclasses
import functools
import hmac
import math
import secrets
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_plus

import jwt
from aiohttp import hdrs, web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from sidecar.clock import Clock, SystemClock

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Auth0 rejects client assertions longer than this many bytes.
MAX_ASSERTION_BYTES = 2048
#: Auth0 rejects client assertions whose ``exp`` is further ahead than this.
MAX_ASSERTION_LIFETIME = 300
#: The ``aud`` of tokens issued while :attr:`Faults.wrong_aud` is on.
WRONG_AUDIENCE = "https://wrong.example/"
#: The ``x-ratelimit-limit`` we advertise (Auth0's free-plan token endpoint limit).
RATE_LIMIT = 30
NO_AUDIENCE = "No audience parameter was provided, and no default audience has been configured"
AUTH_METHODS = ("client_secret_post", "client_secret_basic", "private_key_jwt")
_ASSERTION_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"]
_SENSITIVE_FIELDS = ("client_secret", "client_assertion")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_GARBAGE = "<html><body><h1>Service temporarily unavailable</h1></body></html>"


def generate_private_key() -> rsa.RSAPrivateKey:
    """A fresh RSA 2048 key (tens of milliseconds: create them sparingly)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of ``key``'s public half, for :class:`DevClient`."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@functools.cache
def _shared_key(slot: int) -> rsa.RSAPrivateKey:
    # Every DevIdP starts with the same key material (under its own random kid),
    # so a test suite that builds hundreds of IdPs pays for key generation once.
    del slot
    return generate_private_key()


@dataclass(frozen=True, repr=False)
class _SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def create(cls, private_key: rsa.RSAPrivateKey | None = None) -> _SigningKey:
        return cls(secrets.token_hex(8), private_key or generate_private_key())

    def public_jwk(self) -> dict[str, Any]:
        jwk = dict(RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def __repr__(self) -> str:
        return f"_SigningKey(kid={self.kid!r})"


@dataclass(repr=False)
class DevClient:
    """A registered machine-to-machine application.

    ``audiences`` maps each API the client may call to the scopes granted
    there (Auth0 "client grants"); an audience not in it is refused. The repr
    never shows the secret or the key.
    """

    client_id: str
    client_secret: str | None = None
    public_key_pem: bytes | None = None
    audiences: dict[str, tuple[str, ...]] = field(default_factory=dict)
    grant_types: tuple[str, ...] = ("client_credentials",)

    def __repr__(self) -> str:
        secret = "[secure]" if self.client_secret is not None else None
        key = "[set]" if self.public_key_pem is not None else None
        return (
            f"DevClient(client_id={self.client_id!r}, client_secret={secret}, "
            f"public_key_pem={key}, audiences={sorted(self.audiences)!r}, "
            f"grant_types={self.grant_types!r})"
        )


class MaskedValues(Mapping[str, str]):
    """Secret request values (client secret, client assertion) whose repr shows only names."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"MaskedValues({', '.join(f'{name}=[secure]' for name in self._values)})"


@dataclass
class RecordedRequest:
    """One request to the token endpoint, as the IdP saw and answered it.

    ``fields`` holds the body without ``client_secret`` and ``client_assertion``;
    those (and a Basic-auth secret) live only in ``sensitive``, which masks them.
    ``status`` stays ``None`` while the request hangs and when it was reset.
    """

    content_type: str
    fields: dict[str, str] = field(default_factory=dict)
    sensitive: MaskedValues = field(default_factory=MaskedValues)
    auth_method: str | None = None
    client_id: str | None = None
    status: int | None = None
    error: str | None = None

    @property
    def client_secret(self) -> str | None:
        """The client secret sent (in the body or a Basic header), if any."""
        return self.sensitive.get("client_secret")

    @property
    def client_assertion(self) -> str | None:
        """The ``private_key_jwt`` client assertion sent, if any."""
        return self.sensitive.get("client_assertion")


class _HangGate:
    """Parks hung requests until released, and counts them so tests wait without sleeping."""

    def __init__(self) -> None:
        self._released: asyncio.Event | None = None
        self._changed: asyncio.Condition | None = None
        self.parked = 0

    async def park(self) -> None:
        if self._released is None:
            self._released = asyncio.Event()
        released = self._released
        self.parked += 1
        try:
            async with self._condition():
                self._condition().notify_all()
            await released.wait()
        finally:
            self.parked -= 1

    def release(self) -> None:
        # Hands the current event to everyone parked on it; the next hang gets a new one.
        if self._released is not None:
            self._released.set()
            self._released = None

    async def wait_parked(self, count: int) -> None:
        async with self._condition():
            await self._condition().wait_for(lambda: self.parked >= count)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed


@dataclass
class Faults:
    """Runtime fault knobs for the token endpoint; all off by default.

    Tests set attributes directly. Each request takes a snapshot of the knobs
    when it arrives (:meth:`consume`). When ``remaining`` is set, the knobs
    apply to that many more requests and then every knob (``delay`` included)
    switches off. Switching ``hang`` off does not wake requests already parked:
    only :meth:`release_hang` (or server shutdown) does.
    """

    status: int | None = None
    remaining: int | None = None
    rate_limit: bool = False
    retry_after: float | None = None
    ratelimit_reset: float | None = None
    delay: float = 0.0
    hang: bool = False
    reset: bool = False
    garbage: bool = False
    wrong_aud: bool = False
    expired: bool = False
    expires_in_as_string: bool = False
    omit_expires_in: bool = False
    opaque: bool = False
    unpublished_key: bool = False
    _gate: _HangGate = field(default_factory=_HangGate, init=False, repr=False, compare=False)

    def clear(self) -> None:
        """Switch every knob off (parked requests stay parked until released)."""
        for knob in dataclasses.fields(self):
            if knob.init:
                setattr(self, knob.name, knob.default)

    def consume(self) -> Faults:
        """The knobs that apply to one arriving request; counts ``remaining`` down."""
        if self.remaining is not None and self.remaining <= 0:
            self.clear()
        snapshot = copy.copy(self)
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                self.clear()
        return snapshot

    def release_hang(self) -> None:
        """Switch ``hang`` off and let every parked request go on to its answer."""
        self.hang = False
        self._gate.release()

    @property
    def hung(self) -> int:
        """How many requests are parked by ``hang`` right now."""
        return self._gate.parked

    async def wait_hung(self, count: int = 1) -> None:
        """Return once at least ``count`` requests are parked (wrap in a timeout)."""
        await self._gate.wait_parked(count)

    async def park(self) -> None:
        """Park the calling request until :meth:`release_hang`."""
        await self._gate.park()


class _RejectedError(Exception):
    """An OAuth error answer; raised inside the token flow, turned into a response once."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description

    def response(self) -> web.Response:
        return _oauth_error(self.status, self.error, self.description)


def _oauth_error(
    status: int, error: str, description: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = {"error": error, "error_description": description}
    return web.json_response(body, status=status, headers={**_NO_STORE, **(headers or {})})


def _unauthorized() -> _RejectedError:
    # Auth0's answer to a wrong client id or secret: not RFC 6749's invalid_client.
    return _RejectedError(401, "access_denied", "Unauthorized")


def _invalid_request(description: str) -> _RejectedError:
    return _RejectedError(400, "invalid_request", description)


def _invalid_client(description: str) -> _RejectedError:
    return _RejectedError(401, "invalid_client", description)


def _status_answer(status: int) -> tuple[web.Response, str | None]:
    """An Auth0-like answer for an injected status: HTML from a gateway, JSON otherwise."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    if status in (502, 504):
        html = f"<html><head><title>{status} {phrase}</title></head><body>{phrase}</body></html>"
        return web.Response(status=status, text=html, content_type="text/html"), None
    known = {
        401: ("access_denied", "Unauthorized"),
        403: ("access_denied", phrase),
        429: ("too_many_requests", "Global limit has been reached"),
    }
    error, description = known.get(status, ("invalid_request", phrase))
    if status >= 500:
        error = "server_error"
    return _oauth_error(status, error, description), error


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


async def _read_fields(request: web.Request) -> dict[str, str]:
    """The body as string fields, from JSON or a form; repeated or non-string values are refused."""
    if request.content_type == "application/json":
        try:
            data = await request.json()
        except ValueError as exc:
            raise _invalid_request("Request body is not valid JSON") from exc
        if not isinstance(data, dict):
            raise _invalid_request("Request body must be a JSON object")
        items = list(data.items())
    else:
        items = list((await request.post()).items())
    fields: dict[str, str] = {}
    for name, value in items:
        if not isinstance(value, str):
            raise _invalid_request(f"Invalid value for parameter: {name}")
        if name in fields:
            raise _invalid_request(f"Parameter must not be repeated: {name}")
        fields[name] = value
    return fields


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """The (client_id, secret) of an ``Authorization: Basic`` header (RFC 6749 §2.3.1)."""
    scheme, _, param = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _unauthorized() from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _unauthorized()
    return unquote_plus(client_id), unquote_plus(secret)


def _auth_method(fields: Mapping[str, str], basic: tuple[str, str] | None) -> str | None:
    present = [
        name
        for name, used in (
            ("client_secret_post", "client_secret" in fields),
            ("client_secret_basic", basic is not None),
            ("private_key_jwt", "client_assertion" in fields or "client_assertion_type" in fields),
        )
        if used
    ]
    if len(present) > 1:
        raise _invalid_request("Only one client authentication method may be used")
    return present[0] if present else None


def _secret_matches(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


class DevIdP:
    """An Auth0-compatible development IdP; one instance per server.

    Invariants: every issued JWT is signed by a key in :meth:`jwks` unless
    ``faults.unpublished_key`` is on; ``jti`` is fresh for every token; a client
    assertion ``jti`` is accepted once; the counters only grow until
    :meth:`reset_counters`.

    Args:
        issuer: the ``iss`` of issued tokens (Auth0 style, with a trailing
            slash). Default: the server's base URL plus ``/``, known after
            :meth:`start`, :meth:`set_base_url` or the first request.
        clock: wall time for ``iat``/``exp`` and rate-limit headers.
        token_lifetime: ``expires_in`` of issued tokens, in seconds.
        audience: the API that :meth:`register` grants clients.
    """

    def __init__(
        self,
        *,
        issuer: str | None = None,
        clock: Clock | None = None,
        token_lifetime: int = 86400,
        audience: str = "https://api.example.com/",
    ) -> None:
        self._issuer = issuer
        self._base_url: str | None = None
        self._clock: Clock = clock or SystemClock()
        self.token_lifetime = token_lifetime
        self.audience = audience
        #: Used when a request names no audience (Auth0 tenant setting); off by default.
        self.default_audience: str | None = None
        self.faults = Faults()
        self.clients: dict[str, DevClient] = {}
        self._signing = _SigningKey.create(_shared_key(0))
        self._published: dict[str, _SigningKey] = {self._signing.kid: self._signing}
        self._unpublished: _SigningKey | None = None
        self._seen_jti: dict[tuple[str, str], float] = {}
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self.token_requests = 0
        self.issued = 0
        self.jwks_requests = 0
        self.requests: list[RecordedRequest] = []
        #: Every access token issued, for leak scans; :meth:`reset_counters` keeps it.
        self.issued_tokens: list[str] = []

    # -- administration ---------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The ``iss`` of issued tokens; raises ``RuntimeError`` while unknown."""
        if self._issuer is not None:
            return self._issuer
        if self._base_url is None:
            raise RuntimeError("issuer unknown: pass issuer=, call set_base_url() or start()")
        return self._base_url + "/"

    @property
    def base_url(self) -> str | None:
        """Where the server is reachable (``http://127.0.0.1:PORT``), once known."""
        return self._base_url

    @property
    def token_url(self) -> str:
        """The token endpoint URL; raises ``RuntimeError`` before the base URL is known."""
        if self._base_url is None:
            raise RuntimeError("base URL unknown: call set_base_url() or start()")
        return self._base_url + "/oauth/token"

    def set_base_url(self, url: str) -> None:
        """Record where the server is served; the issuer becomes ``url + "/"`` unless given."""
        self._base_url = url.rstrip("/")

    def add_client(self, client: DevClient) -> None:
        """Register ``client``, replacing any client with the same id."""
        self.clients[client.client_id] = client

    def register(
        self,
        client_id: str,
        client_secret: str | None = None,
        *,
        public_key_pem: bytes | None = None,
        scopes: tuple[str, ...] = (),
    ) -> DevClient:
        """Register a client granted ``scopes`` on :attr:`audience`, and return it."""
        client = DevClient(client_id, client_secret, public_key_pem, {self.audience: scopes})
        self.add_client(client)
        return client

    def rotate_secret(self, client_id: str, new_secret: str) -> None:
        """Replace a client's secret; the old one stops working at once."""
        self.clients[client_id].client_secret = new_secret

    def rotate_signing_key(self, *, publish: bool = True, keep_old: bool = True) -> str:
        """Sign new tokens with a fresh key and return its kid.

        Args:
            publish: put the new key in the JWKS (off: tokens fail verification).
            keep_old: keep the previous keys in the JWKS so their tokens still verify.
        """
        self._signing = _SigningKey.create()
        if not keep_old:
            self._published.clear()
        if publish:
            self._published[self._signing.kid] = self._signing
        return self._signing.kid

    @property
    def signing_kid(self) -> str:
        """The kid of the key that signs new tokens."""
        return self._signing.kid

    def jwks(self) -> dict[str, Any]:
        """The published public keys, as served at ``/.well-known/jwks.json``."""
        return {"keys": [key.public_jwk() for key in self._published.values()]}

    def release_hang(self) -> None:
        """Shorthand for ``faults.release_hang()``."""
        self.faults.release_hang()

    def reset_counters(self) -> None:
        """Zero the counters and forget the recorded requests."""
        self.token_requests = self.issued = self.jwks_requests = 0
        self.requests.clear()

    def verify_token(self, token: str, audience: str) -> dict[str, Any]:
        """Verify ``token`` against the current JWKS, issuer, ``audience`` and clock.

        Returns the claims; raises a ``jwt.InvalidTokenError`` subclass.
        """
        kid = jwt.get_unverified_header(token).get("kid")
        key = self._published.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise jwt.InvalidTokenError(f"kid {kid!r} is not in the JWKS")
        claims: dict[str, Any] = jwt.decode(
            token,
            key.private_key.public_key(),
            algorithms=["RS256"],
            audience=audience,
            issuer=self.issuer,
            # pyjwt would compare exp with the machine's clock; ours may be a FakeClock.
            options={
                "require": ["exp", "iat", "iss", "aud", "sub"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
        if claims["exp"] <= self._clock.time():
            raise jwt.ExpiredSignatureError("Signature has expired")
        return claims

    # -- serving ----------------------------------------------------------------

    @property
    def app(self) -> web.Application:
        """The web application (created on first use)."""
        if self._app is None:
            self._app = self.make_app()
        return self._app

    def make_app(self) -> web.Application:
        """A new web application serving this IdP."""
        app = web.Application()
        app[DEV_IDP] = self
        app.router.add_post("/oauth/token", self._token_endpoint)
        app.router.add_get("/.well-known/jwks.json", self._jwks_endpoint)
        app.router.add_get("/.well-known/openid-configuration", self._discovery_endpoint)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: an ephemeral port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("DevIdP is already started")
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        netloc = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"http://{netloc}:{bound_port}"
        self.set_base_url(url)
        return url

    async def stop(self) -> None:
        """Stop serving (hung requests are released first); idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            self.faults.release_hang()
            await runner.cleanup()

    async def _on_shutdown(self, _app: web.Application) -> None:
        # A parked handler would hold up server shutdown until its timeout.
        self.faults.release_hang()

    async def _jwks_endpoint(self, _request: web.Request) -> web.Response:
        self.jwks_requests += 1
        return web.json_response(self.jwks())

    async def _discovery_endpoint(self, request: web.Request) -> web.Response:
        base = _request_base(request)
        return web.json_response(
            {
                "issuer": self._issuer_for(request),
                "token_endpoint": base + "/oauth/token",
                "jwks_uri": base + "/.well-known/jwks.json",
                "grant_types_supported": ["client_credentials"],
                "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
                "token_endpoint_auth_signing_alg_values_supported": _ASSERTION_ALGORITHMS,
            }
        )

    def _issuer_for(self, request: web.Request) -> str:
        if self._issuer is None and self._base_url is None:
            # Served by a test harness that never told us its port: learn it here.
            self.set_base_url(_request_base(request))
        return self.issuer

    # -- the token endpoint -----------------------------------------------------

    async def _token_endpoint(self, request: web.Request) -> web.StreamResponse:
        self.token_requests += 1
        plan = self.faults.consume()
        record = RecordedRequest(content_type=request.content_type)
        self.requests.append(record)
        response = await self._answer(request, plan, record)
        if response is None:
            # The connection is gone; aiohttp discards whatever we return.
            return web.Response(status=204)
        record.status = response.status
        return response

    async def _answer(
        self, request: web.Request, plan: Faults, record: RecordedRequest
    ) -> web.Response | None:
        """The answer to one token request, or ``None`` when the connection was reset."""
        bad_body: _RejectedError | None = None
        try:
            fields = await _read_fields(request)
        except _RejectedError as exc:
            fields, bad_body = {}, exc
        record.fields = {k: v for k, v in fields.items() if k not in _SENSITIVE_FIELDS}
        record.sensitive = MaskedValues({k: fields[k] for k in _SENSITIVE_FIELDS if k in fields})
        if plan.delay > 0:
            # Real time on purpose: a slow IdP must trip the caller's real socket timeouts.
            await asyncio.sleep(plan.delay)
        if plan.hang:
            await self.faults.park()
        if plan.reset:
            if request.transport is not None:
                request.transport.abort()
            return None
        fault = self._fault_answer(plan, record)
        if fault is not None:
            return fault
        try:
            if bad_body is not None:
                raise bad_body
            return self._grant(request, fields, plan, record)
        except _RejectedError as exc:
            record.error = exc.error
            return exc.response()

    def _fault_answer(self, plan: Faults, record: RecordedRequest) -> web.Response | None:
        """The answer that replaces the OAuth flow under a fault knob, if any."""
        if plan.status is not None:
            response, record.error = _status_answer(plan.status)
            return response
        if plan.rate_limit:
            record.error = "too_many_requests"
            return self._rate_limited(plan)
        if plan.garbage:
            return web.Response(status=200, text=_GARBAGE, content_type="text/html")
        return None

    def _rate_limited(self, plan: Faults) -> web.Response:
        reset = plan.ratelimit_reset
        if reset is None:
            reset = math.ceil(self._clock.time()) + 1
        headers = {
            "x-ratelimit-limit": str(RATE_LIMIT),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": _format_seconds(reset),
        }
        if plan.retry_after is not None:
            headers[hdrs.RETRY_AFTER] = _format_seconds(plan.retry_after)
        return _oauth_error(429, "too_many_requests", "Global limit has been reached", headers)

    def _grant(
        self, request: web.Request, fields: dict[str, str], plan: Faults, record: RecordedRequest
    ) -> web.Response:
        grant_type = fields.get("grant_type")
        if not grant_type:
            raise _invalid_request("Missing required parameter: grant_type")
        if grant_type != "client_credentials":
            raise _RejectedError(
                400, "unsupported_grant_type", f"Unsupported grant type: {grant_type}"
            )
        client = self._authenticate(request, fields, record)
        if "client_credentials" not in client.grant_types:
            raise _RejectedError(
                403,
                "unauthorized_client",
                "Grant type 'client_credentials' not allowed for the client.",
            )
        audience, scopes = self._authorize(client, fields)
        return self._issue(request, client, audience, scopes, plan)

    def _authenticate(
        self, request: web.Request, fields: dict[str, str], record: RecordedRequest
    ) -> DevClient:
        """The client that authenticated with exactly one method, or a rejection."""
        basic = _basic_credentials(request)
        secret: str | None
        record.auth_method = method = _auth_method(fields, basic)
        if method == "private_key_jwt":
            return self._authenticate_assertion(request, fields, record)
        if basic is not None:
            client_id, secret = basic
            record.sensitive = MaskedValues({**record.sensitive, "client_secret": secret})
            if fields.get("client_id", client_id) != client_id:
                raise _unauthorized()
        else:
            client_id, secret = fields.get("client_id", ""), fields.get("client_secret")
        record.client_id = client_id or None
        client = self.clients.get(client_id)
        if client is None or secret is None or not _secret_matches(secret, client.client_secret):
            raise _unauthorized()
        return client

    def _authenticate_assertion(
        self, request: web.Request, fields: dict[str, str], record: RecordedRequest
    ) -> DevClient:
        """Verify a ``private_key_jwt`` client assertion (RFC 7523) and return its client."""
        if fields.get("client_assertion_type") != ASSERTION_TYPE:
            raise _invalid_request(f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = fields.get("client_assertion", "")
        if len(assertion.encode()) > MAX_ASSERTION_BYTES:
            raise _invalid_client(f"client_assertion must be at most {MAX_ASSERTION_BYTES} bytes")
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _invalid_client("client_assertion is not a valid JWT") from exc
        subject = unverified.get("sub")
        client_id = fields.get("client_id") or (subject if isinstance(subject, str) else "")
        record.client_id = client_id or None
        client = self.clients.get(client_id)
        if client is None or client.public_key_pem is None:
            raise _invalid_client("Unknown client or no public key registered for it")
        audiences = self._assertion_audiences(request)
        claims = self._verify_assertion(assertion, client, client.public_key_pem, audiences)
        self._remember_jti(client.client_id, claims["jti"], claims["exp"])
        return client

    def _assertion_audiences(self, request: web.Request) -> list[str]:
        base = _request_base(request)
        return [self._issuer_for(request), base + "/oauth/token", base + "/"]

    def _verify_assertion(
        self, assertion: str, client: DevClient, key: bytes, audiences: list[str]
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                key,
                algorithms=_ASSERTION_ALGORITHMS,
                audience=audiences,
                # Times are checked below against the injected clock, not pyjwt's.
                options={
                    "require": ["iss", "sub", "aud", "exp", "jti"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise _invalid_client(f"Invalid client_assertion: {exc}") from exc
        if not claims["iss"] == claims["sub"] == client.client_id:
            raise _invalid_client("client_assertion iss and sub must be the client_id")
        now = self._clock.time()
        exp, nbf = claims["exp"], claims.get("nbf", now)
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
            raise _invalid_client("client_assertion exp and nbf must be numbers")
        if exp <= now or nbf > now:
            raise _invalid_client("client_assertion is expired or not yet valid")
        if exp > now + MAX_ASSERTION_LIFETIME:
            raise _invalid_client("client_assertion exp must be at most 5 minutes ahead")
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            raise _invalid_client("client_assertion jti must be a non-empty string")
        return claims

    def _remember_jti(self, client_id: str, jti: str, exp: float) -> None:
        now = self._clock.time()
        # Forget jtis whose assertions have expired: they could not be replayed anyway.
        self._seen_jti = {key: until for key, until in self._seen_jti.items() if until > now}
        if (client_id, jti) in self._seen_jti:
            raise _invalid_client("client_assertion jti has already been used")
        self._seen_jti[client_id, jti] = exp

    def _authorize(self, client: DevClient, fields: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        """The audience and scopes to grant (``audience`` wins over RFC 8707 ``resource``)."""
        audience = fields.get("audience") or fields.get("resource") or self.default_audience
        if not audience:
            raise _RejectedError(403, "access_denied", NO_AUDIENCE)
        granted = client.audiences.get(audience)
        if granted is None:
            raise _RejectedError(
                403,
                "access_denied",
                f'Client is not authorized to access "{audience}". You need to create a '
                '"client-grant" associated to this API.',
            )
        requested = fields.get("scope")
        if requested is None:
            return audience, granted
        wanted = tuple(dict.fromkeys(requested.split()))
        missing = [scope for scope in wanted if scope not in granted]
        if missing:
            description = f"Client has not been granted scopes: {' '.join(missing)}"
            raise _RejectedError(403, "invalid_scope", description)
        return audience, wanted

    def _issue(
        self,
        request: web.Request,
        client: DevClient,
        audience: str,
        scopes: tuple[str, ...],
        plan: Faults,
    ) -> web.Response:
        """A successful token answer, shaped by the token knobs of ``plan``."""
        if plan.opaque:
            access_token = secrets.token_urlsafe(24)
        else:
            access_token = self._sign(self._claims(request, client, audience, scopes, plan), plan)
        body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer"}
        if not plan.omit_expires_in:
            lifetime = self.token_lifetime
            body["expires_in"] = str(lifetime) if plan.expires_in_as_string else lifetime
        if scopes:
            body["scope"] = " ".join(scopes)
        self.issued += 1
        self.issued_tokens.append(access_token)
        return web.json_response(body, headers=_NO_STORE)

    def _claims(
        self,
        request: web.Request,
        client: DevClient,
        audience: str,
        scopes: tuple[str, ...],
        plan: Faults,
    ) -> dict[str, Any]:
        now = int(self._clock.time())
        exp = now - 60 if plan.expired else now + self.token_lifetime
        claims: dict[str, Any] = {
            "iss": self._issuer_for(request),
            "sub": f"{client.client_id}@clients",
            "aud": WRONG_AUDIENCE if plan.wrong_aud else audience,
            "azp": client.client_id,
            "gty": "client-credentials",
            "iat": exp - self.token_lifetime,
            "exp": exp,
            "jti": uuid.uuid4().hex,
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        return claims

    def _sign(self, claims: dict[str, Any], plan: Faults) -> str:
        key = self._signing
        if plan.unpublished_key:
            if self._unpublished is None:
                self._unpublished = _SigningKey.create(_shared_key(1))
            key = self._unpublished
        headers = {"kid": key.kid, "typ": "JWT"}
        return jwt.encode(claims, key.private_key, algorithm="RS256", headers=headers)

    def __repr__(self) -> str:
        issuer = self._issuer or (self._base_url and self._base_url + "/")
        return (
            f"DevIdP(issuer={issuer!r}, clients={len(self.clients)}, "
            f"token_requests={self.token_requests}, issued={self.issued})"
        )


def _request_base(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


#: The :class:`DevIdP` an application serves, for apps that embed it.
DEV_IDP = web.AppKey("dev_idp", DevIdP)
