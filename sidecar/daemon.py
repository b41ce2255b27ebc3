"""Daemon: the token service wired to its listeners, its lifecycle, and signal handling.

:class:`Daemon` owns, in start order: one aiohttp client session, the
:class:`~sidecar.service.TokenService`, the token API (loopback TCP and/or a
Unix socket) and the ops API. :meth:`Daemon.aclose` undoes them in reverse:
listeners stop accepting first, in-flight requests get up to
:data:`SHUTDOWN_GRACE` seconds, then refresh tasks and the session close.

Signals: SIGTERM or SIGINT stop the daemon gracefully (a second one forces
exit); SIGHUP reloads the config, keeping the old one if the new is invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web

from sidecar._early_signals import EARLY_SIGHUP
from sidecar.clock import Clock, cancel_and_wait
from sidecar.config import Config, ServerConfig, advice, is_loopback_host
from sidecar.errors import ConfigError, ListenError
from sidecar.listeners import LimitedRunner, ListenerLimits, raise_descriptor_limit
from sidecar.logs import AccessLogger
from sidecar.metrics import Metrics
from sidecar.ops_api import make_ops_app
from sidecar.responses import edge_error_response
from sidecar.service import TokenService
from sidecar.token_api import answer_unrouted, make_token_app

log = logging.getLogger("sidecar.daemon")

#: How long in-flight requests may run after a stop signal.
SHUTDOWN_GRACE = 5.0
#: When proxied streams still open at shutdown are cut, so the exit stays within the grace.
STREAM_CUT_AFTER = SHUTDOWN_GRACE * 0.9

ConfigLoader = Callable[[], Config]


def split_host_port(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8700"`` or ``"[::1]:8700"`` to ``(host, port)``."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def prepare_socket_path(path: Path) -> None:
    """Make ``path`` free for a new Unix socket, removing only a dead socket.

    A live socket means another sidecar is serving there: refuse. Anything
    that is not a socket is never deleted.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ListenError(f"{path}: {exc.strerror}") from None
        path.unlink(missing_ok=True)  # a socket nobody listens on: left by a crash
    else:
        raise ListenError(f"{path}: another process is serving on this socket")
    finally:
        probe.close()


