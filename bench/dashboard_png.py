"""Render deploy/grafana/token-sidecar.json from real Prometheus data to a PNG (docs/img/).

Not Grafana (none is installable here): this script runs the dev IdP, a
``serve`` process with a client-credentials profile, an exchange profile, an
upstream and a cold-start file, and a real Prometheus scraping it every
second; drives traffic for ``--duration`` seconds with an IdP outage in the
middle (stale answers, fallbacks, the breaker opening); then evaluates every
panel's queries with ``/api/v1/query_range`` and draws the panels at their
``gridPos`` with matplotlib, in Grafana's dark colours. Stat panels show the
last value with the panel's value mappings and thresholds, like Grafana's.

matplotlib is an optional tool: pip-installed into the bench tools folder
(never the project venv) unless ``--no-install``. Run from the repository
root: ``.venv/bin/python bench/dashboard_png.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from benchlib import HEADERS, ROOT, ensure_pip_tool, start_idp, workdir
from benchlib import profile_toml as bench_profile_toml

from sidecar.devidp import TOKEN_EXCHANGE_GRANT
from sidecar.testing import PrometheusProcess, SidecarProcess, clean_environ

MCP = "https://mcp.example.com/"
DASHBOARD = ROOT / "deploy" / "grafana" / "token-sidecar.json"
SCRAPE = 1.0
BG, PANEL_BG, FG, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLOURS = {"green": "#73bf69", "yellow": "#fade2a", "red": "#f2495c"}
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0"]


def world_toml(idp: Any, api_port: int, wd: Path) -> str:
    key_file = wd / "cache-key"
    key_file.write_bytes(base64.b64encode(os.urandom(32)))
    subject = (
        f'{{ issuer = "{idp.dev.issuer}", jwks_url = "{idp.base_url}/.well-known/jwks.json", '
        f'audience = "{MCP}" }}'
    )
    breaker = "{ failures = 3, reset = " + '"5s" }'
    return (
        f'[cache]\nkey_file = "{key_file}"\npersist_file = "{wd / "tokens"}"\n'
        + bench_profile_toml(idp, "api", timeout='"2s"', breaker=breaker)
        + bench_profile_toml(
            idp, "user-api", grant='"token_exchange"', subject=subject, timeout='"2s"'
        )
        + f'[upstreams.billing]\nbase_url = "http://127.0.0.1:{api_port}"\n'
        'profile = "api"\nallow_http = true\nallow_private = true\n'
    )


async def upstream(runners: list[web.AppRunner]) -> int:
    """A billing API on loopback: 200, and a 502 for one request in 25."""
    count = itertools.count()

    async def answer(_: web.Request) -> web.Response:
        n = next(count)
        await asyncio.sleep(0.01 if n % 3 else 0.04)
        return web.json_response({"ok": True}, status=502 if n % 25 == 0 else 200)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    runners.append(runner)
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return int(runner.addresses[0][1])


async def drive(
    http: aiohttp.ClientSession, sidecar: SidecarProcess, idp: Any, duration: float
) -> None:
    """Callers for ``duration`` seconds; the IdP answers 503 from 35 % to 65 % of it."""
    users = [idp.dev.issue_user_token(f"user{i}", MCP) for i in range(6)]
    start = time.monotonic()
    for tick in itertools.count():
        elapsed = time.monotonic() - start
        if elapsed > duration:
            return
        idp.dev.faults.status = 503 if 0.35 * duration < elapsed < 0.65 * duration else None
        async with http.get(f"{sidecar.url}/v1/token/api", headers=HEADERS) as resp:
            await resp.read()
        async with http.get(f"{sidecar.url}/v1/proxy/billing/invoices", headers=HEADERS) as resp:
            await resp.read()
        if tick % 2 == 0:
            user = (
                users[tick % len(users)] if tick % 20 else idp.dev.issue_user_token(f"n{tick}", MCP)
            )
            body = {"subject_token": user}
            async with http.post(
                f"{sidecar.url}/v1/exchange/user-api", headers=HEADERS, json=body
            ) as resp:
                await resp.read()
        await asyncio.sleep(0.1)


async def collect(
    prometheus: PrometheusProcess, start: float, end: float, span: str
) -> dict[int, list[tuple[dict[str, Any], list[dict[str, Any]]]]]:
    """Every target's range result, by panel id."""
    board = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in board["templating"]["list"] if v["type"] == "query"]
    values = {
        "$__rate_interval": f"{int(4 * SCRAPE)}s",
        "$__interval": f"{int(SCRAPE)}s",
        "$__range": span,
    }
    values |= {f"${name}": ".*" for name in names}
    results: dict[int, list[tuple[dict[str, Any], list[dict[str, Any]]]]] = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name in sorted(values, key=len, reverse=True):
                expr = expr.replace(name, values[name])
            series = await prometheus.query_range(expr, start, end, SCRAPE)
            results.setdefault(panel["id"], []).append((target, series))
    return results


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt).strip()


