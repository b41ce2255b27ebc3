"""One ``[upstreams.NAME]`` table: where the proxy may send a token, and how.

Every rule DESIGN.md "Proxy mode" states about an upstream is enforced here:
``base_url`` is https unless ``allow_http`` says otherwise, carries no user
info, query or fragment, and names no literal private address unless
``allow_private`` is set (a host name is checked at connect time, by the
proxy); exactly one of ``profile`` (a client-credentials profile) and
``exchange`` (a token exchange profile: per-user tokens) names a configured
profile; header names are HTTP tokens
the sidecar does not own. :func:`read_upstreams` is called by
:mod:`sidecar.config._document` once the profiles are read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from sidecar.config._keys import HEADER_NAME_PATTERN, UPSTREAM_KEYS
from sidecar.config._model import (
    UPSTREAM_NAME_PATTERN,
    ProfileConfig,
    UpstreamConfig,
    is_private_address,
)
from sidecar.config._reader import Table, format_size

_HEADER_NAME = re.compile(HEADER_NAME_PATTERN)
#: Header names the proxy sets or strips itself, so config may not set them (lowercase).
_OWNED_HEADERS = frozenset(
    {
        *("host", "content-length", "transfer-encoding", "connection", "keep-alive"),
        *("te", "trailer", "upgrade", "expect", "forwarded", "via"),
    }
)
_OWNED_PREFIXES = ("proxy-", "token-sidecar", "x-forwarded-")
#: A buffered body is held in memory per request: this much and no more.
MAX_RETRY_BODY_LIMIT = 16 * 1024 * 1024


def read_upstreams(
    root: Table, profiles: Mapping[str, ProfileConfig]
) -> MappingProxyType[str, UpstreamConfig]:
    """Every ``[upstreams.NAME]`` table of the document, validated against ``profiles``."""
    tables = root.named_tables(
        "upstreams", kind="upstream", pattern=UPSTREAM_NAME_PATTERN, allowed=UPSTREAM_KEYS.names
    )
    return MappingProxyType({name: _upstream(name, table, profiles) for name, table in tables})


def _upstream(name: str, t: Table, profiles: Mapping[str, ProfileConfig]) -> UpstreamConfig:
    allow_http = t.boolean("allow_http", default=UpstreamConfig.allow_http)
    allow_private = t.boolean("allow_private", default=UpstreamConfig.allow_private)
    header = _header_name(t, "header", t.string("header") or UpstreamConfig.header)
    retry_body_limit = t.size("retry_body_limit", default=UpstreamConfig.retry_body_limit)
    if retry_body_limit > MAX_RETRY_BODY_LIMIT:
        raise t.error(
            "retry_body_limit",
            f"must be at most {format_size(MAX_RETRY_BODY_LIMIT)}: "
            "a buffered body is held in memory for every request",
        )
    cert, key = t.path_value("client_cert_file"), t.path_value("client_key_file")
    if (cert is None) != (key is None):
        missing = "client_key_file" if key is None else "client_cert_file"
        raise t.error(missing, "set client_cert_file and client_key_file together")
    profile, exchange = _profile(t, profiles)
    return UpstreamConfig(
        name=name,
        base_url=_base_url(t, allow_http=allow_http, allow_private=allow_private),
        profile=profile,
        exchange=exchange,
        header=header,
        set_headers=_set_headers(t, header),
        connect_timeout=t.duration("connect_timeout", default=UpstreamConfig.connect_timeout),
        response_timeout=t.duration("response_timeout", default=UpstreamConfig.response_timeout),
        idle_timeout=t.duration("idle_timeout", default=UpstreamConfig.idle_timeout),
        retry_on_401=t.boolean("retry_on_401", default=UpstreamConfig.retry_on_401),
        retry_body_limit=retry_body_limit,
        ca_file=t.path_value("ca_file"),
        client_cert_file=cert,
        client_key_file=key,
        allow_private=allow_private,
        allow_http=allow_http,
    )


def _base_url(t: Table, *, allow_http: bool, allow_private: bool) -> str:
    value = t.string("base_url")
    if value is None:
        raise t.error("base_url", "required: the URL proxied requests go to")
    absolute = "expected an absolute http(s) URL"
    if any(c.isspace() or not c.isprintable() for c in value):
        # urlsplit drops tabs and line breaks, so the URL checked would not be the URL used.
        raise t.error("base_url", "must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise t.error("base_url", absolute) from None
    if host is None or parts.scheme not in {"http", "https"}:
        raise t.error("base_url", absolute)
    if parts.scheme == "http" and not allow_http:
        raise t.error(
            "base_url", "plain http sends the token in clear; use https or set allow_http = true"
        )
    if parts.username is not None or parts.password is not None:
        raise t.error("base_url", "must not carry user info: the proxy attaches the credential")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise t.error("base_url", "must not have a query or fragment: the caller's query is used")
    if not allow_private and is_private_address(host):
        raise t.error(
            "base_url",
            f"{host} is a loopback, private, link-local or metadata address; "
            "set allow_private = true if the upstream really lives there",
        )
    return value.rstrip("/")


def _profile(t: Table, profiles: Mapping[str, ProfileConfig]) -> tuple[str, bool]:
    """The profile whose tokens the upstream carries, and whether it exchanges users' tokens."""
    configured = ", ".join(sorted(profiles)) or "none"
    if t.has("exchange"):
        if t.has("profile"):
            raise t.error(
                "exchange",
                "set either profile (one token for every caller) or exchange "
                "(a per-user token), not both",
            )
        name = t.string("exchange")
        if name is None:
            raise t.error("exchange", "expected the name of a token exchange profile")
        if name not in profiles:
            raise t.error("exchange", f"unknown profile {name!r}; configured: {configured}")
        if not profiles[name].exchanges:
            raise t.error(
                "exchange",
                f"profile {name!r} is not a token exchange profile "
                f"(grant = {profiles[name].grant!r}); use profile = {name!r}",
            )
        return name, True
    name = t.string("profile")
    if name is None:
        raise t.error(
            "profile",
            "required: the profile whose token is attached "
            "(or exchange = a token exchange profile, for per-user tokens)",
        )
    if name not in profiles:
        raise t.error("profile", f"unknown profile {name!r}; configured: {configured}")
    if profiles[name].exchanges:
        raise t.error(
            "profile",
            f"profile {name!r} exchanges users' tokens (grant = {profiles[name].grant!r}); "
            f"use exchange = {name!r} for per-user tokens",
        )
    return name, False


def _header_name(t: Table, key: str, name: str) -> str:
    if not _HEADER_NAME.fullmatch(name):
        raise t.error(key, "expected an HTTP header name (letters, digits and !#$%&'*+.^_`|~-)")
    lower = name.lower()
    if lower in _OWNED_HEADERS or lower.startswith(_OWNED_PREFIXES):
        raise t.error(key, f"{name} is set or removed by the proxy itself")
    return name


def _set_headers(t: Table, header: str) -> MappingProxyType[str, str]:
    headers: dict[str, str] = {}
    raw: Mapping[str, Any] = t.mapping("set_headers")
    for name, value in raw.items():
        key = f"set_headers.{name}"
        _header_name(t, key, name)
        if name.lower() in {header.lower(), "authorization"}:
            raise t.error(key, "the credential header is set from the profile's token")
        if not isinstance(value, str):
            raise t.error(key, "expected a string")
        if any(c in value for c in "\r\n\0"):
            raise t.error(key, "must not contain line breaks or NUL")
        headers[name] = value
    return MappingProxyType(headers)
