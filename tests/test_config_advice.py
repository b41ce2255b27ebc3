"""Advice: warnings about configs that load but are probably not what was meant."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

from sidecar.config import Config, ServerConfig, advice
from tests.support.builders import make_profile


def config_of(idp, *, server: ServerConfig | None = None, **overrides) -> Config:
    profile = make_profile(idp, **overrides)
    return Config(
        profiles=MappingProxyType({profile.name: profile}), server=server or ServerConfig()
    )


def events(config: Config, environ=None) -> list[str]:
    return [item.event for item in advice(config, environ or {})]


def test_a_plain_config_gets_no_advice(idp):
    """The test profile on loopback TCP with audience set deserves no warning."""
    assert events(config_of(idp)) == []


def test_allow_uids_beside_tcp_is_advised_and_socket_only_is_not(idp, tmp_path):
    """allow_uids with a TCP listener is bypassable; listen = "" with a socket is not."""
    tcp = ServerConfig(allow_uids=(1000,), socket=tmp_path / "s.sock")
    assert events(config_of(idp, server=tcp)) == ["server.allow_uids_tcp"]
    socket_only = dataclasses.replace(tcp, listen=None)
    assert events(config_of(idp, server=socket_only)) == []
    per_profile = config_of(idp, allow_uids=(1000,))
    assert events(per_profile) == ["server.allow_uids_tcp"]


def test_auth0_profile_without_audience_is_advised(idp):
    """An Auth0 token URL without audience gets a warning; with one, or elsewhere, it does not."""
    auth0 = "https://example.us.auth0.com/oauth/token"
    advised = advice(config_of(idp, token_url=auth0, audience=None), {})
    assert [(a.event, a.fields["profile"]) for a in advised] == [
        ("config.auth0_without_audience", "api")
    ]
    assert events(config_of(idp, token_url=auth0)) == []  # audience is set
    assert events(config_of(idp, audience=None)) == []  # not Auth0


def test_unknown_token_sidecar_variables_are_named_not_shown(idp):
    """A misspelt TOKEN_SIDECAR_ variable is named (never its value); known ones are quiet."""
    environ = {
        "TOKEN_SIDECAR_CLIENT_SECERT": "value-LEAKCANARY",
        "TOKEN_SIDECAR_URL": "http://127.0.0.1:8700",
        "OTHER": "x",
    }
    (item,) = advice(config_of(idp), environ)
    assert item.event == "config.unknown_variables"
    assert item.fields["variables"] == ["TOKEN_SIDECAR_CLIENT_SECERT"]
    assert "LEAKCANARY" not in repr(item)
