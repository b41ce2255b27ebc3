"""Structured logs: one JSON object per line on stderr, or text for people.

Log calls name a dotted event and pass fields through ``extra``:
``log.info("token.refreshed", extra={"profile": name, "fingerprint": fp})``.
The formatters redact any field named in :data:`SENSITIVE_FIELDS`, so a
careless ``extra={"client_secret": ...}`` can never reach the output.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import orjson
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, RequestKey, StreamResponse

#: Field names whose values are never written, whatever the caller passes.
SENSITIVE_FIELDS = frozenset(
    {
        "access_token",
        "token",
        "client_secret",
        "client_assertion",
        "assertion",
        "authorization",
        "password",
        "secret",
        "private_key",
        "refresh_token",
        "id_token",
        "subject_token",
        "actor_token",
    }
)
REDACTED = "[redacted]"
#: The request key under which the proxy names a request's upstream for the access log.
ACCESS_UPSTREAM = RequestKey("upstream", str)

# Attributes every LogRecord has; anything else came in through ``extra``.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

LogFormat = Literal["json", "text"]


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra`` fields of a record, with sensitive ones redacted."""
    fields: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _RESERVED or key.startswith("_"):
            continue
        fields[key] = REDACTED if key.lower() in SENSITIVE_FIELDS else value
    return fields


class JSONFormatter(logging.Formatter):
    """``{"ts", "level", "event", "profile"?, ...fields}`` via orjson."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(record_fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except TypeError:
            # orjson refuses integers beyond 64 bits: write them as strings, never a broken line.
            return orjson.dumps(_json_safe(entry), default=str).decode()


def _json_safe(value: Any) -> Any:
    """``value`` with every integer orjson cannot write turned into its decimal string."""
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _printable(value: object) -> str:
    """``value`` as text with control characters escaped (``\\n``, ``\\x1b``)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level event key=value ...`` for a terminal.

    Control characters in the event and field values are escaped, so a value
    taken from a request (a path with ``%0A``) cannot forge a second line.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S")
        fields = " ".join(f"{k}={_printable(v)}" for k, v in record_fields(record).items())
        event = _printable(record.getMessage())
        line = f"{ts} {record.levelname.lower():<7} {event} {fields}".rstrip()
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(
    fmt: LogFormat = "json", *, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Send the ``sidecar`` loggers to ``stream`` (stderr) in the chosen format."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    ours = logging.getLogger("sidecar")
    ours.handlers[:] = [handler]
    ours.setLevel(level)
    ours.propagate = False
    # aiohttp's and asyncio's own errors go out in the same format: one JSON
    # object per line on stderr, whoever logs.
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))
    # Access events (opt-in per server) go through the sidecar logger tree.


class AccessLogger(AbstractAccessLogger):
    """``http.access`` events: method, path without query string, status, duration.

    A proxied request also names its upstream (``upstream``).

    Never the query string (it may carry anything), never a header: the
    Authorization header and tokens in bodies cannot reach the log.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        fields = {
            "method": request.method,
            "path": request.rel_url.path,
            "status": response.status,
            "duration_ms": round(time * 1000, 3),
        }
        upstream = request.get(ACCESS_UPSTREAM)
        if upstream is not None:
            fields["upstream"] = upstream
        self.logger.info("http.access", extra=fields)
