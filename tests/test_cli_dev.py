"""`token-sidecar dev --idp-only`: the development IdP alone, and a config `serve` runs with."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from sidecar.cli import build_parser
from sidecar.cli._defaults import IDP_ONLY_PORT
from sidecar.cli.dev import DEMO_AUDIENCE, DEMO_CLIENT_ID
from sidecar.config.schema import schema_text
from sidecar.testing import SidecarProcess, clean_environ, free_port
from sidecar.testing._process import START_TIMEOUT
from tests.support.builders import write_secret
from tests.support.config_keys import schema_errors
from tests.support.e2e import HEADERS, get_json, run_cli, wait_ready

pytestmark = pytest.mark.slow


@dataclass
class IdPOnly:
    """A running ``dev --idp-only`` child and what it printed before "Stop with Ctrl-C."."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    @property
    def printed_config(self) -> str:
        """The config block, between "A config for serve ..." and "Try it:"."""
        start = next(i for i, line in enumerate(self.lines) if line.startswith("A config for"))
        end = self.lines.index("Try it:")
        return "\n".join(self.lines[start + 2 : end - 1]) + "\n"

    def value_after(self, label: str) -> str:
        """The word after ``label`` on the line that has it."""
        line = next(line for line in self.lines if label in line)
        return line.partition(label)[2].split()[0]

    async def stop(self) -> tuple[int, str]:
        """SIGINT it; its exit code and everything it wrote to stderr."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(self.proc.communicate(), 10)
        assert self.proc.returncode is not None
        return self.proc.returncode, err.decode()


async def start_idp_only(*args: str) -> IdPOnly:
    """Spawn ``dev --idp-only ARGS`` and read its announcement to the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "dev",
        "--idp-only",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_environ(),
    )
    child = IdPOnly(proc)
    assert proc.stdout is not None
    while not child.lines or child.lines[-1] != "Stop with Ctrl-C.":
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        if not line:
            code, err = await child.stop()
            raise RuntimeError(f"dev --idp-only exited with {code}: {err}")
        child.lines.append(line.decode().rstrip("\n"))
    return child


@pytest.fixture
async def children() -> AsyncIterator[list[IdPOnly | SidecarProcess]]:
    made: list[IdPOnly | SidecarProcess] = []
    yield made
    for child in made:
        if isinstance(child, IdPOnly):
            if child.proc.returncode is None:
                child.proc.kill()
                await child.proc.wait()
        else:
            await child.kill()


async def test_serve_check_sighup_and_rotation_work_with_the_printed_config(
    tmp_path, http, children
):
    """serve runs on the printed config, check --probe passes, SIGHUP and a new secret take."""
    folder = tmp_path / "dev"
    sidecar = SidecarProcess(tmp_path, "")
    children.append(sidecar)
    idp_port = free_port()
    idp = await start_idp_only(
        *("--idp-port", str(idp_port), "--dir", str(folder)),
        *("--port", str(sidecar.port), "--ops-port", str(sidecar.ops_port)),
    )
    children.append(idp)

    printed = idp.printed_config
    config = folder / "config.toml"
    assert printed == config.read_text(encoding="utf-8")
    assert printed.startswith("#:schema ./config.schema.json\n")
    assert (folder / "config.schema.json").read_text(encoding="utf-8") == schema_text()
    assert schema_errors(tomllib.loads(printed)) == []
    assert idp.value_after("Client id: ") == DEMO_CLIENT_ID
    secret_file = folder / "client_secret"
    assert idp.value_after("Client secret: in ") == str(secret_file)
    assert secret_file.stat().st_mode & 0o777 == 0o600

    code, out, err = await run_cli("check", "--config", str(config), "--probe")
    assert code == 0, err
    assert "ok profile demo: token " in out

    # serve with the printed config: SidecarProcess writes the same [server] table.
    sidecar.profiles = "[profiles." + printed.split("\n[profiles.", 1)[1]
    assert tomllib.loads(sidecar.server_toml() + sidecar.profiles) == tomllib.loads(printed)
    await sidecar.start()
    await wait_ready(http, sidecar)
    status, body = await get_json(http, f"{sidecar.url}/v1/token/demo", headers=HEADERS)
    assert (status, body["scope"], body["stale"]) == (200, "read:tools", False)

    # Rotation: the IdP takes only the file's new secret; serve refreshes with it.
    old_secret = secret_file.read_text(encoding="utf-8").strip()
    write_secret(secret_file, "rotated-secret-LEAKCANARY-dev")
    token_url = f"http://127.0.0.1:{idp_port}/oauth/token"
    form = {"grant_type": "client_credentials", "client_id": DEMO_CLIENT_ID}
    form["audience"] = DEMO_AUDIENCE
    assert await _token_status(http, token_url, {**form, "client_secret": old_secret}) == 401
    new = {**form, "client_secret": "rotated-secret-LEAKCANARY-dev"}
    assert await _token_status(http, token_url, new) == 200
    async with http.post(
        f"{sidecar.url}/v1/token/demo/invalidate",
        json={"access_token": body["access_token"]},
        headers=HEADERS,
    ) as resp:
        rotated = await resp.json()
    assert (resp.status, rotated["result"], rotated["stale"]) == (200, "refreshed", False)
    assert rotated["access_token"] != body["access_token"]

    # SIGHUP: a wider scope in the config is a new identity, fetched at once.
    sidecar.write_config(sidecar.profiles.replace('"read:tools"', '"read:tools write:tools"'))
    sidecar.send_signal(signal.SIGHUP)
    await sidecar.wait_event("config.reloaded")
    status, body = await get_json(http, f"{sidecar.url}/v1/token/demo", headers=HEADERS)
    assert (status, body["scope"]) == (200, "read:tools write:tools")

    assert await sidecar.stop() == 0
    code, idp_err = await idp.stop()
    assert code == 0
    said = "\n".join(idp.lines) + idp_err + sidecar.stderr.decode() + out + err
    assert old_secret not in said
    assert "rotated-secret-LEAKCANARY-dev" not in said
    assert folder.exists()  # a given --dir is kept