def render(results: dict[int, Any], out: Path, start: float) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - an optional tool, found only after ensure_pip_tool

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    board = json.loads(DASHBOARD.read_text())
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    unit = 0.42  # inches per grid row
    fig = plt.figure(figsize=(20, height * unit + 0.6), facecolor=BG)
    fig.suptitle(
        "token-sidecar (rendered from real Prometheus data by bench/dashboard_png.py, not Grafana)",
        color=FG,
        fontsize=11,
        x=0.01,
        ha="left",
        y=0.998,
    )
    top = 1 - 0.5 / (height * unit + 0.6)
    for panel in board["panels"]:
        pos = panel["gridPos"]
        margin = 0.004 if panel["type"] in ("row", "stat") else 0.03  # room for the y labels
        box = [
            pos["x"] / 24 + margin,
            top * (1 - (pos["y"] + pos["h"]) / height) + 0.004,
            pos["w"] / 24 - margin - 0.004,
            top * pos["h"] / height - 0.012,
        ]
        if panel["type"] == "row":
            fig.text(
                box[0],
                box[1] + box[3] / 2,
                panel["title"],
                color=FG,
                fontsize=12,
                weight="bold",
                va="center",
            )
            continue
        ax = fig.add_axes(box, facecolor=PANEL_BG)
        ax.set_title(panel["title"], color=FG, fontsize=9, loc="left")
        for spine in ax.spines.values():
            spine.set_color(GRID)
        ax.tick_params(colors=FG, labelsize=7)
        draw_panel(ax, panel, results.get(panel["id"], []), start)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=BG)


def points(series: dict[str, Any], start: float) -> tuple[list[float], list[float]]:
    xs = [float(t) - start for t, _ in series["values"]]
    ys = [float(v) for _, v in series["values"]]
    return xs, ys


