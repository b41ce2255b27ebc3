"""Log lines: JSON or text, one per line, sensitive fields redacted; the leak scan works."""

from __future__ import annotations

import io
import logging

import orjson

from sidecar.logs import REDACTED, JSONFormatter, TextFormatter, configure_logging
from tests.support.builders import CLIENT_SECRET


def test_json_formatter_redacts_sensitive_fields():
    """A sensitive field name is redacted whatever value a caller passes."""
    record = logging.LogRecord("sidecar.x", logging.INFO, __file__, 1, "token.refreshed", (), None)
    record.profile = "api"
    record.client_secret = CLIENT_SECRET
    record.access_token = "tok"
    record.subject_token = "user-token"
    entry = orjson.loads(JSONFormatter().format(record))
    assert entry["event"] == "token.refreshed"
    assert entry["level"] == "info"
    assert entry["profile"] == "api"
    assert entry["client_secret"] == REDACTED
    assert entry["access_token"] == REDACTED
    assert entry["subject_token"] == REDACTED
    assert set(entry) == {
        *("ts", "level", "event", "profile"),
        *("client_secret", "access_token", "subject_token"),
    }


def test_text_formatter_is_one_line_with_fields():
    """Text logs read as time, level, event and key=value fields."""
    record = logging.LogRecord(
        "sidecar.x", logging.WARNING, __file__, 1, "refresh.failed", (), None
    )
    record.profile = "api"
    record.password = "hunter2"
    line = TextFormatter().format(record)
    assert "warning refresh.failed profile=api password=[redacted]" in line
    assert "hunter2" not in line


def test_configure_logging_writes_json_lines():
    """configure_logging sends sidecar events, and other libraries' warnings, as JSON lines."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("json", stream=stream)
        logging.getLogger("sidecar.test").info("demo.event", extra={"profile": "p"})
        logging.getLogger("aiohttp.server").error("Error handling request")
        logging.getLogger("aiohttp.server").info("not shown below warning")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        logging.getLogger("sidecar").handlers.clear()
        logging.getLogger("sidecar").propagate = True
    events = [orjson.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["demo.event", "Error handling request"]


def test_leak_scan_would_catch_a_leak(leaks, log_output):
    """The autouse leak scan finds a secret that reached a log line."""
    logging.getLogger("sidecar.test").warning("oops", extra={"detail": CLIENT_SECRET})
    leaked = [v for v in leaks.all_values() if v in log_output.getvalue()]
    assert leaked == [CLIENT_SECRET]
    log_output.truncate(0)  # let the real scan at teardown pass


def test_text_formatter_escapes_control_characters():
    """A path with a newline cannot forge a second text log line; plain values are unchanged."""
    record = logging.LogRecord("sidecar.access", logging.INFO, __file__, 1, "http.access", (), None)
    record.path = "/v1/token/x\n17:11:00 error   refresh.failed profile=api\x1b[2J"
    record.method = "GET"
    line = TextFormatter().format(record)
    assert "\n" not in line
    forged = "/v1/token/x\\n17:11:00 error   refresh.failed profile=api\\x1b[2J"
    assert line.endswith(f"http.access path={forged} method=GET")
