"""The validated configuration model: what every other module reads.

These frozen dataclasses are produced only by the loaders of
:mod:`sidecar.config`, which parse TOML or the environment and refuse anything
invalid with a :class:`~sidecar.errors.ConfigError`. Durations are float
seconds here. Secret values never appear in a repr.

Where the config offers "exactly one of", the model is a union of small
classes (``SecretRef``: :class:`InlineSecret`, :class:`EnvSecret` or
:class:`FileSecret`; ``RefreshBefore``: :class:`RefreshDuration` or
:class:`RefreshShare`), so readers match on the type instead of asserting
which field is set.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

ClientAuth = Literal["client_secret_post", "client_secret_basic", "private_key_jwt"]
Verify = Literal["jwks", "claims", "none"]
#: How a profile gets its tokens: its own (client credentials) or a user's, exchanged.
Grant = Literal["client_credentials", "token_exchange", "jwt_bearer"]
#: How a caller's subject token is checked before an exchange: signature and claims, or not.
SubjectVerify = Literal["jwks", "none"]
CacheBackend = Literal["memory", "redis"]

#: The asymmetric JWS algorithms the sidecar signs and verifies with (never HS*, never none).
ASYMMETRIC_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
)

PROFILE_NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
#: RFC 8693 token type of an OAuth access token (``subject_token_type``, ``requested_token_type``).
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
#: Upstream names follow the profile-name rule: they appear in URLs and metric labels.
UPSTREAM_NAME_PATTERN = PROFILE_NAME_PATTERN

_EMPTY: MappingProxyType[str, str] = MappingProxyType({})


def is_loopback_host(host: str) -> bool:
    """Whether a host is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_private_address(host: str) -> bool:
    """Whether ``host`` is an IP address that is not globally routable, or ``localhost``.

    Loopback, private, link-local (which holds the cloud metadata address
    169.254.169.254), shared, reserved, multicast and unspecified addresses all
    count, and so does an IPv6 address that reaches a private IPv4 one: mapped
    (``::ffff:127.0.0.1``), NAT64 (``64:ff9b::a9fe:a9fe``), 6to4 or
    IPv4-compatible; RFC 8215's local-use NAT64 prefix is private as a whole.
    A name that is not an address is not private here: it is checked once
    resolved, at connect time.
    """
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return True
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            address = embedded
    return not address.is_global or address.is_multicast


#: Prefixes whose last 32 bits are an IPv4 address the packet ends up at.
_NAT64_WELL_KNOWN: Final = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
#: RFC 8215's local-use NAT64 prefix: translated inside the operator's own network.
_NAT64_LOCAL: Final = ipaddress.IPv6Network("64:ff9b:1::/48")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address reaches: mapped, 6to4, NAT64 or IPv4-compatible."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64_WELL_KNOWN or address in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


class _SecretSource:
    """The shared repr of the three secret sources: ``SecretRef(<where>)``, from ``describe()``.

    A log line or a check report names where a credential comes from, never its value.
    """

    def describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"SecretRef({self.describe()})"

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class InlineSecret(_SecretSource):
    """A credential written into the config itself (``client_secret = "..."``)."""

    value: str

    def describe(self) -> str:
        """A secret-free description, for logs and ``check`` output."""
        return "inline"


@dataclass(frozen=True, repr=False)
class EnvSecret(_SecretSource):
    """A credential read from the environment variable ``name`` at every request."""

    name: str

    def describe(self) -> str:
        """A secret-free description, for logs and ``check`` output."""
        return f"env:{self.name}"


@dataclass(frozen=True, repr=False)
class FileSecret(_SecretSource):
    """A credential read from the file at ``path`` at every request (a mounted Secret)."""

    path: Path

    def describe(self) -> str:
        """A secret-free description, for logs and ``check`` output."""
        return f"file:{self.path}"


#: Where one credential comes from: exactly one of an inline value, an env var or a file.
SecretRef: TypeAlias = InlineSecret | EnvSecret | FileSecret


@dataclass(frozen=True)
class RefreshDuration:
    """Refresh a fixed duration before expiry (``refresh_before = "5m"``)."""

    seconds: float

    def window(self, lifetime: float) -> float:  # noqa: ARG002 - one signature for both kinds
        """The nominal refresh window: the same for every lifetime."""
        return self.seconds


@dataclass(frozen=True)
class RefreshShare:
    """Refresh at a share of the token lifetime before expiry (``refresh_before = "20%"``)."""

    share: float  # 0 < share < 1, enforced by the loader

    def window(self, lifetime: float) -> float:
        """The nominal refresh window for a token of ``lifetime`` seconds."""
        return self.share * lifetime


#: How long before expiry a refresh starts: a duration or a share of the lifetime.
RefreshBefore: TypeAlias = RefreshDuration | RefreshShare


@dataclass(frozen=True)
class BackoffConfig:
    base: float = 1.0
    cap: float = 60.0


@dataclass(frozen=True)
class BreakerConfig:
    failures: int = 5
    reset: float = 30.0


@dataclass(frozen=True)
class SubjectConfig:
    """``[profiles.NAME.subject]``: how a caller's user token is checked before an exchange.

    With ``verify = "jwks"`` its signature, ``exp``, ``iss`` and ``aud`` are
    checked locally, so an expired or foreign token never costs IdP quota;
    with ``"none"`` the IdP judges it (a JWT's ``exp`` is still read).
    """

    verify: SubjectVerify = "jwks"
    issuer: str | None = None
    jwks_url: str | None = None
    #: The MCP server's own identifier: the ``aud`` a user token must carry.
    audience: str | None = None
    #: Seconds of clock skew granted on the subject's ``exp`` (and ``nbf``).
    leeway: float = 0.0