def draw_panel(ax: Any, panel: dict[str, Any], results: list[Any], start: float) -> None:
    defaults = panel["fieldConfig"]["defaults"]
    if panel["type"] in ("stat", "bargauge"):
        ax.set_xticks([])
        ax.set_yticks([])
        items = [
            (legend(t["legendFormat"], s["metric"]), float(s["values"][-1][1]))
            for t, ss in results
            for s in ss
        ]
        if panel["type"] == "bargauge":
            items = [(k, v) for k, v in items if v > 0] or items[:1]
            ax.barh([k for k, _ in items], [v for _, v in items], color=PALETTE[2])
            ax.set_yticks(range(len(items)), [k for k, _ in items])
            return
        text, colour = stat_text(items, defaults)
        ax.set_facecolor(colour if panel["options"].get("colorMode") == "background" else PANEL_BG)
        ax.text(
            0.5,
            0.45,
            text,
            color="white",
            fontsize=16 if len(text) < 12 else 11,
            ha="center",
            va="center",
            transform=ax.transAxes,
            weight="bold",
        )
        return
    if panel["type"] == "state-timeline":
        mapping = defaults["mappings"][0]["options"]
        for row, (target, series) in enumerate((t, s) for t, ss in results for s in ss):
            xs, ys = points(series, start)
            for x, y in zip(xs, ys, strict=True):
                colour = COLOURS[mapping[str(int(y))]["color"]]
                ax.barh(row, SCRAPE, left=x, color=colour, height=0.8)
            ax.text(
                0,
                row,
                " " + legend(target["legendFormat"], series["metric"]),
                color="black",
                va="center",
                fontsize=8,
            )
        ax.set_yticks([])
        ax.set_xlabel("seconds", color=FG, fontsize=7)
        return
    colour = iter(PALETTE * 4)
    drawn = [(t, s, *points(s, start)) for t, ss in results for s in ss]
    moving = [d for d in drawn if any(y != 0 and not math.isnan(y) for y in d[3])]
    for target, series, xs, ys in moving or drawn:
        # Series that stay at zero among moving ones are left out: Grafana draws them, the
        # picture stays legible without them.
        ax.plot(
            xs,
            ys,
            color=next(colour),
            linewidth=1.2,
            label=legend(target["legendFormat"], series["metric"]),
        )
    ax.grid(color=GRID, linewidth=0.5)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(
            fontsize=6, facecolor=PANEL_BG, labelcolor=FG, edgecolor=GRID, loc="upper left", ncol=2
        )
    if defaults.get("unit") == "s":
        ax.set_ylabel("s", color=FG, fontsize=7)
    ax.set_xlabel("seconds", color=FG, fontsize=7)


def stat_text(items: list[tuple[str, float]], defaults: dict[str, Any]) -> tuple[str, str]:
    """The value shown and the background colour, from mappings and thresholds."""
    if not items:
        return "No data", PANEL_BG
    name, value = items[0]
    steps = defaults.get("thresholds", {}).get("steps", [{"color": "green"}])
    colour = next(
        s["color"] for s in reversed(steps) if s.get("value") is None or value >= s["value"]
    )
    for mapping in defaults.get("mappings", []):
        mapped = mapping["options"].get(str(int(value)))
        if mapped:
            return mapped["text"], COLOURS[mapped["color"]]
    if defaults.get("unit") == "s":
        return f"{value / 60:.1f} min", COLOURS.get(colour, colour)
    text = f"{value:g}" if len(items) == 1 else f"{name}: {value:g}"
    return text, COLOURS.get(colour, colour)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of traffic")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "grafana-dashboard.png")
    parser.add_argument("--no-install", action="store_true", help="never pip-install matplotlib")
    args = parser.parse_args()
    tools = ensure_pip_tool("matplotlib", install=not args.no_install)
    if tools is None:
        print("matplotlib is not available (run without --no-install)", file=sys.stderr)
        return 1
    sys.path.insert(0, str(tools))
    async with start_idp(lifetime=60) as idp:
        client = next(iter(idp.dev.clients.values()))
        client.grant_types = ("client_credentials", TOKEN_EXCHANGE_GRANT)
        client.subject_audiences = (MCP,)
        runners: list[web.AppRunner] = []
        with workdir() as wd:
            api_port = await upstream(runners)
            sidecar = SidecarProcess(
                wd, world_toml(idp, api_port, wd), env=clean_environ(), cwd=ROOT
            )
            prometheus = PrometheusProcess(wd, [f"127.0.0.1:{sidecar.ops_port}"], interval=SCRAPE)
            try:
                await sidecar.start()
                await sidecar.wait_event("token.refreshed")
                await prometheus.start()
                start = time.time()
                async with aiohttp.ClientSession() as http:
                    await drive(http, sidecar, idp, args.duration)
                await asyncio.sleep(2 * SCRAPE)  # the last scrapes
                end = time.time()
                results = await collect(prometheus, start, end, f"{int(end - start)}s")
            finally:
                await prometheus.stop()
                await sidecar.stop()
                for runner in runners:
                    await runner.cleanup()
    render(results, args.out, start)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
