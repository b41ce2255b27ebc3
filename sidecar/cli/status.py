"""``token-sidecar status``: a terminal table of every profile, read from ``/status``.

One row per profile: state, how long the held token still lives, when the
next IdP attempt is due, the circuit breaker, the fallbacks served (from
``token_sidecar_fallback_total`` on ``/metrics`` of the same port), and the
last error. ``--json`` prints ``/status`` as it came; ``--watch`` redraws
every ``--interval`` seconds until interrupted.

Exit codes, the first word of every script that polls a sidecar: 0 ready,
1 not ready, 2 unreachable (or an answer that is not the sidecar's
``/status``). ``/status`` never holds a token or a secret, so neither does
anything printed here. Colour only on a terminal, never with ``NO_COLOR``.

``--url`` may name anything, so its answer is untrusted: at most
:data:`MAX_ANSWER_BYTES` are read, and every text from it is printed with
control characters escaped (an answer cannot move the cursor, retitle the
terminal or forge a row).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from sidecar.cli._defaults import DEFAULT_OPS_URL
from sidecar.cli._exit import EXIT_CONFIG, fail
from sidecar.clock import Clock, SystemClock
from sidecar.config import load_config

EXIT_READY: Final = 0
EXIT_NOT_READY: Final = 1
EXIT_UNREACHABLE: Final = 2
#: One fetch of /status (and /metrics), connection included, in seconds.
TIMEOUT: Final = 5.0
#: The longest last-error text shown in a row; /status has the whole of it.
ERROR_WIDTH: Final = 100
#: The most of an answer read: a sidecar's /status or /metrics is a few KiB.
MAX_ANSWER_BYTES: Final = 4 * 1024 * 1024
#: The longest countdown shown as such; anything later is shown as "> 3650d".
MAX_COUNTDOWN: Final = 3650 * 86400

_RESET = "\x1b[0m"
_COLOURS: Final = {
    "ready": "\x1b[32m",  # green
    "refreshing": "\x1b[32m",
    "closed": "\x1b[32m",
    "warming": "\x1b[33m",  # yellow
    "stale": "\x1b[33m",
    "half_open": "\x1b[33m",
    "unavailable": "\x1b[31m",  # red
    "misconfigured": "\x1b[31m",
    "open": "\x1b[31m",
    "NOT READY": "\x1b[1;31m",
    "READY": "\x1b[1;32m",
}
#: Move the cursor home and clear the screen: one redraw of ``--watch`` on a terminal.
_CLEAR: Final = "\x1b[H\x1b[2J"
_COLUMNS: Final = (
    "PROFILE",
    "STATE",
    "EXPIRES IN",
    "NEXT REFRESH",
    "CIRCUIT",
    "FALLBACKS",
    "LAST ERROR",
)


@dataclass(frozen=True)
class Snapshot:
    """What one look at the ops port saw: ``/status``, or why there was none."""

    status: dict[str, Any] | None
    #: Fallbacks served per profile (all reasons); empty when /metrics could not be read.
    fallbacks: dict[str, float] = field(default_factory=dict)
    problem: str | None = None

    @property
    def exit_code(self) -> int:
        if self.status is None:
            return EXIT_UNREACHABLE
        return EXIT_READY if self.status.get("ready") is True else EXIT_NOT_READY


def default_url(config_path: str | None) -> str:
    """The ops URL: from the config's ``ops_listen`` when given, else the default port.

    A wildcard bind (``0.0.0.0``, ``::``) is asked on loopback, where it answers too.

    Raises:
        ConfigError: the config is invalid (``main`` exits 2 naming file and key).
    """
    if not config_path:
        return DEFAULT_OPS_URL
    from sidecar.daemon import split_host_port  # noqa: PLC0415 - the daemon's imports are heavy

    ops_listen = load_config(config_path).server.ops_listen
    if not ops_listen:
        return ""
    host, port = split_host_port(ops_listen)
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run_status(
    url: str | None,
    *,
    config_path: str | None,
    as_json: bool,
    watch: bool,
    interval: float,
    environ: Mapping[str, str],
) -> int:
    """``token-sidecar status``: print the table (or JSON) once, or redraw it until Ctrl-C."""
    if interval <= 0:
        fail("status: --interval must be above 0 seconds")
        return EXIT_CONFIG
    base = url or default_url(config_path)
    if not base:
        fail(f"status: {config_path} has no ops_listen: pass --url")
        return EXIT_CONFIG
    view = StatusView(sys.stdout, colour=use_colour(sys.stdout, environ), as_json=as_json)
    try:
        return asyncio.run(
            show_status(base, view, SystemClock(), interval=interval if watch else None)
        )
    except KeyboardInterrupt:
        return view.last_code


def use_colour(out: TextIO, environ: Mapping[str, str]) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (https://no-color.org)."""
    if environ.get("NO_COLOR"):
        return False
    isatty = getattr(out, "isatty", None)
    return bool(isatty is not None and isatty())


