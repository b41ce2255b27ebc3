"""The Grafana dashboard (``deploy/grafana/token-sidecar.json``): importable, and every query works.

The static tests read the JSON: its import shape (``__inputs``, the
``${datasource}`` variable on every panel and target), its layout, and that
every metric and label a query names is one ``docs/metrics.md`` documents.
The live test starts a real Prometheus scraping a ``serve`` process that has
a client-credentials profile, an exchange profile, an upstream and a
cold-start file, makes one token request, one proxied request and one
exchange, and then evaluates every target of every panel (and every
variable's ``label_values``) against Prometheus' own query API.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from sidecar.devidp import TOKEN_EXCHANGE_GRANT
from sidecar.testing import PrometheusProcess, prometheus_binary
from tests.support.e2e import E2E_AUDIENCE, E2E_CLIENT_ID, HEADERS, profile_toml, wait_ready
from tests.support.upstream import TestAPI, runners, serve

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "token-sidecar.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
MCP = "https://mcp.example.com/"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
#: What Grafana puts in for its own variables, for a Prometheus scraping every 0.2 s.
GRAFANA_VARIABLES = {"$__rate_interval": "5s", "$__interval": "1s", "$__range": "1h"}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}
METRIC = re.compile(r"\btoken_sidecar_[a-z_]+")
SELECTOR = re.compile(r"\b(token_sidecar_[a-z_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-z_]+)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"^label_values\((token_sidecar_[a-z_]+),\s*([a-z_]+)\)$")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every target."""
    return [(p["title"], t["expr"]) for p in panels() for t in p["targets"]]


def query_variables() -> dict[str, str]:
    """name -> label_values(...) definition of every query variable."""
    listed = dashboard()["templating"]["list"]
    return {v["name"]: v["query"]["query"] for v in listed if v["type"] == "query"}


def documented_labels() -> dict[str, set[str]]:
    """metric name -> its labels, from the table in docs/metrics.md."""
    table = {}
    for line in METRICS_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[1].startswith("`token_sidecar_"):
            table[cells[1].strip("`")] = set(re.findall(r"`([a-z_]+)`", cells[3]))
    return table


