"""Configuration: TOML or environment in, a frozen, validated :class:`Config` out.

Every rule of DESIGN.md "Config" is enforced in this package and nowhere else,
so the rest of the sidecar can trust :class:`Config` blindly. Each failure is a
:class:`~sidecar.errors.ConfigError` that names the source, the dotted key path
(``profiles.go-api.client_auth``) and the problem; messages never echo the
value of a credential. Credential files need not exist yet: they are read at
run time, because Kubernetes may mount a Secret after the sidecar starts.

The package holds one concept per module: ``_model`` (the frozen dataclasses
every other module reads), ``_reader`` (the key-path-tracking table reader and
the value parsers), ``_document`` (a TOML file, the top-level keys,
``[server]``), ``_cache`` (``[cache]``: the backend and how to reach Redis),
``_profile`` (one ``[profiles.NAME]`` table), ``_exchange`` (what a
profile's ``grant`` allows, and the keys of token exchange profiles with
their ``subject`` table), ``_upstream`` (one ``[upstreams.NAME]`` table of
proxy mode), ``_env`` (choosing the source, and the env-only profile),
``_redact`` (the redacted view ``token-sidecar check`` prints), ``_spec``,
``_keys`` and ``_profile_keys`` (every key a file may contain, with its kind,
default and description: the tables the readers accept and
:mod:`sidecar.config.schema` renders as JSON Schema). Import the names from
here.
"""

from sidecar.config._advice import KNOWN_VARIABLES, Advice, advice
from sidecar.config._cache import UrlCredentials, url_credentials
from sidecar.config._document import config_from_mapping, load_config
from sidecar.config._env import config_from_env, resolve_config
from sidecar.config._keys import DOCUMENT_KEYS
from sidecar.config._model import (
    ACCESS_TOKEN_TYPE,
    ASYMMETRIC_ALGORITHMS,
    PROFILE_NAME_PATTERN,
    UPSTREAM_NAME_PATTERN,
    BackoffConfig,
    BreakerConfig,
    CacheBackend,
    CacheConfig,
    ClientAuth,
    Config,
    EnvSecret,
    FileSecret,
    Grant,
    InlineSecret,
    ProfileConfig,
    RefreshBefore,
    RefreshDuration,
    RefreshShare,
    SecretRef,
    ServerConfig,
    SubjectConfig,
    SubjectVerify,
    UpstreamConfig,
    Verify,
    is_loopback_host,
    is_private_address,
)
from sidecar.config._reader import format_duration, format_size, parse_duration, parse_size
from sidecar.config._redact import redacted, url_view
from sidecar.config._spec import Key, KeyTable, NamedTables, Subtable, TomlValue

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "ASYMMETRIC_ALGORITHMS",
    "DOCUMENT_KEYS",
    "KNOWN_VARIABLES",
    "PROFILE_NAME_PATTERN",
    "UPSTREAM_NAME_PATTERN",
    "Advice",
    "BackoffConfig",
    "BreakerConfig",
    "CacheBackend",
    "CacheConfig",
    "ClientAuth",
    "Config",
    "EnvSecret",
    "FileSecret",
    "Grant",
    "InlineSecret",
    "Key",
    "KeyTable",
    "NamedTables",
    "ProfileConfig",
    "RefreshBefore",
    "RefreshDuration",
    "RefreshShare",
    "SecretRef",
    "ServerConfig",
    "SubjectConfig",
    "SubjectVerify",
    "Subtable",
    "TomlValue",
    "UpstreamConfig",
    "UrlCredentials",
    "Verify",
    "advice",
    "config_from_env",
    "config_from_mapping",
    "format_duration",
    "format_size",
    "is_loopback_host",
    "is_private_address",
    "load_config",
    "parse_duration",
    "parse_size",
    "redacted",
    "resolve_config",
    "url_credentials",
    "url_view",
]
