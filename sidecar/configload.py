"""Loading and validating configuration: TOML or environment in, a frozen Config out.

Every rule of DESIGN.md "Config" is enforced here and nowhere else, so the
rest of the sidecar can trust :class:`~sidecar.config.Config` blindly. Each
failure is a :class:`~sidecar.errors.ConfigError` that names the source, the
dotted key path (``profiles.go-api.client_auth``) and the problem; messages
never echo the value of a credential.

This module is the public entry: it picks the source and reads the file.
The work is done in helpers, one concept each: :mod:`sidecar._configread`
(the key-path-tracking table reader and value parsers),
:mod:`sidecar._configmapping` (the document, ``[server]``, ``[cache]``),
:mod:`sidecar._configprofile` (``[profiles.NAME]``), :mod:`sidecar._configenv`
(the env-only profile) and :mod:`sidecar._configview` (the redacted view).

Credential files need not exist yet: they are read at run time, because
Kubernetes may mount a Secret after the sidecar starts.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from sidecar._configenv import (
    _ENV_CONFIG,
    _ENV_DOMAIN,
    _ENV_SOURCE,
    _ENV_TOKEN_URL,
    config_from_env,
)
from sidecar._configmapping import config_from_mapping
from sidecar._configread import format_duration, parse_duration
from sidecar._configview import redacted
from sidecar.config import Config
from sidecar.errors import ConfigError

__all__ = [
    "config_from_env",
    "config_from_mapping",
    "format_duration",
    "load_config",
    "parse_duration",
    "redacted",
    "resolve_config",
]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file.

    Raises:
        ConfigError: the file is missing, unreadable, not TOML, or invalid.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(source, "", "no such file") from exc
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", "not valid UTF-8") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message carries the line and column, never the offending text.
        raise ConfigError(source, "", f"invalid TOML: {exc}") from exc
    return config_from_mapping(data, source=source)


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
