"""The ``token-sidecar`` command line: the parser, ``main``, and ``serve``.

The other commands live one per module: ``token`` (:mod:`sidecar.cli.token`),
``check`` (:mod:`sidecar.cli.check`), ``dev`` (:mod:`sidecar.cli.dev`) and
``status`` (:mod:`sidecar.cli.status`).

Exit codes: 0 success; 1 a runtime failure (probe failed, port in use,
sidecar unreachable, token unavailable); 2 invalid configuration or usage.
``status`` has its own, for scripts that poll: 0 ready, 1 not ready, 2
unreachable.
Expected failures print one clear line on stderr, never a traceback.
"""

from __future__ import annotations

from sidecar._early_signals import defer_sighup

# Before any heavy import (about a second for `serve`): a SIGHUP now must not end the process.
defer_sighup()

import argparse
import asyncio
import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar._version import __version__
from sidecar.cli._defaults import DEFAULT_OPS_URL, IDP_ONLY_PORT
from sidecar.cli._exit import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, fail
from sidecar.errors import ConfigError, ListenError

if TYPE_CHECKING:
    from sidecar.logs import LogFormat

# Each command imports what it needs when it runs: `--version`, `token` and
# `status` start in a fraction of the time `serve` needs (scripts call them often).

log = logging.getLogger("sidecar.cli")


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

    dev = add(
        "dev",
        help="run an embedded development IdP and a sidecar with profiles 'demo' and 'demo-user'",
    )
    dev.add_argument("--port", type=int, default=8700, help="token API port on 127.0.0.1")
    dev.add_argument("--ops-port", type=int, default=9700, help="ops API port on 127.0.0.1")
    dev.add_argument(
        "--idp-port",
        type=int,
        default=None,
        help=f"dev IdP port on 127.0.0.1 (default: any free one; {IDP_ONLY_PORT} with --idp-only)",
    )
    dev.add_argument(
        "--token-lifetime", type=int, default=3600, help="seconds each dev token lives"
    )
    dev.add_argument(
        "--idp-only",
        action="store_true",
        help="run the dev IdP alone and write a config for `serve` (--port, --ops-port go there)",
    )
    dev.add_argument(
        "--dir",
        type=Path,
        help="with --idp-only: where the client secret and the config go (default: a temp dir)",
    )

    token = add(
        "token",
        help="print a token from a running sidecar",
        description="Print a token from a running sidecar. The profile defaults to "
        "$TOKEN_SIDECAR_PROFILE; with neither, exit 2. The sidecar is --url or --socket, "
        "else $TOKEN_SIDECAR_URL, else $TOKEN_SIDECAR_SOCKET, else http://127.0.0.1:8700.",
    )
    token.add_argument(
        "profile",
        nargs="?",
        metavar="PROFILE",
        help="profile name (default: $TOKEN_SIDECAR_PROFILE)",
    )
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

    status = add(
        "status",
        help="show every profile of a running sidecar as a table",
        description="Show every profile of a running sidecar (state, expiry, next refresh, "
        "circuit, fallbacks, last error), read from the ops port's /status. Exit 0 when "
        "ready, 1 when not, 2 when the sidecar cannot be reached.",
    )
    source = status.add_mutually_exclusive_group()
    source.add_argument(
        "--url",
        help=f"ops API base URL (default: from --config's ops_listen, else {DEFAULT_OPS_URL})",
    )
    source.add_argument("--config", help="TOML config file whose ops_listen to ask")
    status.add_argument("--json", action="store_true", help="print /status as JSON")
    status.add_argument("--watch", action="store_true", help="redraw until interrupted")
    status.add_argument(
        "--interval", type=float, default=2.0, help="seconds between redraws (default: 2)"
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
    from sidecar.logs import configure_logging  # noqa: PLC0415 - see the imports above

    log_format: LogFormat = args.log_format or ("text" if args.command == "dev" else "json")
    configure_logging(log_format, level=getattr(logging, args.log_level.upper()))
    try:
        return _dispatch(args)
    except ConfigError as exc:
        fail(f"config error: {exc}")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK


def _dev(args: argparse.Namespace) -> int:
    if args.dir is not None and not args.idp_only:
        fail("--dir is only used with --idp-only")
        return EXIT_CONFIG
    from sidecar.cli.dev import run_dev, run_idp_only  # noqa: PLC0415 - see the imports above

    if args.idp_only:
        return asyncio.run(
            run_idp_only(
                idp_port=IDP_ONLY_PORT if args.idp_port is None else args.idp_port,
                port=args.port,
                ops_port=args.ops_port,
                token_lifetime=args.token_lifetime,
                directory=args.dir,
            )
        )
    return asyncio.run(
        run_dev(
            port=args.port,
            ops_port=args.ops_port,
            idp_port=args.idp_port or 0,
            token_lifetime=args.token_lifetime,
        )
    )


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        return serve(args.config)
    if args.command == "dev":
        return _dev(args)
    if args.command == "token":
        from sidecar.cli.token import run_token  # noqa: PLC0415 - see the imports above

        return run_token(
            args.profile,
            url=args.url,
            socket=args.socket,
            min_ttl=args.min_ttl,
            as_json=args.json,
            environ=os.environ,
        )
    if args.command == "status":
        from sidecar.cli.status import run_status  # noqa: PLC0415 - see the imports above

        return run_status(
            args.url,
            config_path=args.config,
            as_json=args.json,
            watch=args.watch,
            interval=args.interval,
            environ=os.environ,
        )
    from sidecar.cli.check import run_check  # noqa: PLC0415 - see the imports above

    return run_check(args.config, probe=args.probe)


def serve(path: str | None) -> int:
    """``token-sidecar serve``: run the daemon until SIGTERM/SIGINT; SIGHUP reloads."""
    from sidecar.config import resolve_config  # noqa: PLC0415 - see the imports above
    from sidecar.daemon import Daemon  # noqa: PLC0415

    config = resolve_config(path, os.environ)
    # SIGHUP re-reads the same source the daemon started from.
    source = path or os.environ.get("TOKEN_SIDECAR_CONFIG")
    daemon = Daemon(config, reload_config=lambda: resolve_config(source, os.environ))
    try:
        asyncio.run(daemon.run())
    except ListenError as exc:
        fail(str(exc))
        return EXIT_FAILURE
    return EXIT_OK
