"""sidecar_middleware: the client's adapter for aiohttp client sessions.

The middleware takes its token from a :class:`TokenClient`, attaches it only
to its pinned origin (``_origin.py``) and leaves the decision to retry after
an answer to :func:`retry_token` (``_retry.py``), as every adapter does.
aiohttp runs client middlewares for every hop of a redirect, so a redirect to
another origin gets no token either.
"""

from __future__ import annotations

import aiohttp
from aiohttp import hdrs

from ._core import TokenClient, bearer
from ._origin import Origin
from ._retry import retry_token


def sidecar_middleware(
    client: TokenClient, profile: str | None = None, *, origin: str | None = None
) -> aiohttp.ClientMiddlewareType:
    """An aiohttp client middleware: the Bearer token for one origin, one retry after a 401.

    Args:
        client: where the tokens come from.
        profile: the sidecar profile; default: the client's.
        origin: the only origin (``scheme://host[:port]``) that gets the token;
            default: the origin of the first request through the middleware.
    """
    pinned = Origin(origin)

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if not pinned.admits(str(request.url)):
            return await handler(request)
        token = await client.get_token(profile)
        request.headers[hdrs.AUTHORIZATION] = bearer(token)
        response = await handler(request)
        retry = await retry_token(client, token, profile, response.status, _replayable(request))
        if retry is None:
            return response
        response.release()
        request.headers[hdrs.AUTHORIZATION] = bearer(retry)
        return await handler(request)

    return middleware


def _replayable(request: aiohttp.ClientRequest) -> bool:
    """Whether the request body can be sent again (not a stream already consumed)."""
    return not getattr(request.body, "consumed", False)
