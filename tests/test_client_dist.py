"""The client distribution, token-sidecar-client (client/pyproject.toml), as a user installs it.

Its wheel is built from this checkout and installed into a fresh venv with
nothing but its declared dependencies, from the package index as any user
gets them. In that venv the package imports without httpx or httpx2, exports
exactly its names, and pulls in none of the daemon's dependencies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import sidecar
import token_sidecar_client

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "client"

#: Every distribution the client may bring into an MCP server's environment:
#: itself, aiohttp and aiohttp's own dependencies. A new one fails the test on
#: purpose: the client is meant to stay small.
ALLOWED = {
    "token-sidecar-client",
    "aiohttp",
    "aiohappyeyeballs",
    "aiosignal",
    "attrs",
    "frozenlist",
    "idna",
    "multidict",
    "propcache",
    "typing-extensions",
    "yarl",
}
#: What the daemon needs and the client must not.
DAEMON_ONLY = {"redis", "prometheus-client", "cryptography", "pyjwt", "orjson"}

PROBE = """
import importlib.metadata as md, json, sys
import token_sidecar_client as t
try:
    t.SidecarAuth(t.TokenClient("http://127.0.0.1:8700", profile="api"))
except ImportError as exc:
    refused = str(exc)
print(json.dumps({
    "file": t.__file__,
    "all": t.__all__,
    "version": t.__version__,
    "http_libraries": sorted({"httpx", "httpx2"} & set(sys.modules)),
    "refused": refused,
    "distributions": sorted(d.metadata["Name"].lower().replace("_", "-")
                            for d in md.distributions()),
}))
"""


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    return subprocess.run(  # noqa: S603 - fixed argv, no shell
        argv, capture_output=True, text=True, timeout=120, check=False, env=env, cwd=cwd
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The client's wheel, built from client/ as a release would build it."""
    out = tmp_path_factory.mktemp("wheels")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(CLIENT)])
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (path,) = out.glob("token_sidecar_client-*.whl")
    return Path(path)


@pytest.fixture(scope="module")
def probe(wheel, tmp_path_factory) -> dict[str, Any]:
    """What the package reports about itself in a fresh venv holding the wheel and its deps."""
    venv = tmp_path_factory.mktemp("venv")
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    installed = _run([*pip, str(wheel)])
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    # Run from the venv's directory: nothing of this checkout is importable there.
    result = _run([str(python), "-I", "-c", PROBE], cwd=venv)
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    assert str(answer["file"]).startswith(str(venv)), answer["file"]
    return answer


def test_wheel_declares_aiohttp_alone_and_the_two_extras(wheel):
    """The wheel's metadata: aiohttp as the one dependency, httpx and httpx2 as extras."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
        packaged = {
            n.removeprefix("token_sidecar_client/")
            for n in archive.namelist()
            if n.startswith("token_sidecar_client/")
        }
    requires = sorted(line for line in metadata.splitlines() if line.startswith("Requires-Dist:"))
    assert requires == [
        "Requires-Dist: aiohttp>=3.12",
        "Requires-Dist: httpx2>=2.10; extra == 'httpx2'",
        "Requires-Dist: httpx>=0.27; extra == 'httpx'",
    ]
    assert f"Version: {sidecar.__version__}" in metadata
    source = Path(token_sidecar_client.__file__).parent
    assert packaged == {p.name for p in source.iterdir() if p.is_file()}
    assert {"py.typed", "_httpx.py", "_aiohttp.py"} <= packaged


def test_installs_with_only_its_declared_dependencies(probe):
    """A fresh venv gets aiohttp and its own dependencies, and nothing of the daemon's."""
    distributions = set(probe["distributions"])
    assert "token-sidecar-client" in distributions
    assert "aiohttp" in distributions
    assert distributions <= ALLOWED, distributions - ALLOWED
    assert not distributions & DAEMON_ONLY


def test_imports_without_httpx_or_httpx2(probe):
    """Without the extras the package imports; SidecarAuth says which extra it needs."""
    assert probe["http_libraries"] == []
    assert probe["refused"] == (
        "SidecarAuth needs httpx2 or httpx: pip install 'token-sidecar-client[httpx2]'"
    )


def test_installed_package_exports_the_pinned_names(probe):
    """The installed copy exports exactly the names of this checkout, at the daemon's version."""
    assert probe["all"] == [
        "SidecarAuth",
        "SidecarError",
        "Token",
        "TokenClient",
        "__version__",
        "sidecar_middleware",
    ]
    assert probe["version"] == sidecar.__version__
