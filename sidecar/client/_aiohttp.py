"""sidecar_middleware: the client's adapter for aiohttp client sessions.

The middleware takes its token from a :class:`TokenClient` and leaves the
decision to retry after an answer to :func:`should_retry`, as every adapter
does.
"""

from __future__ import annotations

import aiohttp
from aiohttp import hdrs

from ._core import TokenClient, bearer, replacement, should_retry


def sidecar_middleware(
    client: TokenClient, profile: str | None = None
) -> aiohttp.ClientMiddlewareType:
    """An aiohttp client middleware: Bearer token, and one retry after a 401."""

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        token = await client.get_token(profile)
        retries = 0
        while True:
            request.headers[hdrs.AUTHORIZATION] = bearer(token)
            response = await handler(request)
            if not should_retry(response.status, _replayable(request), retries):
                return response
            response.release()
            token = replacement(token, await client.invalidate(token, profile))
            retries += 1

    return middleware


def _replayable(request: aiohttp.ClientRequest) -> bool:
    """Whether the request body can be sent again (not a stream already consumed)."""
    return not getattr(request.body, "consumed", False)
