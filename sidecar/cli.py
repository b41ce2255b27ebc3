"""The ``token-sidecar`` command line: serve, dev, token, check.

Exit codes: 0 success; 1 a runtime failure (probe failed, port in use,
sidecar unreachable, token unavailable); 2 invalid configuration or usage.
Expected failures print one clear line on stderr, never a traceback.
"""

from __future__ import annotations

from sidecar._early_signals import defer_sighup

# Before the heavy imports below (about a second): a SIGHUP now must not end the process.
defer_sighup()

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import sys
from collections.abc import Sequence

import orjson

from sidecar._version import __version__
from sidecar.config import redacted, resolve_config
from sidecar.daemon import Daemon, warn_if_allow_uids_bypassable
from sidecar.dev import run_dev
from sidecar.errors import ConfigError, ListenError
from sidecar.fetch import fetch_token_command
from sidecar.logs import LogFormat, configure_logging
from sidecar.probe import probe_all

log = logging.getLogger("sidecar.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="token-sidecar",
        description="Keeps OAuth 2.0 client-credentials tokens warm for local MCP servers.",
    )
    parser.add_argument("--version", action="version", version=f"token-sidecar {__version__}")
    _add_log_options(parser, default_format=None, default_level="info")
    # The same options after the command (`serve --log-format text`); SUPPRESS
    # keeps an absent one from overwriting what was given before the command.
    common = argparse.ArgumentParser(add_help=False)
    _add_log_options(common, default_format=argparse.SUPPRESS, default_level=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = functools.partial(commands.add_parser, parents=[common])

    serve = add("serve", help="run the daemon")
    serve.add_argument("--config", help="TOML config file (default: $TOKEN_SIDECAR_CONFIG)")

    dev = add("dev", help="run an embedded development IdP and a sidecar with profile 'demo'")
    dev.add_argument("--port", type=int, default=8700, help="token API port on 127.0.0.1")
    dev.add_argument("--ops-port", type=int, default=9700, help="ops API port on 127.0.0.1")
    dev.add_argument(
        "--token-lifetime", type=int, default=3600, help="seconds each dev token lives"
    )

    token = add("token", help="print a token from a running sidecar")
    token.add_argument("profile")
    where = token.add_mutually_exclusive_group()
    where.add_argument("--url", help="base URL (default: $TOKEN_SIDECAR_URL)")
    where.add_argument("--socket", help="Unix socket path (default: $TOKEN_SIDECAR_SOCKET)")
    token.add_argument("--min-ttl", type=float, default=None, help="seconds the token must live")
    token.add_argument("--json", action="store_true", help="print the whole JSON answer")

    check = add("check", help="validate the config and print it, redacted")
    check.add_argument("--config", help="TOML config file (default: $TOKEN_SIDECAR_CONFIG)")
    check.add_argument(
        "--probe", action="store_true", help="also fetch and verify one token per profile"
    )
    return parser


def _add_log_options(
    parser: argparse.ArgumentParser, *, default_format: str | None, default_level: str
) -> None:
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=default_format,
        help="log line format on stderr (default: json; text for dev)",
    )
    parser.add_argument(
        "--log-level", default=default_level, choices=("debug", "info", "warning", "error")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``token-sidecar`` console script."""
    args = build_parser().parse_args(argv)
    log_format: LogFormat = args.log_format or ("text" if args.command == "dev" else "json")
    configure_logging(log_format, level=getattr(logging, args.log_level.upper()))
    try:
        return _dispatch(args)
    except ConfigError as exc:
        _fail(f"config error: {exc}")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "dev":
        return asyncio.run(
            run_dev(port=args.port, ops_port=args.ops_port, token_lifetime=args.token_lifetime)
        )
    if args.command == "token":
        return asyncio.run(
            fetch_token_command(
                args.profile,
                # A flag on the command line beats both environment defaults.
                url=args.url or (None if args.socket else os.environ.get("TOKEN_SIDECAR_URL")),
                socket=args.socket
                or (None if args.url else os.environ.get("TOKEN_SIDECAR_SOCKET")),
                min_ttl=args.min_ttl,
                as_json=args.json,
            )
        )
    return _check(args.config, probe=args.probe)


def _serve(path: str | None) -> int:

    config = resolve_config(path, os.environ)
    # SIGHUP re-reads the same source the daemon started from.
    source = path or os.environ.get("TOKEN_SIDECAR_CONFIG")
    daemon = Daemon(config, reload_config=lambda: resolve_config(source, os.environ))
    try:
        asyncio.run(daemon.run())
    except ListenError as exc:
        _fail(str(exc))
        return EXIT_FAILURE
    return EXIT_OK


def _check(path: str | None, *, probe: bool) -> int:

    config = resolve_config(path, os.environ)
    sys.stdout.write(orjson.dumps(redacted(config), option=orjson.OPT_INDENT_2).decode() + "\n")
    warn_if_allow_uids_bypassable(config)
    if not probe:
        return EXIT_OK

    results = asyncio.run(probe_all(config))
    for line in results.lines:
        sys.stdout.write(line + "\n")
    return EXIT_OK if results.ok else EXIT_FAILURE


def _fail(message: str) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.write(f"token-sidecar: {message}\n")