async def show_status(
    url: str,
    view: StatusView,
    clock: Clock,
    *,
    interval: float | None = None,
    iterations: int | None = None,
) -> int:
    """Print one snapshot; with ``interval``, one every ``interval`` seconds of ``clock``.

    ``iterations`` bounds the redraws (None: until cancelled or interrupted).
    Returns the exit code of the last snapshot.
    """
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        drawn = 0
        while True:
            snapshot = await fetch_snapshot(session, url.rstrip("/"))
            view.draw(snapshot, now=clock.time(), redraw=interval is not None)
            drawn += 1
            if interval is None or (iterations is not None and drawn >= iterations):
                return view.last_code
            await clock.sleep(interval)


class _TooLargeError(Exception):
    """An answer longer than :data:`MAX_ANSWER_BYTES`: not a sidecar's."""


async def _read_limited(resp: aiohttp.ClientResponse) -> bytes:
    """The body of ``resp``, refused past :data:`MAX_ANSWER_BYTES` without reading it all."""
    if resp.content_length is not None and resp.content_length > MAX_ANSWER_BYTES:
        raise _TooLargeError
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise _TooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


async def fetch_snapshot(session: aiohttp.ClientSession, base: str) -> Snapshot:
    """Read ``/status`` and the fallback counters; never raises for a sidecar that is away."""
    try:
        async with session.get(f"{base}/status") as resp:
            if resp.status != 200:
                return Snapshot(None, problem=f"{base}/status answered {resp.status}")
            body = await _read_limited(resp)
    except _TooLargeError:
        return Snapshot(None, problem=f"{base}/status answered more than {MAX_ANSWER_BYTES} bytes")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Snapshot(None, problem=f"cannot reach {base}: {_describe(exc)}")
    try:
        status = orjson.loads(body)
    except orjson.JSONDecodeError:
        status = None
    if not isinstance(status, dict) or not isinstance(status.get("profiles"), dict):
        return Snapshot(None, problem=f"{base}/status is not a token-sidecar status answer")
    return Snapshot(status, fallbacks=await _fallbacks(session, base))


async def _fallbacks(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """``token_sidecar_fallback_total`` summed over reasons, per profile; {} if unreadable."""
    try:
        async with session.get(f"{base}/metrics") as resp:
            if resp.status != 200:
                return {}
            text = (await _read_limited(resp)).decode("utf-8")
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError, _TooLargeError):
        return {}  # the table shows "?": the status itself was read
    counts: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "token_sidecar_fallback_total" and math.isfinite(sample.value):
                    profile = sample.labels.get("profile", "")
                    counts[profile] = counts.get(profile, 0.0) + sample.value
    except ValueError:
        return {}  # not an exposition we can parse: shown as unknown, not as zero
    return counts


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT:g}s"
    return str(exc) or type(exc).__name__