@dataclass(frozen=True)
class ProfileConfig:
    """One (token endpoint, client, audience/resource, scope) tuple."""

    name: str
    token_url: str
    client_id: SecretRef
    issuer: str | None = None
    jwks_url: str | None = None
    client_secret: SecretRef | None = None
    client_auth: ClientAuth = "client_secret_post"
    private_key_file: Path | None = None
    private_key_kid: str | None = None
    assertion_alg: str = "RS256"
    assertion_audience: str | None = None
    audience: str | None = None
    resource: str | None = None
    scope: str | None = None
    extra_params: MappingProxyType[str, str] = field(default_factory=lambda: _EMPTY)
    required: bool = True
    refresh_before: RefreshBefore = RefreshShare(0.2)
    min_ttl: float = 30.0
    wait_timeout: float = 10.0
    #: None means automatic: "jwks" when a JWKS URL is known, else "claims" for
    #: JWTs and "none" for opaque tokens.
    verify: Verify | None = None
    #: None means "use [server].allow_uids".
    allow_uids: tuple[int, ...] | None = None
    connect_timeout: float = 3.0
    timeout: float = 10.0
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    grant: Grant = "client_credentials"
    #: Token exchange only (RFC 8693): the type of the caller's token, sent as is.
    subject_token_type: str = ACCESS_TOKEN_TYPE
    #: Token exchange only: the type of token asked for (None: not sent).
    requested_token_type: str | None = ACCESS_TOKEN_TYPE
    #: Exchange profiles: how many per-user tokens the cache holds (least recently used go).
    cache_max_entries: int = 10000
    #: Exchange profiles: seconds an IdP rejection of one subject is remembered.
    negative_ttl: float = 5.0
    #: Exchange profiles: how a caller's token is checked locally (None otherwise).
    subject: SubjectConfig | None = None

    @property
    def exchanges(self) -> bool:
        """Whether this profile trades users' tokens (``token_exchange`` or ``jwt_bearer``)."""
        return self.grant != "client_credentials"

    @property
    def verified(self) -> bool:
        """Signature-checked: ``verify = "jwks"``, or automatic with a JWKS URL known."""
        return self.verify == "jwks" or (self.verify is None and self.jwks_url is not None)

    @property
    def effective_assertion_audience(self) -> str:
        """RFC 7523 ``aud`` of a client assertion: configured, else issuer, else token URL."""
        return self.assertion_audience or self.issuer or self.token_url


@dataclass(frozen=True)
class UpstreamConfig:
    """One ``[upstreams.NAME]``: where proxied requests go and whose token they carry.

    ``base_url`` has no trailing slash, no query, no fragment and no user
    info; a request for ``/v1/proxy/NAME/PATH`` goes to ``base_url + "/" + PATH``.
    With ``exchange``, ``profile`` is a token exchange profile (the config's
    ``exchange = "PROFILE"``): each request carries its user's token in
    ``Token-Sidecar-Subject`` and goes out with that user's exchanged token.
    """

    name: str
    base_url: str
    profile: str
    #: ``profile`` exchanges users' tokens: per-user tokens from ``Token-Sidecar-Subject``.
    exchange: bool = False
    header: str = "Authorization"
    set_headers: MappingProxyType[str, str] = field(default_factory=lambda: _EMPTY)
    connect_timeout: float = 5.0
    #: Until the upstream's status line and headers, from the end of the request body.
    response_timeout: float = 30.0
    #: Between body chunks, either way; there is no total cap (an SSE stream may last hours).
    idle_timeout: float = 300.0
    retry_on_401: bool = True
    #: Request bodies up to this many bytes are buffered, so a 401 can be retried.
    retry_body_limit: int = 64 * 1024
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    allow_private: bool = False
    allow_http: bool = False


@dataclass(frozen=True)
class ServerConfig:
    listen: str | None = "127.0.0.1:8700"
    socket: Path | None = None
    socket_mode: int = 0o660
    allow_uids: tuple[int, ...] = ()
    ops_listen: str | None = "0.0.0.0:9700"  # probes come from the kubelet, so not loopback
    allow_non_loopback: bool = False
    access_log: bool = False
    #: Open connections per listener; at the cap the oldest idle one makes room.
    max_connections: int = 1024
    #: Seconds a connection has to deliver a complete request line and headers.
    header_timeout: float = 10.0
    #: Seconds an idle keep-alive connection stays open.
    keepalive_timeout: float = 75.0


@dataclass(frozen=True)
class CacheConfig:
    """``[cache]``: where shared tokens live and how the sidecar reaches that Redis.

    The TLS files apply to ``rediss://`` URLs only; ``password_file`` and
    ``username`` are the ACL credentials (a password may instead be in the
    URL, never in both). The loader enforces these rules; the files are read
    when a Redis backend is built.
    """

    backend: CacheBackend = "memory"
    url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "token-sidecar"
    key_file: Path | None = None
    #: The Redis ACL user; None: the one in the URL, else Redis' ``default`` user.
    username: str | None = None
    #: A file holding the Redis password, read at every new connection.
    password_file: Path | None = None
    #: CA certificates trusted for the server's certificate, besides the system store.
    ssl_ca_file: Path | None = None
    #: A client certificate and its key, for servers that ask for one.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    #: The cold-start file: the held tokens, sealed with ``key_file``, read at start.
    persist_file: Path | None = None


@dataclass(frozen=True)
class Config:
    """The whole validated configuration; ``source`` names where it came from."""

    profiles: MappingProxyType[str, ProfileConfig]
    server: ServerConfig = field(default_factory=ServerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    source: str = "<defaults>"
    upstreams: MappingProxyType[str, UpstreamConfig] = field(
        default_factory=lambda: MappingProxyType({})
    )
