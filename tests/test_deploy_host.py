"""How a host runs and checks the daemon: the systemd unit, and the image's HEALTHCHECK.

- deploy/systemd/token-sidecar.service: its sandbox directives, its ExecStart
  and ExecReload against the real command line, the example config it is
  shipped with, and ``systemd-analyze verify`` and ``security`` (offline: no
  systemd needs to run here).
- Dockerfile HEALTHCHECK: its command, as written, run against a live sidecar
  and against a port where none listens.

Missing tools skip locally with a reason and fail in CI (``CI`` set).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli import build_parser
from sidecar.config import FileSecret, load_config
from sidecar.testing import free_port
from tests.support.e2e import profile_toml, wait_ready

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "token-sidecar.service"
UNIT_CONFIG = ROOT / "deploy" / "systemd" / "config.toml"
INSTALLED = "/opt/token-sidecar/bin/token-sidecar"
CREDENTIALS = Path("/run/credentials/token-sidecar.service")

pytestmark = pytest.mark.slow


def unit_directives(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> every value given to it, in order (systemd keys may repeat)."""
    directives: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        directives.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return directives


UNIT_DIRECTIVES = unit_directives(UNIT.read_text(encoding="utf-8"))


def one(name: str) -> str:
    (value,) = UNIT_DIRECTIVES[f"Service.{name}"]
    return value


def _tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: {hint}")
        pytest.skip(f"{name} not installed ({hint})")
    return found


# --------------------------------------------------------------------------- the unit, read


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("MemoryMax", "128M"),
        ("RuntimeDirectory", "token-sidecar"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("Type", "exec"),
    ],
)
def test_the_unit_sets_the_sandbox_directive(name: str, value: str):
    """The unit sets each sandboxing and lifecycle directive to the documented value."""
    assert one(name) == value


def test_the_unit_keeps_socket_peer_uids_readable():
    """PrivateUsers is off: in a user namespace every socket peer would read as nobody."""
    assert "Service.PrivateUsers" not in UNIT_DIRECTIVES
    assert "Service.ProtectSystem" in UNIT_DIRECTIVES  # the parser does see [Service] keys


def test_exec_start_uses_flags_the_command_line_has():
    """ExecStart is `token-sidecar serve --config FILE`, parsed by the real argument parser."""
    argv = shlex.split(one("ExecStart"))
    assert argv[0] == INSTALLED
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.config) == ("serve", "/etc/token-sidecar/config.toml")
    with pytest.raises(SystemExit):  # the control: a flag serve does not have is refused
        build_parser().parse_args(["serve", "--configuration", "x"])


def test_the_example_config_loads_and_reads_its_secret_from_a_credential():
    """deploy/systemd/config.toml loads, and each secret file is a LoadCredential of the unit."""
    config = load_config(UNIT_CONFIG)
    loaded = {value.split(":", 1)[0] for value in UNIT_DIRECTIVES["Service.LoadCredential"]}
    secrets = [
        secret
        for profile in config.profiles.values()
        for secret in (profile.client_id, profile.client_secret)
        if isinstance(secret, FileSecret)
    ]
    assert secrets
    for secret in secrets:
        assert secret.path.parent == CREDENTIALS
        assert secret.path.name in loaded
    assert config.server.listen == "127.0.0.1:8700"


# --------------------------------------------------------------------------- systemd-analyze


def _verifiable_unit(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at this venv's command: verify checks it exists."""
    command = shutil.which("token-sidecar", path=str(Path(sys.executable).parent))
    assert command is not None
    unit = tmp_path / "token-sidecar.service"
    body = UNIT.read_text(encoding="utf-8") if text is None else text
    unit.write_text(body.replace(INSTALLED, command), encoding="utf-8")
    return unit


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = _tool("systemd-analyze", "apt-get install systemd (scripts/install-tools does)")
    return subprocess.run(  # noqa: S603 - fixed arguments
        [tool, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path):
    """`systemd-analyze verify` accepts the unit without a warning, and does flag a typo."""
    result = _analyze("verify", str(_verifiable_unit(tmp_path)))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    typo = UNIT.read_text(encoding="utf-8").replace("ProtectSystem=", "ProtectSytem=")
    result = _analyze("verify", str(_verifiable_unit(tmp_path, typo)))
    assert "Unknown key 'ProtectSytem'" in result.stdout + result.stderr


def test_systemd_analyze_security_rates_the_unit_ok(tmp_path):
    """The offline security review rates the unit's exposure at most 2.0 ("OK" or better)."""
    unit = str(_verifiable_unit(tmp_path))
    result = _analyze("security", "--offline=true", "--threshold=20", unit)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match is not None, result.stdout
    assert float(match.group(1)) <= 2.0
    assert match.group(2) in {"SAFE", "OK"}
    bare = "[Service]\nExecStart=" + INSTALLED + " serve\n"
    bare_unit = _verifiable_unit(tmp_path, bare)
    result = _analyze("security", "--offline=true", "--threshold=20", str(bare_unit))
    assert result.returncode != 0  # an unsandboxed unit fails the same threshold


# --------------------------------------------------------------------------- HEALTHCHECK


def _healthcheck_argv() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, an exec-form JSON array."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    (line,) = [li for li in text.splitlines() if li.startswith("HEALTHCHECK ")]
    argv: list[str] = json.loads(line.partition(" CMD ")[2])
    return argv


def _run_healthcheck(ops_address: str) -> subprocess.CompletedProcess[str]:
    argv = _healthcheck_argv()
    assert argv[0] == "python"  # the image's own interpreter: the slim image has no curl
    command = [sys.executable, *(arg.replace("127.0.0.1:9700", ops_address) for arg in argv[1:])]
    return subprocess.run(  # noqa: S603 - the Dockerfile's own command
        command, capture_output=True, text=True, timeout=30, check=False
    )


async def test_the_image_healthcheck_passes_on_a_live_sidecar_and_fails_without_one(
    real_idp, sidecar_factory, http
):
    """The HEALTHCHECK command exits 0 against a live ops port and 1 (unhealthy) against none."""
    assert "127.0.0.1:9700/livez" in " ".join(_healthcheck_argv())
    sidecar = await sidecar_factory(profile_toml(real_idp))
    await wait_ready(http, sidecar)
    healthy = _run_healthcheck(f"127.0.0.1:{sidecar.ops_port}")
    assert healthy.returncode == 0, healthy.stderr
    unhealthy = _run_healthcheck(f"127.0.0.1:{free_port()}")
    assert unhealthy.returncode == 1  # Docker: 1 is unhealthy; 2 is reserved


def test_docs_describe_the_unit_and_the_healthcheck():
    """docs/deploy.md names the unit, its config, the labels and the HEALTHCHECK."""
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    for needle in (
        "deploy/systemd/token-sidecar.service",
        "deploy/systemd/config.toml",
        "LoadCredential",
        "systemctl reload token-sidecar",
        "HEALTHCHECK",
        "org.opencontainers.image.revision",
        "--health-cmd",
    ):
        assert needle in text, needle
