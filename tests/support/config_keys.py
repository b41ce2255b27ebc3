"""Walking the config key tables, placing one value into a valid config, and judging it twice.

Tests of the schema put every declared key, with a good or a bad value, into
one of a few small valid configs (:data:`BASES`) and ask both the loader and
the JSON Schema what they make of it, so a key added to the tables is covered
without a new test.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema

from sidecar.config import (
    DOCUMENT_KEYS,
    Config,
    Key,
    KeyTable,
    NamedTables,
    Subtable,
    TomlValue,
    config_from_mapping,
)
from sidecar.config.schema import config_schema
from sidecar.errors import ConfigError

#: A name in a key path that stands for every ``[profiles.NAME]`` (or upstream) of a config.
ANY_NAME = "*"

_CLIENT = {"client_id": "abc", "client_secret_file": "/run/secrets/client_secret"}
_IDP = "https://idp.example.com"

#: Small valid configs, between them holding every way a table can be written.
BASES: tuple[dict[str, Any], ...] = (
    {
        "profiles": {"a": {"auth0_domain": "example.us.auth0.com", **_CLIENT}},
        "upstreams": {"u": {"base_url": "https://api.example.com/v2", "profile": "a"}},
    },
    {
        "profiles": {
            "t": {
                "token_url": f"{_IDP}/oauth/token",
                "jwks_url": f"{_IDP}/jwks.json",
                "client_id_env": "CLIENT_ID",
                "client_secret": "inline",
            }
        }
    },
    {
        "profiles": {
            "e": {
                "token_url": f"{_IDP}/oauth/token",
                "client_id_file": "/run/secrets/client_id",
                "client_secret_env": "CLIENT_SECRET",
            }
        }
    },
    {
        "profiles": {
            "k": {
                "token_url": f"{_IDP}/oauth/token",
                "client_id": "abc",
                "client_auth": "private_key_jwt",
                "private_key_file": "/run/secrets/key.pem",
            }
        },
        "upstreams": {
            "m": {
                "base_url": "https://api.example.com",
                "profile": "k",
                "client_cert_file": "/run/secrets/tls.crt",
                "client_key_file": "/run/secrets/tls.key",
            }
        },
    },
    {
        "cache": {"url": "rediss://redis.example.com:6380/0"},
        "profiles": {
            "x": {
                "grant": "token_exchange",
                "auth0_domain": "example.us.auth0.com",
                **_CLIENT,
                "audience": "https://api.example.com/",
                "subject": {"audience": "https://mcp.example.com/"},
            }
        },
    },
    {
        "profiles": {
            "j": {
                "grant": "jwt_bearer",
                "token_url": f"{_IDP}/oauth2/v2.0/token",
                "jwks_url": f"{_IDP}/discovery/v2.0/keys",
                "issuer": f"{_IDP}/v2.0",
                "client_id": "abc",
                "client_auth": "private_key_jwt",
                "private_key_file": "/run/secrets/key.pem",
                "scope": "https://api.example.com/.default",
                "subject": {"verify": "none"},
            }
        }
    },
)


@dataclass(frozen=True)
class DeclaredKey:
    """A key of the tables and its path from the document root (``ANY_NAME`` for chosen names)."""

    path: tuple[str, ...]
    key: Key

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def declared_keys(
    table: KeyTable = DOCUMENT_KEYS, path: tuple[str, ...] = ()
) -> Iterator[DeclaredKey]:
    """Every key of ``table`` and of the tables nested in it, depth first."""
    for key in table.keys:
        here = (*path, key.name)
        yield DeclaredKey(here, key)
        if isinstance(key.kind, Subtable):
            yield from declared_keys(key.kind.table, here)
        elif isinstance(key.kind, NamedTables):
            yield from declared_keys(key.kind.table, (*here, ANY_NAME))


def declared_tables(table: KeyTable = DOCUMENT_KEYS) -> Iterator[KeyTable]:
    """``table`` and every table nested in it."""
    yield table
    for key in table.keys:
        if isinstance(key.kind, Subtable | NamedTables):
            yield from declared_tables(key.kind.table)


def placements(path: tuple[str, ...], value: TomlValue) -> Iterator[tuple[dict[str, Any], str]]:
    """Each base with ``value`` set at ``path``, and the concrete dotted path it was set at.

    ``ANY_NAME`` in ``path`` stands for each name the base has there; a table
    on the way that the base lacks is created.
    """
    for base in BASES:
        for concrete in _concrete_paths(base, path):
            data = copy.deepcopy(base)
            node = data
            for part in concrete[:-1]:
                node = node.setdefault(part, {})
            node[concrete[-1]] = copy.deepcopy(value)
            yield data, ".".join(concrete)


def _concrete_paths(data: dict[str, Any], path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    if ANY_NAME not in path:
        yield path
        return
    at = path.index(ANY_NAME)
    names = data
    for part in path[:at]:
        names = names.get(part, {})
    for name in names:
        yield from _concrete_paths(data, (*path[:at], name, *path[at + 1 :]))


def load(data: dict[str, Any]) -> Config:
    """What the loader makes of ``data`` (raises :class:`ConfigError`)."""
    return config_from_mapping(data, source="test.toml")


def loader_error(data: dict[str, Any]) -> ConfigError | None:
    """The loader's refusal of ``data``, or None when it accepts it."""
    try:
        load(data)
    except ConfigError as exc:
        return exc
    return None


_VALIDATOR = jsonschema.Draft7Validator(config_schema())


def schema_errors(data: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
    """The JSON Schema's complaints about ``data`` (empty when it validates)."""
    validator = _VALIDATOR if schema is None else jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(data)
    ]


def key_schema(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """The part of ``schema`` that judges the value at ``path``."""
    node = schema
    for part in path:
        node = node["additionalProperties"] if part == ANY_NAME else node["properties"][part]
    return node


def json_types(node: dict[str, Any]) -> set[str]:
    """The JSON types a (sub)schema admits; none for a key that is refused outright."""
    if "type" in node:
        return {node["type"]}
    if "anyOf" in node:
        return set().union(*(json_types(option) for option in node["anyOf"]))
    if node.get("not") == {}:
        return set()
    raise AssertionError(f"no type in {node}: teach json_types the new kind")
