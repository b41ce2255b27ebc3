"""The environment as a config source: which source to run with, and the env-only profile.

:func:`resolve_config` picks ``--config``, else the file named by
``TOKEN_SIDECAR_CONFIG``, else the one ``default`` profile that
:func:`config_from_env` builds from ``TOKEN_SIDECAR_*`` variables (Fly.io).
The variables are mapped onto the equivalent TOML keys and validated by
:func:`~sidecar.config._document.config_from_mapping`; errors name the
variable, not the TOML key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.config._document import config_from_mapping, load_config
from sidecar.config._model import Config
from sidecar.errors import ConfigError

_ENV_SOURCE = "environment"
_ENV_CONFIG = "TOKEN_SIDECAR_CONFIG"
_ENV_DOMAIN = "TOKEN_SIDECAR_AUTH0_DOMAIN"
_ENV_TOKEN_URL = "TOKEN_SIDECAR_TOKEN_URL"  # noqa: S105 - a variable name, not a token
_ENV_CLIENT_ID = "TOKEN_SIDECAR_CLIENT_ID"
_ENV_SECRET = "TOKEN_SIDECAR_CLIENT_SECRET"  # noqa: S105 - a variable name, not a secret
_ENV_SECRET_FILE = "TOKEN_SIDECAR_CLIENT_SECRET_FILE"  # noqa: S105 - a variable name
# Key path in the equivalent TOML -> the variable that sets it.
_ENV_KEYS = {
    "profiles.default.auth0_domain": _ENV_DOMAIN,
    "profiles.default.token_url": _ENV_TOKEN_URL,
    "profiles.default.client_id": _ENV_CLIENT_ID,
    "profiles.default.client_secret_file": _ENV_SECRET_FILE,
    "profiles.default.audience": "TOKEN_SIDECAR_AUDIENCE",
    "profiles.default.scope": "TOKEN_SIDECAR_SCOPE",
    "server.listen": "TOKEN_SIDECAR_LISTEN",
    "server.socket": "TOKEN_SIDECAR_SOCKET",
    "server.ops_listen": "TOKEN_SIDECAR_OPS_LISTEN",
    "cache.key_file": "TOKEN_SIDECAR_CACHE_KEY_FILE",
    "cache.persist_file": "TOKEN_SIDECAR_PERSIST_FILE",
}


def config_from_env(environ: Mapping[str, str]) -> Config | None:
    """The single profile ``default`` defined by ``TOKEN_SIDECAR_*`` variables, for Fly.io.

    The client secret stays in the environment: the profile refers to
    ``TOKEN_SIDECAR_CLIENT_SECRET`` by name and never holds its value.

    Returns:
        None when neither ``TOKEN_SIDECAR_AUTH0_DOMAIN`` nor ``TOKEN_SIDECAR_TOKEN_URL`` is set.

    Raises:
        ConfigError: with source ``environment`` and the variable name as key.
    """
    if _ENV_DOMAIN not in environ and _ENV_TOKEN_URL not in environ:
        return None
    _check_env_credentials(environ)
    data: dict[str, Any] = {}
    for key_path, variable in _ENV_KEYS.items():
        if variable in environ:
            *tables, name = key_path.split(".")
            node = data
            for table in tables:
                node = node.setdefault(table, {})
            node[name] = environ[variable]
    if _ENV_SECRET in environ:
        data["profiles"]["default"]["client_secret_env"] = _ENV_SECRET
    try:
        return config_from_mapping(data, source=_ENV_SOURCE)
    except ConfigError as exc:
        raise ConfigError(_ENV_SOURCE, _ENV_KEYS.get(exc.key, exc.key), exc.problem) from exc


def resolve_config(path: str | None, environ: Mapping[str, str]) -> Config:
    """The config to run with: ``--config``, else ``TOKEN_SIDECAR_CONFIG``, else the environment.

    Raises:
        ConfigError: the chosen source is invalid, or there is no source at all.
    """
    if path:
        return load_config(path)
    if environ.get(_ENV_CONFIG):
        return load_config(environ[_ENV_CONFIG])
    config = config_from_env(environ)
    if config is None:
        raise ConfigError(
            _ENV_SOURCE,
            _ENV_CONFIG,
            f"no config: pass --config FILE, set {_ENV_CONFIG}, "
            f"or set {_ENV_DOMAIN}/{_ENV_TOKEN_URL}",
        )
    return config


def _check_env_credentials(environ: Mapping[str, str]) -> None:
    """The env-specific rules, worded in variable names rather than TOML keys."""
    for first, second in ((_ENV_DOMAIN, _ENV_TOKEN_URL), (_ENV_SECRET, _ENV_SECRET_FILE)):
        if first in environ and second in environ:
            raise ConfigError(_ENV_SOURCE, second, f"conflicts with {first}; set only one")
    if _ENV_CLIENT_ID not in environ:
        raise ConfigError(_ENV_SOURCE, _ENV_CLIENT_ID, "required")
    if _ENV_SECRET not in environ and _ENV_SECRET_FILE not in environ:
        raise ConfigError(
            _ENV_SOURCE, _ENV_SECRET, f"required: set {_ENV_SECRET} or {_ENV_SECRET_FILE}"
        )
    if environ.get(_ENV_SECRET) == "":
        raise ConfigError(_ENV_SOURCE, _ENV_SECRET, "must not be empty")