async def _token_status(http: aiohttp.ClientSession, url: str, form: dict[str, str]) -> int:
    async with http.post(url, data=form) as resp:
        return resp.status


async def test_a_restart_keeps_the_secret_and_a_temp_dir_goes_at_exit(tmp_path, children):
    """The secret in --dir survives a restart; without --dir the temp directory is removed."""
    folder = tmp_path / "dev"
    first = await start_idp_only("--idp-port", str(free_port()), "--dir", str(folder))
    children.append(first)
    secret = (folder / "client_secret").read_text(encoding="utf-8")
    assert len(secret.strip()) >= 32
    assert (await first.stop())[0] == 0
    again = await start_idp_only("--idp-port", str(free_port()), "--dir", str(folder))
    children.append(again)
    assert (folder / "client_secret").read_text(encoding="utf-8") == secret
    assert (await again.stop())[0] == 0

    temporary = await start_idp_only("--idp-port", str(free_port()))
    children.append(temporary)
    made = Path(temporary.value_after("Client secret: in ")).parent
    assert (made / "config.toml").exists()
    assert (await temporary.stop())[0] == 0
    assert not made.exists()


async def test_dir_files_are_private_and_never_written_through_a_symlink(tmp_path):
    """An existing secret becomes 0600; a symlink planted where a file goes is refused (exit 2)."""
    folder = tmp_path / "dev"
    folder.mkdir()
    args = ("dev", "--idp-only", "--idp-port", str(free_port()), "--dir", str(folder))
    (folder / "client_secret").write_text("kept-secret\n")
    (folder / "client_secret").chmod(0o644)
    elsewhere = tmp_path / "victim"
    elsewhere.write_text("untouched\n")
    elsewhere.chmod(0o644)
    (folder / "config.toml").symlink_to(elsewhere)
    code, _, err = await run_cli(*args)
    assert code == 2, err
    assert f"{folder / 'config.toml'} is a symbolic link" in err
    assert "Traceback" not in err
    assert elsewhere.read_text() == "untouched\n"
    assert (folder / "client_secret").stat().st_mode & 0o777 == 0o600
    assert (folder / "client_secret").read_text() == "kept-secret\n"

    (folder / "config.toml").unlink()
    (folder / "client_secret").unlink()
    (folder / "client_secret").symlink_to(elsewhere)
    code, _, err = await run_cli(*args)
    assert code == 2, err
    assert f"{folder / 'client_secret'} is a symbolic link" in err
    assert elsewhere.read_text() == "untouched\n"
    assert elsewhere.stat().st_mode & 0o777 == 0o644  # not made private through the link


async def test_a_busy_idp_port_and_dir_without_idp_only_are_one_line_errors():
    """A taken --idp-port exits 1 and --dir without --idp-only exits 2, each in one line."""
    import socket  # noqa: PLC0415 - only this test binds a port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = await run_cli("dev", "--idp-only", "--idp-port", str(port))
    assert code == 1
    assert "dev IdP cannot listen" in err
    assert "Traceback" not in err
    code, _, err = await run_cli("dev", "--dir", "some-dir")
    assert (code, err) == (2, "token-sidecar: --dir is only used with --idp-only\n")


def test_the_idp_only_port_is_fixed_and_documented():
    """--idp-only defaults to port 8600, named in --help, README.md and docs/operations.md."""
    assert IDP_ONLY_PORT == 8600
    commands = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    dev = commands.choices["dev"]
    assert "8600 with --idp-only" in " ".join(dev.format_help().split())
    root = Path(__file__).resolve().parent.parent
    for doc in ("README.md", "docs/operations.md"):
        text = (root / doc).read_text(encoding="utf-8")
        assert "dev --idp-only" in text
        assert "8600" in text
