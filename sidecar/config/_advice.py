"""Advice: valid configurations that are probably not what the operator meant.

A config that loads can still surprise: an ``allow_uids`` list that TCP
bypasses, an Auth0 profile without ``audience`` (Auth0 then answers an opaque
token or refuses), a misspelt ``TOKEN_SIDECAR_*`` variable that is silently
ignored. :func:`advice` names each as a warning event with its fields; the
daemon logs them at start and ``check`` shows them. Fields never hold a
secret value: variables are named, not shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sidecar.config._model import Config

#: Every ``TOKEN_SIDECAR_*`` variable the daemon, the CLI or the client library reads.
KNOWN_VARIABLES = frozenset(
    {
        "TOKEN_SIDECAR_CONFIG",
        "TOKEN_SIDECAR_AUTH0_DOMAIN",
        "TOKEN_SIDECAR_TOKEN_URL",
        "TOKEN_SIDECAR_CLIENT_ID",
        "TOKEN_SIDECAR_CLIENT_SECRET",
        "TOKEN_SIDECAR_CLIENT_SECRET_FILE",
        "TOKEN_SIDECAR_AUDIENCE",
        "TOKEN_SIDECAR_SCOPE",
        "TOKEN_SIDECAR_LISTEN",
        "TOKEN_SIDECAR_SOCKET",
        "TOKEN_SIDECAR_OPS_LISTEN",
        "TOKEN_SIDECAR_CACHE_KEY_FILE",
        "TOKEN_SIDECAR_PERSIST_FILE",
        # Read by deploy/fly/run-with-sidecar.sh (and kept from the MCP server), not the daemon.
        "TOKEN_SIDECAR_CACHE_KEY",
        "TOKEN_SIDECAR_URL",
        "TOKEN_SIDECAR_PROFILE",
    }
)


@dataclass(frozen=True)
class Advice:
    """One warning about a valid config: a dotted event name and its fields."""

    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)


def advice(config: Config, environ: Mapping[str, str]) -> list[Advice]:
    """Every warning ``config`` (and the ``TOKEN_SIDECAR_*`` environment) deserves."""
    found: list[Advice] = []
    server = config.server
    restricted = bool(server.allow_uids) or any(p.allow_uids for p in config.profiles.values())
    if server.listen and restricted:
        found.append(
            Advice(
                "server.allow_uids_tcp",
                {
                    "listen": server.listen,
                    "warning": "allow_uids protects only the Unix socket: any local process "
                    'can read tokens over TCP; set listen = "" to serve on the socket only',
                },
            )
        )
    for name, profile in config.profiles.items():
        host = urlsplit(profile.token_url).hostname or ""
        if host.endswith(".auth0.com") and not profile.audience:
            found.append(
                Advice(
                    "config.auth0_without_audience",
                    {
                        "profile": name,
                        "warning": "Auth0 answers a request without audience with an opaque "
                        "token or a refusal; set audience to the API identifier",
                    },
                )
            )
    unknown = sorted(
        v for v in environ if v.startswith("TOKEN_SIDECAR_") and v not in KNOWN_VARIABLES
    )
    if unknown:
        found.append(
            Advice(
                "config.unknown_variables",
                {"variables": unknown, "warning": "these variables are not read by token-sidecar"},
            )
        )
    return found
