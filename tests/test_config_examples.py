"""Every TOML config example the project shows validates against docs/config.schema.json.

Examples are the ```toml blocks of README.md, docs/*.md and the READMEs under
examples/ and deploy/ (indented ones in list items too; a block opening with
``# fly.toml`` is Fly's file, not a config), the *.toml files there, and the
config.toml of the Kubernetes ConfigMap. A block with a ``[profiles.NAME]`` table is a whole
config file: it starts with the ``#:schema`` line TOML editors read, and the
loader must accept it too. Other blocks are fragments (a ``[cache]`` table
alone, an upstream): they are checked against the schema without its
requirement of a profile. Taplo, the engine of the Even Better TOML editor
extension, checks the whole files through their ``#:schema`` line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config.schema import config_schema
from tests.support.config_keys import loader_error, schema_errors

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "docs" / "config.schema.json"
#: The #:schema line; its path is relative to the config file, so it may differ.
_DIRECTIVE = re.compile(r"#:schema (\S*config\.schema\.json)")
#: A ```toml block, also one indented in a list item (its indent is removed).
_BLOCK = re.compile(r"^( *)```toml\n(.*?)^\1```", re.DOTALL | re.MULTILINE)
#: The first line of a block that shows another program's TOML file, not a config.
_OTHER_FILES = ("# fly.toml",)


@dataclass(frozen=True)
class Example:
    """One TOML config example and where it was found."""

    where: str
    text: str

    @property
    def data(self) -> dict[str, Any]:
        return tomllib.loads(self.text)

    @property
    def schema_path(self) -> str | None:
        """The schema named by the #:schema header directive, if there is one."""
        for line in self.text.splitlines():  # a header directive: only comments before it
            if match := _DIRECTIVE.fullmatch(line):
                return match.group(1)
            if line.strip() and not line.startswith("#"):
                break
        return None

    @property
    def whole(self) -> bool:
        """Whether this is a whole config file (it has a profile), not a fragment."""
        return "profiles" in self.data


def _markdown_files() -> list[Path]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("examples", "deploy"):
        found += sorted((ROOT / folder).rglob("*.md"))
    return found


def _dedent(block: str, indent: str) -> str:
    return "".join(line.removeprefix(indent) for line in block.splitlines(keepends=True))


def _examples() -> list[Example]:
    examples = []
    for path in _markdown_files():
        text = path.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            block = _dedent(match.group(2), match.group(1))
            if block.startswith(_OTHER_FILES):
                continue
            line = text.count("\n", 0, match.start()) + 1
            examples.append(Example(f"{path.relative_to(ROOT)}:{line}", block))
    examples += [
        Example(str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
        for folder in ("examples", "deploy")
        for path in sorted((ROOT / folder).rglob("*.toml"))
    ]
    configmap = ROOT / "k8s" / "components" / "token-sidecar" / "configmap.yaml"
    (document,) = yaml.safe_load_all(configmap.read_text(encoding="utf-8"))
    examples.append(Example(str(configmap.relative_to(ROOT)), document["data"]["config.toml"]))
    return examples


EXAMPLES = _examples()
WHOLE = [example for example in EXAMPLES if example.whole]
FRAGMENTS = [example for example in EXAMPLES if not example.whole]
MARKDOWN_WHOLE = [example for example in WHOLE if ".md:" in example.where]


def where(example: Example) -> str:
    return example.where


def test_the_examples_are_found():
    """The collection finds the known whole files and fragments (the control for the rest)."""
    places = {example.where.partition(":")[0] for example in EXAMPLES}
    assert {
        "README.md",
        "docs/configuration.md",
        "k8s/components/token-sidecar/configmap.yaml",
    } <= (places)
    assert len(MARKDOWN_WHOLE) >= 3
    assert FRAGMENTS
    indented = [example for example in EXAMPLES if example.where.startswith("docs/deploy.md:")]
    assert any("rediss://" in example.text for example in indented)  # in a numbered step
    assert not any("[[files]]" in example.text for example in EXAMPLES)  # fly.toml is skipped


@pytest.mark.parametrize("example", WHOLE, ids=where)
def test_a_whole_config_example_validates_and_loads(example: Example):
    """A whole-file example is valid against the schema and accepted by the loader."""
    assert schema_errors(example.data) == []
    error = loader_error(example.data)
    assert error is None, str(error)


@pytest.mark.parametrize("example", MARKDOWN_WHOLE, ids=where)
def test_a_whole_config_example_names_the_schema(example: Example):
    """A whole-file example in the docs opens with the #:schema line TOML editors read."""
    assert example.schema_path is not None
    assert Example("x", "[server]\n" + example.text).schema_path is None  # only in the header


@pytest.mark.parametrize("example", FRAGMENTS, ids=where)
def test_a_config_fragment_validates(example: Example):
    """A fragment (no profile) is valid against the schema less its required [profiles]."""
    schema = {key: value for key, value in config_schema().items() if key != "required"}
    assert schema_errors(example.data, schema) == []
    assert schema_errors({"colour": "red", **example.data}, schema) != []


def _taplo() -> str:
    found = shutil.which("taplo") or shutil.which("taplo", path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("taplo is missing in CI: pip install taplo (the test extra)")
        pytest.skip("taplo not installed (pip install taplo, the test extra)")
    return found


def _taplo_check(taplo: str, folder: Path, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed arguments
        [taplo, "check", *(str(path) for path in files)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "RUST_LOG": "warn", "NO_COLOR": "1"},
    )


def test_taplo_checks_the_examples_through_their_schema_line(tmp_path):
    """Taplo finds the schema through #:schema, passes every docs example, and flags a typo."""
    taplo = _taplo()
    files = []
    for number, example in enumerate(MARKDOWN_WHOLE):
        path = tmp_path / f"example{number}.toml"
        path.write_text(example.text, encoding="utf-8")
        assert example.schema_path is not None
        schema = (tmp_path / example.schema_path).resolve()
        assert schema.is_relative_to(tmp_path)
        schema.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SCHEMA_FILE, schema)
        files.append(path)
    result = _taplo_check(taplo, tmp_path, files)
    assert result.returncode == 0, result.stdout + result.stderr

    typo = tmp_path / "typo.toml"
    typo.write_text(
        MARKDOWN_WHOLE[0].text.replace("client_secret_file", "client_secert_file"),
        encoding="utf-8",
    )
    result = _taplo_check(taplo, tmp_path, [typo])
    assert result.returncode == 1
    assert "'client_secert_file' was unexpected" in result.stdout + result.stderr