def base_name(sample_name: str, known: dict[str, set[str]]) -> str:
    """The metric family a sample name belongs to (``x_bucket`` -> ``x``)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if sample_name.endswith(suffix) and sample_name.removesuffix(suffix) in known:
            return sample_name.removesuffix(suffix)
    return sample_name


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` as Grafana sends it: its variables and the dashboard's replaced."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace(name, values[name])
    assert "$" not in expr, expr
    return expr


# -- static: the file itself ----------------------------------------------------------


def test_importable_with_a_datasource_variable():
    """__inputs asks for a Prometheus; every panel and target uses the ${datasource} variable."""
    board = dashboard()
    assert board["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": board["__inputs"][0]["description"],
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    variable = board["templating"]["list"][0]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    assert variable["current"]["value"] == "${DS_PROMETHEUS}"
    assert board["uid"] == "token-sidecar"
    assert "id" not in board  # an import creates its own
    assert {r["id"] for r in board["__requires"]} >= {"grafana", "prometheus"} | {
        p["type"] for p in panels()
    }
    for panel in panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    # The positive control of the check above: a literal datasource would be caught.
    assert json.dumps(board).count('"uid": "${datasource}"') == sum(
        1 + len(p["targets"]) for p in panels()
    ) + len(query_variables())


def test_layout_has_no_overlaps_and_unique_ids():
    """Panels fit the 24-column grid without overlapping, and ids are unique."""
    board = dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not mine & cells, panel["title"]
        cells |= mine


def test_covers_every_area_of_the_issue():
    """Panels exist for each thing an operator must see, each in its row."""
    titles = {p["title"] for p in panels()}
    rows = [p["title"] for p in dashboard()["panels"] if p["type"] == "row"]
    assert rows == [
        "Overview",
        "Tokens and refreshes",
        "Token API",
        "Caches",
        "Proxy",
        "Token exchange",
    ]
    assert titles >= {
        "Ready",
        "Token expiry headroom",
        "Refresh results",
        "Fallbacks",
        "Circuit state",
        "Request outcomes",
        "IdP latency",
        "Cache backend",
        "Cold-start file write errors",
        "Proxied requests",
        "Exchanges",
        "Exchange cache lookups",
        "Exchange cache entries",
        "Exchange latency",
    }


def test_every_metric_and_label_is_documented():
    """Each metric a query or variable names, and each label it matches or groups by, exists."""
    known = documented_labels()
    assert "token_sidecar_exchange_cache_entries" in known  # the parse found the table
    exprs = [expr for _, expr in targets()] + list(query_variables().values())
    used: set[str] = set()
    for expr in exprs:
        names = {base_name(n, known) for n in METRIC.findall(expr)}
        assert names, expr
        unknown = names - set(known)
        assert not unknown, f"{expr}: {unknown}"
        used |= names
        for name, matchers in SELECTOR.findall(expr):
            labels = set(MATCHER.findall(matchers))
            allowed = known[base_name(name, known)] | TARGET_LABELS
            assert labels <= allowed, f"{expr}: {labels - allowed}"
        grouped = {g.strip() for group in GROUPING.findall(expr) for g in group.split(",")}
        allowed = set().union(*(known[n] for n in names)) | TARGET_LABELS | {"le"}
        assert grouped <= allowed, f"{expr}: {grouped - allowed}"
    # Positive control: a misspelt label is caught by the same matcher.
    assert set(MATCHER.findall('profil=~"x", result="y"')) - known["token_sidecar_refresh_total"]
    assert used >= {"token_sidecar_ready", "token_sidecar_persist_writes_total"}


# -- live: Prometheus scrapes a sidecar --------------------------------------------------


@pytest.fixture
def prometheus_bin() -> str:
    found = prometheus_binary()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is missing in CI: scripts/install-tools installs it")
        pytest.skip("prometheus not installed (Debian package 'prometheus'; scripts/install-tools)")
    return found


def world_toml(idp, api_port: int, tmp_path: Path) -> str:
    """A profile, an exchange profile, an upstream and a cold-start file, for ``idp``."""
    key_file = tmp_path / "cache-key"
    key_file.write_bytes(base64.b64encode(os.urandom(32)))
    (tmp_path / "state").mkdir()
    subject = (
        f'{{ issuer = "{idp.issuer}", jwks_url = "{idp.base_url}/.well-known/jwks.json", '
        f'audience = "{MCP}" }}'
    )
    return (
        f'[cache]\nkey_file = "{key_file}"\npersist_file = "{tmp_path / "state" / "tokens"}"\n'
        + profile_toml(idp)
        + profile_toml(idp, "user-api", grant='"token_exchange"', subject=subject)
        + "[upstreams.billing]\n"
        f'base_url = "http://127.0.0.1:{api_port}"\n'
        'profile = "api"\nallow_http = true\nallow_private = true\n'
    )


@pytest.mark.slow
async def test_every_query_returns_series_from_a_live_sidecar(
    prometheus_bin, real_idp, sidecar_factory, http, tmp_path
):
    """Prometheus scrapes a live sidecar; every panel's every query evaluates and returns series."""
    client = real_idp.clients[E2E_CLIENT_ID]
    client.grant_types = ("client_credentials", TOKEN_EXCHANGE_GRANT)
    client.subject_audiences = (MCP,)
    async with runners() as made:
        api_port = await serve(TestAPI(real_idp, E2E_AUDIENCE).app(), made)
        sidecar = await sidecar_factory(world_toml(real_idp, api_port, tmp_path))
        await wait_ready(http, sidecar)
        prometheus = PrometheusProcess(tmp_path, [f"127.0.0.1:{sidecar.ops_port}"], interval=0.2)
        try:
            await prometheus.start()
            await traffic(http, sidecar, real_idp)
            await sidecar.wait_event("persist.written")
            # Two scrapes after the traffic: rate() and increase() see the new series move.
            await prometheus.wait_for(
                'count_over_time(token_sidecar_proxy_requests_total{code="2xx"}[5s]) >= 2'
            )
            await check_every_query(prometheus, sidecar.ops_port)
        finally:
            await prometheus.stop()


async def traffic(http, sidecar, idp) -> None:
    """One token request, one proxied request and one exchange, each answered 200."""
    async with http.get(f"{sidecar.url}/v1/token/api", headers=HEADERS) as resp:
        assert resp.status == 200
    async with http.get(f"{sidecar.url}/v1/proxy/billing/tool", headers=HEADERS) as resp:
        assert resp.status == 200
    user = idp.issue_user_token("alice", MCP)
    async with http.post(
        f"{sidecar.url}/v1/exchange/user-api", headers=HEADERS, json={"subject_token": user}
    ) as resp:
        assert resp.status == 200, await resp.text()


async def check_every_query(prometheus: PrometheusProcess, ops_port: int) -> None:
    expected = {
        "instance": f"127.0.0.1:{ops_port}",
        "profile": "api",
        "exchange_profile": "user-api",
        "upstream": "billing",
    }
    found: dict[str, list[str]] = {}
    for name, definition in query_variables().items():
        match = LABEL_VALUES.match(definition)
        assert match is not None, definition
        found[name] = await prometheus.label_values(match[2], match[1])
        assert expected[name] in found[name], (name, found[name])
    all_values = {f"${name}": ".*" for name in found}  # "All" is the variables' allValue
    chosen = {f"${name}": "(" + "|".join(values) + ")" for name, values in found.items()}
    empty = []
    for title, expr in targets():
        for values in (all_values, chosen):
            query = substitute(expr, {**GRAFANA_VARIABLES, **values})
            series = await prometheus.query(query)  # raises on an error from Prometheus
            if not series:
                empty.append((title, query))
    assert not empty, empty
    # The positive control: a query for a metric the sidecar does not export is empty.
    assert await prometheus.query("token_sidecar_no_such_metric") == []
