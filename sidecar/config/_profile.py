"""One ``[profiles.NAME]`` table: endpoint, client authentication, token policy.

Every rule DESIGN.md "Config" states about a profile is enforced here: one
source per credential, exactly one client authentication method, a refresh
window above ``min_ttl``, timeouts and backoff that fit together. What the
grant changes (the keys of token exchange profiles) is read by
:mod:`sidecar.config._exchange`.
:func:`read_profiles` is called by :mod:`sidecar.config._document` with the
document's root :class:`~sidecar.config._reader.Table`.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple, cast, get_args

from sidecar.config._exchange import read_exchange, read_grant
from sidecar.config._model import (
    ASYMMETRIC_ALGORITHMS,
    PROFILE_NAME_PATTERN,
    BackoffConfig,
    BreakerConfig,
    ClientAuth,
    EnvSecret,
    FileSecret,
    InlineSecret,
    ProfileConfig,
    RefreshBefore,
    RefreshDuration,
    RefreshShare,
    SecretRef,
    Verify,
)
from sidecar.config._profile_keys import (
    ASSERTION_KEYS,
    AUTH0_DOMAIN_PATTERN,
    BACKOFF_KEYS,
    BREAKER_KEYS,
    CLIENT_SECRET_KEYS,
    PROFILE_KEYS,
    RESERVED_PARAMS,
)
from sidecar.config._reader import Table, format_duration, one_of, read_http_url

_CLIENT_AUTHS: tuple[str, ...] = get_args(ClientAuth)
_VERIFY_MODES: tuple[str, ...] = get_args(Verify)

_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


def read_profiles(root: Table) -> MappingProxyType[str, ProfileConfig]:
    """Every ``[profiles.NAME]`` table of the document, validated; at least one is required."""
    raw = root.mapping("profiles")
    if not raw:
        raise root.error(
            "profiles", "at least one profile is required: add a [profiles.NAME] table"
        )
    tables = root.named_tables(
        "profiles", kind="profile", pattern=PROFILE_NAME_PATTERN, allowed=PROFILE_KEYS.names
    )
    return MappingProxyType({name: _profile(name, table) for name, table in tables})


# --------------------------------------------------------------------------- profiles

_AUTH0_DOMAIN = re.compile(AUTH0_DOMAIN_PATTERN)


class _Endpoint(NamedTuple):
    token_url: str
    issuer: str | None
    jwks_url: str | None


class _ClientAuthentication(NamedTuple):
    client_id: SecretRef
    client_secret: SecretRef | None
    method: ClientAuth
    private_key_file: Path | None
    private_key_kid: str | None
    assertion_alg: str
    assertion_audience: str | None


def _profile(name: str, t: Table) -> ProfileConfig:
    grant = read_grant(t)
    endpoint = _endpoint(t)
    auth = _client_authentication(t)
    min_ttl = t.duration("min_ttl", default=ProfileConfig.min_ttl)
    connect_timeout, timeout = _timeouts(t)
    exchange = read_exchange(t, grant, issuer=endpoint.issuer, jwks_url=endpoint.jwks_url)
    return ProfileConfig(
        name=name,
        token_url=endpoint.token_url,
        issuer=endpoint.issuer,
        jwks_url=endpoint.jwks_url,
        client_id=auth.client_id,
        client_secret=auth.client_secret,
        client_auth=auth.method,
        private_key_file=auth.private_key_file,
        private_key_kid=auth.private_key_kid,
        assertion_alg=auth.assertion_alg,
        assertion_audience=auth.assertion_audience,
        audience=t.string("audience"),
        resource=t.string("resource"),
        scope=t.string("scope"),
        extra_params=_extra_params(t),
        # Exchange profiles hold no token of their own: never required for readiness.
        required=grant == "client_credentials"
        and t.boolean("required", default=ProfileConfig.required),
        refresh_before=_refresh_before(t, min_ttl),
        min_ttl=min_ttl,
        wait_timeout=t.duration("wait_timeout", default=ProfileConfig.wait_timeout),
        verify=_verify(t, endpoint.jwks_url),
        allow_uids=t.uids("allow_uids"),
        connect_timeout=connect_timeout,
        timeout=timeout,
        backoff=_backoff(t.table("backoff", BACKOFF_KEYS.names)),
        breaker=_breaker(t.table("breaker", BREAKER_KEYS.names)),
        grant=grant,
        subject_token_type=exchange.subject_token_type,
        requested_token_type=exchange.requested_token_type,
        cache_max_entries=exchange.cache_max_entries,
        negative_ttl=exchange.negative_ttl,
        subject=exchange.subject,
    )


def _endpoint(t: Table) -> _Endpoint:
    """Where tokens come from; ``auth0_domain`` fills in what is not set explicitly."""
    one_of(t, ("auth0_domain", "token_url"))
    issuer = t.string("issuer")
    jwks_url = read_http_url(t, "jwks_url", "lets anyone on the path swap the signing keys")
    domain = t.string("auth0_domain")
    if domain is not None:
        if not _AUTH0_DOMAIN.fullmatch(domain):
            raise t.error(
                "auth0_domain",
                'expected a bare host name like "example.us.auth0.com" (no scheme, no path)',
            )
        return _Endpoint(
            token_url=f"https://{domain}/oauth/token",
            issuer=issuer or f"https://{domain}/",
            jwks_url=jwks_url or f"https://{domain}/.well-known/jwks.json",
        )
    token_url = read_http_url(t, "token_url", "sends the client secret in clear")
    if token_url is None:
        raise t.error("token_url", "required: set auth0_domain or token_url")
    return _Endpoint(token_url, issuer, jwks_url)


def _credential(t: Table, base: str) -> SecretRef | None:
    """``base`` inline, ``base_file`` or ``base_env``: at most one of them."""
    which = one_of(t, (base, f"{base}_file", f"{base}_env"))
    # TOML has no null; a None in a hand-built mapping counts as not set.
    if which == base and (value := t.string(which)) is not None:
        return InlineSecret(value)
    if which == f"{base}_file" and (path := t.path_value(which)) is not None:
        return FileSecret(path)
    if which == f"{base}_env" and (name := t.env_name(which)) is not None:
        return EnvSecret(name)
    return None


def _client_authentication(t: Table) -> _ClientAuthentication:
    client_id = _credential(t, "client_id")
    if client_id is None:
        raise t.error("client_id", "required: set one of client_id, client_id_file, client_id_env")
    secret = _credential(t, "client_secret")
    method = t.choice("client_auth", _CLIENT_AUTHS, default=ProfileConfig.client_auth)
    if method == "private_key_jwt":
        if secret is not None:
            raise t.error(
                next(name for name in CLIENT_SECRET_KEYS if t.has(name)),
                "client_auth = 'private_key_jwt' authenticates with a signed assertion; "
                "remove the client secret: never send two client authentication methods",
            )
        if not t.has("private_key_file"):
            raise t.error("private_key_file", "required by client_auth = 'private_key_jwt'")
    else:
        for name in ASSERTION_KEYS:
            if t.has(name):
                raise t.error(name, "only used with client_auth = 'private_key_jwt'")
        if secret is None:
            raise t.error(
                "client_secret",
                f"client_auth = {method!r} needs a client secret: "
                "set client_secret_file, client_secret_env or client_secret",
            )
    return _ClientAuthentication(
        client_id=client_id,
        client_secret=secret,
        method=cast("ClientAuth", method),
        private_key_file=t.path_value("private_key_file"),
        private_key_kid=t.string("private_key_kid"),
        assertion_alg=t.choice(
            "assertion_alg", ASYMMETRIC_ALGORITHMS, default=ProfileConfig.assertion_alg
        ),
        assertion_audience=t.string("assertion_audience"),
    )


def _extra_params(t: Table) -> MappingProxyType[str, str]:
    params = dict(t.mapping("extra_params"))
    for name, value in params.items():
        if name in RESERVED_PARAMS:
            raise t.error(f"extra_params.{name}", "the sidecar sets this field itself")
        if not isinstance(value, str):
            raise t.error(f"extra_params.{name}", "expected a string")
    return MappingProxyType(params)


def _refresh_before(t: Table, min_ttl: float) -> RefreshBefore:
    value = t.raw("refresh_before")
    if value is None:
        return ProfileConfig.refresh_before
    if isinstance(value, str) and value.endswith("%"):
        match = _PERCENT.fullmatch(value)
        percent = float(match.group(1)) if match else 0.0
        if not 0 < percent < 100:
            raise t.error(
                "refresh_before",
                f'expected a percentage between 0% and 100%, like "20%"; got {value!r}',
            )
        return RefreshShare(percent / 100)
    seconds = t.duration("refresh_before", default=0.0)
    if seconds <= min_ttl:
        raise t.error(
            "refresh_before",
            f"refresh_before ({format_duration(seconds)}) must be above min_ttl "
            f"({format_duration(min_ttl)}): there would be no window to refresh in",
        )
    return RefreshDuration(seconds)


def _verify(t: Table, jwks_url: str | None) -> Verify | None:
    if not t.has("verify"):
        return None  # automatic, decided per token
    mode = t.choice("verify", _VERIFY_MODES, default="")
    if mode == "jwks" and jwks_url is None:
        raise t.error("verify", "verify = 'jwks' needs a JWKS URL: set jwks_url or auth0_domain")
    return cast("Verify", mode)


def _timeouts(t: Table) -> tuple[float, float]:
    total = t.duration("timeout", default=ProfileConfig.timeout)
    # The default connect timeout shrinks with a short total one; only an
    # explicit connect_timeout above timeout is a mistake worth refusing.
    connect = t.duration("connect_timeout", default=min(ProfileConfig.connect_timeout, total))
    if connect > total:
        raise t.error(
            "connect_timeout",
            f"connect_timeout ({format_duration(connect)}) must not exceed "
            f"timeout ({format_duration(total)})",
        )
    return connect, total


def _backoff(t: Table) -> BackoffConfig:
    base = t.duration("base", default=BackoffConfig.base)
    cap = t.duration("cap", default=BackoffConfig.cap)
    if base > cap:
        raise t.error(
            "base", f"base ({format_duration(base)}) must not exceed cap ({format_duration(cap)})"
        )
    return BackoffConfig(base=base, cap=cap)


def _breaker(t: Table) -> BreakerConfig:
    return BreakerConfig(
        failures=t.integer("failures", default=BreakerConfig.failures, minimum=1),
        reset=t.duration("reset", default=BreakerConfig.reset),
    )
