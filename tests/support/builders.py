"""Test credentials and profiles pointed at the development IdP, and secret-file swaps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidecar.config import InlineSecret, ProfileConfig, SubjectConfig
from sidecar.devidp import DevIdP

AUDIENCE = "https://api.example.com/"
#: The MCP server's own identifier: the audience of users' tokens in exchange tests.
MCP_AUDIENCE = "https://mcp.example.com/"
CLIENT_ID = "sidecar-test-client"
# Recognisable, so a leak is easy to spot in a failure message.
CLIENT_SECRET = "s3cret-LEAKCANARY-7f1e9a"


def make_profile(idp: DevIdP, name: str = "api", **overrides: Any) -> ProfileConfig:
    """A profile pointed at the development IdP, with inline test credentials."""
    base = idp.base_url
    fields: dict[str, Any] = {
        "name": name,
        "token_url": f"{base}/oauth/token",
        "issuer": idp.issuer,
        "jwks_url": f"{base}/.well-known/jwks.json",
        "client_id": InlineSecret(CLIENT_ID),
        "client_secret": InlineSecret(CLIENT_SECRET),
        "audience": AUDIENCE,
        "scope": "read:tools",
        "timeout": 2.0,
        "connect_timeout": 1.0,
    }
    fields.update(overrides)
    return ProfileConfig(**fields)


def make_exchange_profile(idp: DevIdP, name: str = "user-api", **overrides: Any) -> ProfileConfig:
    """A token exchange profile for the development IdP; users' tokens checked by its JWKS."""
    fields: dict[str, Any] = {
        "grant": "token_exchange",
        "required": False,
        "subject": SubjectConfig(
            issuer=idp.issuer,
            jwks_url=f"{idp.base_url}/.well-known/jwks.json",
            audience=MCP_AUDIENCE,
        ),
        **overrides,
    }
    return make_profile(idp, name, **fields)


def write_secret(path: Path, value: str) -> None:
    """Swap a secret file the way Kubernetes does: write elsewhere, then rename over."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value)
    tmp.replace(path)
