"""The framework ceiling: a minimal aiohttp handler that returns fixed token-shaped bytes.

Started by ``throughput.py`` as a child process. It answers
``GET /v1/token/{profile}`` with the body and headers the sidecar sends
(``Cache-Control: no-store``, ``Pragma: no-cache``, JSON) but does nothing
else: no guards, no metrics, no clock, no JSON encoding per request. The
sidecar's throughput divided by this one's is the share of the framework's
ceiling the sidecar reaches. ``POST /v1/exchange/{profile}`` reads the
request body and answers the same bytes: what a POST alone costs the
framework (``callgrind_proxy.py --what exchange``).

Usage: ``python bench/ceiling.py --port N [--socket PATH] --body-file F [--uvloop]``;
prints ``ready`` on stdout once listening, stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web


def make_app(body: bytes) -> web.Application:
    """The ceiling app: one route, one constant answer."""
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}

    async def token(_request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers, content_type="application/json")

    async def exchange(request: web.Request) -> web.Response:
        await request.read()  # the framework's part of a POST: its body read
        return web.Response(body=body, headers=headers, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/token/{profile}", token, allow_head=False)
    app.router.add_post("/v1/exchange/{profile}", exchange)
    return app


async def serve(port: int, socket_path: str | None, body: bytes) -> None:
    runner = web.AppRunner(make_app(body), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    if socket_path:
        Path(socket_path).unlink(missing_ok=True)  # noqa: ASYNC240 - once, at start
        await web.UnixSite(runner, socket_path).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--socket")
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    body = args.body_file.read_bytes()
    if args.uvloop:
        import uvloop  # noqa: PLC0415 - optional, only with --uvloop

        uvloop.run(serve(args.port, args.socket, body))
    else:
        asyncio.run(serve(args.port, args.socket, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