class StatusView:
    """Draws snapshots on ``out``: the table, or ``/status`` as JSON; remembers the last code."""

    def __init__(self, out: TextIO, *, colour: bool, as_json: bool) -> None:
        self.out = out
        self.colour = colour
        self.as_json = as_json
        self.last_code = EXIT_UNREACHABLE

    def draw(self, snapshot: Snapshot, *, now: float, redraw: bool) -> None:
        """Write one snapshot; on a terminal a redraw first clears the screen."""
        self.last_code = snapshot.exit_code
        if snapshot.status is None:
            if not redraw:
                # One line on stderr, as every command reports a failure.
                fail(f"status: {printable(snapshot.problem)}")
                return
            text = f"unreachable: {printable(snapshot.problem)}\n"
        elif self.as_json:
            text = orjson.dumps(snapshot.status).decode() + "\n"
        else:
            text = render_table(snapshot, now=now, colour=self.colour)
        if redraw and self.colour:
            text = _CLEAR + text
        elif redraw:
            text += "\n"  # not a terminal (a log file): snapshots one after another
        with contextlib.suppress(BrokenPipeError):
            self.out.write(text)
            self.out.flush()


def render_table(snapshot: Snapshot, *, now: float, colour: bool) -> str:
    """The header line and one row per profile, columns aligned; ``now`` is a UNIX time."""
    status = snapshot.status or {}
    rows = [list(_COLUMNS)]
    for name, entry in sorted(status["profiles"].items()):
        fields = entry if isinstance(entry, dict) else {}
        rows.append([printable(cell) for cell in _row(name, fields, snapshot.fallbacks, now)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = [_header(status, colour)]
    for row in rows:
        cells = [
            _paint(cell.ljust(width), cell, colour) if i in (1, 4) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _header(status: dict[str, Any], colour: bool) -> str:
    ready = "READY" if status.get("ready") is True else "NOT READY"
    cache = status.get("cache")
    cache = cache if isinstance(cache, dict) else {}
    line = f"token-sidecar {printable(status.get('version', '?'))}  {_paint(ready, ready, colour)}"
    line += f"  cache {printable(cache.get('backend', '?'))} {printable(cache.get('state', '?'))}"
    error = cache.get("error")
    if isinstance(error, dict):
        line += f" ({printable(error.get('kind'))}: {printable(error.get('detail'))})"
    return line


def printable(value: object) -> str:
    """``value`` as text with every control or non-printable character escaped (``\\x1b``).

    What the ops URL answered is printed through this: an escape sequence in
    a profile name or an error text is shown, never obeyed by the terminal.
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
        for c in text
    )


def _row(name: str, entry: dict[str, Any], fallbacks: dict[str, float], now: float) -> list[str]:
    circuit = str(entry.get("circuit", "-"))
    if "grant" in entry:
        # An exchange profile holds users' tokens, not one of its own.
        state = f"exchange ({entry.get('entries', 0)} cached)"
        return [name, state, "-", "-", circuit, "-", _last_error(entry)]
    count = fallbacks.get(name)
    return [
        name,
        str(entry.get("state", "?")),
        _until(entry.get("expires_at"), now, past="expired"),
        _until(entry.get("next_refresh_at"), now, past="now"),
        circuit,
        "?" if count is None else str(math.floor(count)),
        _last_error(entry),
    ]


def _last_error(entry: dict[str, Any]) -> str:
    error = entry.get("last_error")
    if not isinstance(error, dict):
        return "-"
    text = ": ".join(str(error[k]) for k in ("kind", "error", "description") if error.get(k))
    if len(text) > ERROR_WIDTH:
        text = text[: ERROR_WIDTH - 3] + "..."
    failures = entry.get("consecutive_failures")
    if failures == 0:
        return f"(recovered) {text}"
    if isinstance(failures, int):
        return f"{text} (x{failures})"
    return text


def _until(at: object, now: float, *, past: str) -> str:
    """``at`` (UNIX seconds) as a countdown from ``now``: ``1h 02m``, ``4m 05s``, ``9s``."""
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at - now):
        return "-"
    left = at - now
    if left <= 0:
        return past
    if left > MAX_COUNTDOWN:
        return f"> {MAX_COUNTDOWN // 86400}d"
    return format_duration(math.floor(left)) if left >= 1 else past


def format_duration(seconds: int) -> str:
    """Whole seconds, as a person reads a countdown: ``2d 03h``, ``1h 02m``, ``4m 05s``, ``9s``."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _paint(text: str, key: str, colour: bool) -> str:
    code = _COLOURS.get(key.strip()) if colour else None
    return f"{code}{text}{_RESET}" if code else text
