"""The grant of a ``[profiles.NAME]`` table, and what an exchange profile adds to it.

A profile's ``grant`` decides which keys make sense: ``client_credentials``
profiles hold one token and refresh it (``refresh_before``, ``required``,
``backoff``); ``token_exchange`` and ``jwt_bearer`` profiles trade users'
tokens per request and hold a per-user cache (``cache_max_entries``,
``negative_ttl``) and the local subject check (``[profiles.NAME.subject]``).
A key of the other kind is refused, naming the grant it belongs to, so a
config never carries a setting that silently does nothing. The keys are
declared in :mod:`sidecar.config._profile_keys`.
:func:`read_grant` and :func:`read_exchange` are called by
:mod:`sidecar.config._profile`.
"""

from __future__ import annotations

from typing import NamedTuple, cast, get_args

from sidecar.config._model import (
    Grant,
    ProfileConfig,
    SubjectConfig,
    SubjectVerify,
)
from sidecar.config._profile_keys import (
    CLIENT_CREDENTIALS_KEYS,
    EXCHANGE_KEYS,
    MAX_CACHE_ENTRIES,
    SUBJECT_KEYS,
    TOKEN_EXCHANGE_KEYS,
)
from sidecar.config._reader import Table, format_duration, read_http_url

_GRANTS: tuple[str, ...] = get_args(Grant)
_SUBJECT_VERIFY: tuple[str, ...] = get_args(SubjectVerify)
#: How long a rejection may be remembered at most: longer would lock a user out for long.
MAX_NEGATIVE_TTL = 3600.0
#: The most clock skew granted on a subject token's ``exp``.
MAX_LEEWAY = 300.0


class ExchangeSettings(NamedTuple):
    """What an exchange profile adds to :class:`ProfileConfig` (defaults for the others)."""

    subject_token_type: str = ProfileConfig.subject_token_type
    requested_token_type: str | None = ProfileConfig.requested_token_type
    cache_max_entries: int = ProfileConfig.cache_max_entries
    negative_ttl: float = ProfileConfig.negative_ttl
    subject: SubjectConfig | None = None


def read_grant(t: Table) -> Grant:
    """The profile's grant; refuses every key the grant does not use."""
    grant = cast("Grant", t.choice("grant", _GRANTS, default=ProfileConfig.grant))
    unused: tuple[str, ...]
    if grant == "client_credentials":
        unused = (*EXCHANGE_KEYS, *TOKEN_EXCHANGE_KEYS)
        owner = "grant = 'token_exchange' or 'jwt_bearer'"
    else:
        unused = CLIENT_CREDENTIALS_KEYS
        owner = "grant = 'client_credentials': per-user tokens are never refreshed or required"
        if grant == "jwt_bearer":
            for name in TOKEN_EXCHANGE_KEYS:
                if t.has(name):
                    raise t.error(name, "only used with grant = 'token_exchange'")
            if t.has("resource"):
                raise t.error(
                    "resource",
                    "grant = 'jwt_bearer' (Entra on-behalf-of) names the API in scope; "
                    "remove resource",
                )
    for name in unused:
        if t.has(name):
            raise t.error(name, f"only used with {owner}")
    return grant


def read_exchange(
    t: Table, grant: Grant, *, issuer: str | None, jwks_url: str | None
) -> ExchangeSettings:
    """The exchange keys of a profile; ``issuer`` and ``jwks_url`` are the profile's own."""
    if grant == "client_credentials":
        return ExchangeSettings()
    if grant == "jwt_bearer" and t.string("scope") is None:
        raise t.error("scope", "required by grant = 'jwt_bearer': the API's scopes to ask for")
    negative_ttl = t.duration("negative_ttl", default=ProfileConfig.negative_ttl, allow_zero=True)
    if negative_ttl > MAX_NEGATIVE_TTL:
        raise t.error(
            "negative_ttl",
            f"must be at most {format_duration(MAX_NEGATIVE_TTL)}: "
            "a rejected user would stay locked out that long",
        )
    return ExchangeSettings(
        subject_token_type=t.string("subject_token_type") or ProfileConfig.subject_token_type,
        requested_token_type=t.string("requested_token_type") or ProfileConfig.requested_token_type,
        cache_max_entries=t.integer(
            "cache_max_entries",
            default=ProfileConfig.cache_max_entries,
            minimum=1,
            maximum=MAX_CACHE_ENTRIES,
        ),
        negative_ttl=negative_ttl,
        subject=_subject(t.table("subject", SUBJECT_KEYS.names), issuer=issuer, jwks_url=jwks_url),
    )


def _subject(s: Table, *, issuer: str | None, jwks_url: str | None) -> SubjectConfig:
    """``[profiles.NAME.subject]``; issuer and JWKS default to the profile's own IdP."""
    verify = cast("SubjectVerify", s.choice("verify", _SUBJECT_VERIFY, default="jwks"))
    leeway = s.duration("leeway", default=0.0, allow_zero=True)
    if leeway > MAX_LEEWAY:
        raise s.error("leeway", f"must be at most {format_duration(MAX_LEEWAY)}")
    if verify == "none":
        for name in ("issuer", "jwks_url", "audience"):
            if s.has(name):
                raise s.error(name, "only used with verify = 'jwks': nothing checks it otherwise")
        return SubjectConfig(verify="none", leeway=leeway)
    keys = read_http_url(s, "jwks_url", "lets anyone on the path swap the signing keys")
    keys = keys or jwks_url
    if keys is None:
        raise s.error(
            "jwks_url",
            "required by verify = 'jwks': where the user tokens' signing keys are "
            "(or set jwks_url or auth0_domain on the profile)",
        )
    expected_issuer = s.string("issuer") or issuer
    if expected_issuer is None:
        raise s.error(
            "issuer",
            "required by verify = 'jwks': the iss of user tokens "
            "(or set issuer or auth0_domain on the profile)",
        )
    audience = s.string("audience")
    if audience is None:
        raise s.error(
            "audience",
            "required by verify = 'jwks': the MCP server's own identifier, "
            "which user tokens must name in aud",
        )
    return SubjectConfig(
        verify="jwks", issuer=expected_issuer, jwks_url=keys, audience=audience, leeway=leeway
    )
