"""The redacted view of a config, as ``token-sidecar check`` prints it.

Inline secrets never appear: they show as ``"[redacted]"``, references show
where the value comes from, and passwords and query strings in URLs are
masked (:func:`url_view`, the one way any URL is shown: logs, ``/status``,
``check``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sidecar.config._model import (
    Config,
    InlineSecret,
    ProfileConfig,
    RefreshBefore,
    RefreshDuration,
    RefreshShare,
    SecretRef,
    SubjectConfig,
    UpstreamConfig,
)
from sidecar.config._reader import format_duration, format_size

_REDACTED = "[redacted]"


def redacted(config: Config) -> dict[str, Any]:
    """The effective config as plain JSON-able data, for ``token-sidecar check``.

    Inline credentials show as ``"[redacted]"`` (an inline client id, which
    is not a secret, is shown); env and file references show where the
    value comes from. Durations are written the way the config writes them.
    """
    server, cache = config.server, config.cache
    return {
        "source": config.source,
        "server": {
            "listen": server.listen,
            "socket": _path_view(server.socket),
            "socket_mode": f"{server.socket_mode:04o}",
            "allow_uids": list(server.allow_uids),
            "ops_listen": server.ops_listen,
            "allow_non_loopback": server.allow_non_loopback,
            "access_log": server.access_log,
            "max_connections": server.max_connections,
            "header_timeout": format_duration(server.header_timeout),
            "keepalive_timeout": format_duration(server.keepalive_timeout),
        },
        "cache": {
            "backend": cache.backend,
            "url": url_view(cache.url),
            "namespace": cache.namespace,
            "key_file": _path_view(cache.key_file),
            "username": cache.username,
            "password_file": _path_view(cache.password_file),
            "ssl_ca_file": _path_view(cache.ssl_ca_file),
            "ssl_certfile": _path_view(cache.ssl_certfile),
            "ssl_keyfile": _path_view(cache.ssl_keyfile),
            "persist_file": _path_view(cache.persist_file),
        },
        "profiles": {name: _profile_view(p) for name, p in config.profiles.items()},
        "upstreams": {name: _upstream_view(u) for name, u in config.upstreams.items()},
    }


def _upstream_view(u: UpstreamConfig) -> dict[str, Any]:
    """An upstream as the config writes it; static header values are shown redacted.

    A ``set_headers`` value may be an API key, so only the names are shown.
    """
    return {
        "base_url": url_view(u.base_url),
        ("exchange" if u.exchange else "profile"): u.profile,
        "header": u.header,
        "set_headers": dict.fromkeys(u.set_headers, _REDACTED),
        "connect_timeout": format_duration(u.connect_timeout),
        "response_timeout": format_duration(u.response_timeout),
        "idle_timeout": format_duration(u.idle_timeout),
        "retry_on_401": u.retry_on_401,
        "retry_body_limit": format_size(u.retry_body_limit),
        "ca_file": _path_view(u.ca_file),
        "client_cert_file": _path_view(u.client_cert_file),
        "client_key_file": _path_view(u.client_key_file),
        "allow_private": u.allow_private,
        "allow_http": u.allow_http,
    }


def _profile_view(p: ProfileConfig) -> dict[str, Any]:
    view: dict[str, Any] = {
        "grant": p.grant,
        "token_url": url_view(p.token_url),
        "issuer": p.issuer,
        "jwks_url": url_view(p.jwks_url) if p.jwks_url else None,
        "client_id": _client_id_view(p.client_id),
        "client_secret": _secret_view(p.client_secret),
        "client_auth": p.client_auth,
    }
    if p.client_auth == "private_key_jwt":
        view["private_key_file"] = _path_view(p.private_key_file)
        view["private_key_kid"] = p.private_key_kid
        view["assertion_alg"] = p.assertion_alg
        view["assertion_audience"] = p.effective_assertion_audience
    view |= {
        "audience": p.audience,
        "resource": p.resource,
        "scope": p.scope,
        "extra_params": dict(p.extra_params),
    }
    if p.exchanges:
        view |= _exchange_view(p)
    else:
        view |= {
            "required": p.required,
            "refresh_before": _refresh_before_view(p.refresh_before),
        }
    view |= {
        "min_ttl": format_duration(p.min_ttl),
        "wait_timeout": format_duration(p.wait_timeout),
        "verify": p.verify or "auto",
        "allow_uids": None if p.allow_uids is None else list(p.allow_uids),
        "connect_timeout": format_duration(p.connect_timeout),
        "timeout": format_duration(p.timeout),
    }
    if not p.exchanges:
        view["backoff"] = {
            "base": format_duration(p.backoff.base),
            "cap": format_duration(p.backoff.cap),
        }
    view["breaker"] = {"failures": p.breaker.failures, "reset": format_duration(p.breaker.reset)}
    return view


def _exchange_view(p: ProfileConfig) -> dict[str, Any]:
    """The keys only an exchange profile has (no secret among them)."""
    view: dict[str, Any] = {}
    if p.grant == "token_exchange":
        view["subject_token_type"] = p.subject_token_type
        view["requested_token_type"] = p.requested_token_type
    view["cache_max_entries"] = p.cache_max_entries
    view["negative_ttl"] = format_duration(p.negative_ttl)
    view["subject"] = _subject_view(p.subject) if p.subject is not None else None
    return view


def _subject_view(s: SubjectConfig) -> dict[str, Any]:
    view: dict[str, Any] = {"verify": s.verify}
    if s.verify == "jwks":
        view |= {
            "issuer": s.issuer,
            "jwks_url": url_view(s.jwks_url) if s.jwks_url else None,
            "audience": s.audience,
        }
    return view | {"leeway": format_duration(s.leeway)}


def _refresh_before_view(before: RefreshBefore) -> str:
    """As the config writes it: ``"5m"`` or ``"20%"``."""
    match before:
        case RefreshDuration(seconds):
            return format_duration(seconds)
        case RefreshShare(share):
            return f"{share * 100:g}%"


def _client_id_view(ref: SecretRef) -> str:
    """An inline client id is not a secret, so it is shown; a reference says where it is."""
    return ref.value if isinstance(ref, InlineSecret) else ref.describe()


def _secret_view(ref: SecretRef | None) -> str | None:
    if ref is None:
        return None
    return _REDACTED if isinstance(ref, InlineSecret) else ref.describe()


def _path_view(path: Path | None) -> str | None:
    return None if path is None else str(path)


def url_view(url: str) -> str:
    """``url`` as it may be shown: password and query string replaced, fragment dropped.

    ``redis://:pw@host/0?password=pw`` shows as ``redis://:[redacted]@host/0?[redacted]``;
    a URL with neither is returned unchanged.
    """
    parts = urlsplit(url)
    shown = url.partition("#")[0]
    if parts.query:
        shown = f"{shown.partition('?')[0]}?{_REDACTED}"
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        shown = shown.replace(parts.netloc, f"{parts.username or ''}:{_REDACTED}@{host}", 1)
    return shown