class Daemon:
    """One running token-sidecar: listeners, service and signal handling."""

    def __init__(
        self,
        config: Config,
        *,
        reload_config: ConfigLoader | None = None,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self._reload_config = reload_config
        self._clock = clock
        self._environ = environ
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self.service: TokenService | None = None
        self._runners: list[web.AppRunner] = []
        self._limits = ListenerLimits()
        self._socket_path: Path | None = None
        self._stop = asyncio.Event()
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False
        self.addresses: dict[str, str] = {}

    async def start(self) -> None:
        """Open the session, start refreshing, and open every listener."""
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": "token-sidecar"}, raise_for_status=False
        )
        try:
            self.service = TokenService(
                self.config,
                self._session,
                clock=self._clock,
                environ=self._environ,
                metrics=self._metrics,
            )
        except BaseException:
            await self._session.close()
            raise
        self.service.start()
        self._limits = _listener_limits(self.config.server)
        try:
            await self._open_token_api(self.config.server)
            await self._open_ops_api(self.config.server)
        except OSError as exc:
            await self.aclose()
            raise ListenError(f"cannot listen: {exc.strerror or exc}") from None
        except ListenError:
            await self.aclose()
            raise
        log.info(
            "sidecar.started",
            extra={"listen": self.addresses, "profiles": sorted(self.config.profiles)},
        )

    async def _open_token_api(self, server: ServerConfig) -> None:
        assert self.service is not None  # noqa: S101 - start() created it
        if server.listen and not is_loopback_host(split_host_port(server.listen)[0]):
            log.warning(
                "server.non_loopback",
                extra={
                    "listen": server.listen,
                    "warning": "the token API is reachable from other hosts: anyone who can "
                    "connect gets tokens; restrict it with a network policy",
                },
            )
        warn_about(self.config, os.environ if self._environ is None else self._environ)
        app = make_token_app(self.service, server)
        runner = LimitedRunner(
            app,
            name="token",
            limits=self._limits,
            error_answer=edge_error_response,
            unrouted=answer_unrouted,
            shutdown_timeout=SHUTDOWN_GRACE,
            access_log=logging.getLogger("sidecar.access") if server.access_log else None,
            access_log_class=AccessLogger,
            # Proxied bodies pass byte for byte: a gzip upload stays gzip.
            auto_decompress=False,
        )
        await runner.setup()
        self._runners.append(runner)
        if server.listen:
            host, port = split_host_port(server.listen)
            await web.TCPSite(runner, host, port).start()
            self.addresses["token"] = _bound_address(runner, 0)
        if server.socket is not None:
            prepare_socket_path(server.socket)
            # bind() creates the socket with exactly socket_mode: no chmod afterwards,
            # which would follow a symlink swapped in at that path.
            old_umask = os.umask(0o777 & ~server.socket_mode)
            try:
                await web.UnixSite(runner, server.socket).start()
            finally:
                os.umask(old_umask)
            self._socket_path = server.socket
            self.addresses["socket"] = str(server.socket)

    async def _open_ops_api(self, server: ServerConfig) -> None:
        if not server.ops_listen:
            return
        assert self.service is not None  # noqa: S101 - start() created it
        runner = LimitedRunner(
            make_ops_app(self.service),
            name="ops",
            limits=self._limits,
            error_answer=edge_error_response,
            shutdown_timeout=SHUTDOWN_GRACE,
            access_log=None,
        )
        await runner.setup()
        self._runners.append(runner)
        host, port = split_host_port(server.ops_listen)
        await web.TCPSite(runner, host, port).start()
        self.addresses["ops"] = _bound_address(runner, 0)

    async def _cut_proxied_streams(self) -> None:
        """After most of the grace, close the upstream clients: open streams end with them."""
        if self.service is not None:
            await asyncio.sleep(STREAM_CUT_AFTER)  # the real loop's time: a network deadline
            await self.service.upstreams.aclose()

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        """Reload soon; a SIGHUP during a reload runs one more, so the newest file wins."""
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self._reload_until_current(), name="reload")
        else:
            self._reload_again = True

    async def _reload_until_current(self) -> None:
        self._reload_again = True
        while self._reload_again:
            self._reload_again = False
            await self.reload()

    async def reload(self) -> None:
        """Load the config again and apply it; an invalid one is logged and ignored."""
        if self._reload_config is None or self.service is None:
            return
        try:
            config = self._reload_config()
        except ConfigError as exc:
            log.error("config.reload_failed", extra={"error": str(exc)})  # noqa: TRY400 - expected, no traceback
            return
        if config.server != self.config.server or config.cache != self.config.cache:
            log.warning(
                "config.restart_needed",
                extra={"reason": "[server] and [cache] changes apply on restart only"},
            )
        await self.service.reload(config)
        self.config = config

    async def run(self, on_started: Callable[[Daemon], None] | None = None) -> None:
        """Serve until a stop signal, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        with _signal_handlers(loop, self):
            await self.start()
            # Everything built so far (modules, config, apps) lives as long as the
            # process: move it out of the collector's sight, so the collections
            # that requests trigger only walk what requests allocate.
            gc.freeze()
            if EARLY_SIGHUP.take():
                log.info("sidecar.reload_deferred", extra={"reason": "SIGHUP during start-up"})
                self.request_reload()
            if on_started is not None:
                on_started(self)
            await self._stop.wait()
            log.info("sidecar.stopping", extra={"grace_seconds": SHUTDOWN_GRACE})
            await self.aclose()
        log.info("sidecar.stopped")

    async def aclose(self) -> None:
        """Stop listeners (in-flight requests finish), then refreshes, then the session."""
        if self.service is not None:
            self.service.begin_shutdown()
        await cancel_and_wait(self._reloading, SHUTDOWN_GRACE)
        runners, self._runners = self._runners, []
        # Proxied streams (SSE) end only when their upstream does: cut them just
        # before the grace is over, so the process exits within it.
        cut = asyncio.create_task(self._cut_proxied_streams(), name="cut-streams")
        try:
            await asyncio.gather(*(r.cleanup() for r in runners))
        finally:
            await cancel_and_wait(cut, SHUTDOWN_GRACE)
        if self._socket_path is not None:
            self._socket_path.unlink(missing_ok=True)
            self._socket_path = None
        if self.service is not None:
            await self.service.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None


def warn_about(config: Config, environ: Mapping[str, str]) -> None:
    """Log each :func:`~sidecar.config.advice` warning of ``config`` (at start; ``check`` too)."""
    for item in advice(config, environ):
        log.warning(item.event, extra=dict(item.fields))


def _listener_limits(server: ServerConfig) -> ListenerLimits:
    """The configured limits, after raising the descriptor limit; lowered to fit it if need be."""
    before, soft = raise_descriptor_limit()
    log.info("server.descriptor_limit", extra={"soft_before": before, "soft": soft})
    configured = ListenerLimits(
        server.max_connections, server.header_timeout, server.keepalive_timeout
    )
    listeners = sum(1 for on in (server.listen, server.socket, server.ops_listen) if on)
    fitted = configured.within_descriptors(soft, listeners)
    if fitted.max_connections < configured.max_connections:
        log.warning(
            "server.max_connections_lowered",
            extra={
                "max_connections": fitted.max_connections,
                "configured": configured.max_connections,
                "descriptor_limit": soft,
            },
        )
    return fitted


def _bound_address(runner: web.AppRunner, index: int) -> str:
    """The real address of a runner's listener (port 0 resolved), for logs and tests."""
    sockets = runner.addresses
    addr = sockets[index] if index < len(sockets) else sockets[-1]
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(addr)


@contextlib.contextmanager
def _signal_handlers(loop: asyncio.AbstractEventLoop, daemon: Daemon) -> Iterator[None]:
    """Route SIGTERM/SIGINT to a graceful stop (twice: force) and SIGHUP to reload."""
    stops = 0

    def on_stop() -> None:
        nonlocal stops
        stops += 1
        if stops > 1:
            log.warning("sidecar.forced_exit")
            os._exit(1)
        daemon.request_stop()

    installed = []
    for sig, handler in (
        (signal.SIGTERM, on_stop),
        (signal.SIGINT, on_stop),
        (signal.SIGHUP, daemon.request_reload),
    ):
        loop.add_signal_handler(sig, handler)
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
