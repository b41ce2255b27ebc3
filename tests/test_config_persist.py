"""`[cache] persist_file`: the rules the loader enforces; bad values end a start with exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import config_from_env, config_from_mapping, redacted
from sidecar.errors import ConfigError
from sidecar.testing import clean_environ

PROFILE = {"token_url": "https://idp.example/oauth/token", "client_id": "a", "client_secret": "s"}


def config_with(cache: dict[str, Any]) -> dict[str, Any]:
    return {"cache": cache, "profiles": {"api": dict(PROFILE)}}


def refusal(cache: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(config_with(cache), source="sidecar.toml")
    assert info.value.source == "sidecar.toml"
    return info.value


def test_persist_file_loads_with_a_key_file_and_an_existing_directory(tmp_path: Path):
    """Positive control: a key file and a file in an existing directory load, for both backends."""
    for backend in ("memory", "redis"):
        config = config_from_mapping(
            config_with(
                {
                    "backend": backend,
                    "key_file": str(tmp_path / "key"),
                    "persist_file": str(tmp_path / "tokens"),
                }
            ),
            source="sidecar.toml",
        )
        assert config.cache.persist_file == tmp_path / "tokens"
        assert config.cache.key_file == tmp_path / "key"


def test_persist_file_is_off_by_default():
    """Without the key nothing is persisted."""
    assert config_from_mapping(config_with({}), source="t").cache.persist_file is None


def test_persist_file_needs_a_key_file(tmp_path: Path):
    """The file holds tokens only encrypted: no key_file, no persist_file."""
    error = refusal({"persist_file": str(tmp_path / "tokens")})
    assert error.key == "cache.persist_file"
    assert error.problem == "needs cache.key_file: tokens are written to the file only encrypted"


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("missing/tokens", "directory {tmp}/missing does not exist"),
        ("plain/tokens", "{tmp}/plain is not a directory"),
        ("dir", "{tmp}/dir is a directory; name a file in it"),
        ("key", "must not be the same file as cache.key_file"),
    ],
)
def test_persist_file_must_be_a_file_in_an_existing_directory(
    tmp_path: Path, where: str, problem: str
):
    """A typo in the path is refused at start, not at the first write minutes later."""
    (tmp_path / "plain").write_text("a file, not a directory")
    (tmp_path / "dir").mkdir()
    error = refusal({"key_file": str(tmp_path / "key"), "persist_file": str(tmp_path / where)})
    assert error.key == "cache.persist_file"
    assert error.problem == problem.format(tmp=tmp_path)


def test_check_shows_the_persist_file(tmp_path: Path):
    """`check` prints where tokens are persisted, next to the key file (a path, not a secret)."""
    data = config_with({"key_file": str(tmp_path / "key"), "persist_file": str(tmp_path / "t")})
    view = redacted(config_from_mapping(data, source="t"))
    assert view["cache"]["persist_file"] == str(tmp_path / "t")
    assert view["cache"]["key_file"] == str(tmp_path / "key")


def test_fly_sets_the_persist_file_and_key_by_environment(tmp_path: Path):
    """The env-only config (Fly.io) names both files with TOKEN_SIDECAR_* variables."""
    environ = {
        "TOKEN_SIDECAR_TOKEN_URL": "https://idp.example/oauth/token",
        "TOKEN_SIDECAR_CLIENT_ID": "a",
        "TOKEN_SIDECAR_CLIENT_SECRET": "s",
        "TOKEN_SIDECAR_CACHE_KEY_FILE": str(tmp_path / "key"),
        "TOKEN_SIDECAR_PERSIST_FILE": str(tmp_path / "tokens"),
    }
    config = config_from_env(environ)
    assert config is not None
    assert config.cache.persist_file == tmp_path / "tokens"
    del environ["TOKEN_SIDECAR_CACHE_KEY_FILE"]
    with pytest.raises(ConfigError) as info:
        config_from_env(environ)
    assert info.value.key == "TOKEN_SIDECAR_PERSIST_FILE"
    assert "needs cache.key_file" in info.value.problem


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        env=clean_environ(),
        timeout=30,
        check=False,
    )


def write_config(tmp_path: Path, cache: str) -> Path:
    path = tmp_path / "sidecar.toml"
    path.write_text(
        f'[server]\nlisten = "127.0.0.1:0"\nops_listen = ""\n[cache]\n{cache}\n'
        '[profiles.api]\ntoken_url = "https://idp.example/oauth/token"\n'
        'client_id = "a"\nclient_secret = "s"\n'
    )
    return path


def test_check_exits_2_naming_file_key_and_problem(tmp_path: Path):
    """`token-sidecar check` on a persist_file without key_file exits 2 and says where and why."""
    path = write_config(tmp_path, f'persist_file = "{tmp_path}/tokens"')
    result = run("check", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}: cache.persist_file: needs cache.key_file" in result.stderr
    # Positive control: with the key file named, the same config checks out.
    path = write_config(
        tmp_path, f'persist_file = "{tmp_path}/tokens"\nkey_file = "{tmp_path}/key"'
    )
    assert run("check", "--config", str(path)).returncode == 0


def test_serve_exits_2_when_the_key_file_cannot_be_read(tmp_path: Path):
    """`serve` reads the key at start: a missing key file ends it with exit 2 on cache.key_file."""
    path = write_config(
        tmp_path, f'persist_file = "{tmp_path}/tokens"\nkey_file = "{tmp_path}/missing-key"'
    )
    result = run("serve", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}: cache.key_file: cannot read {tmp_path}/missing-key" in result.stderr
    assert not (tmp_path / "tokens").exists()
