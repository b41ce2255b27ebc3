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

from ._core import Token, TokenClient, bearer
from ._origin import Origin
from ._retry import Subject, retry_exchanged, retry_token, subject_of


def sidecar_middleware(
    client: TokenClient,
    profile: str | None = None,
    *,
    origin: str | None = None,
    subject: Subject | None = None,
) -> aiohttp.ClientMiddlewareType:
    """An aiohttp client middleware: the Bearer token for one origin, one retry after a 401.

    Args:
        client: where the tokens come from.
        profile: the sidecar profile; default: the client's.
        origin: the only origin (``scheme://host[:port]``) that gets the token;
            default: the origin of the first request through the middleware.
        subject: for per-user tokens (``profile`` an exchange profile): the
            user's token, or a function giving it per request (a contextvar's
            ``get``). For one request, pass a middleware of its own:
            ``session.get(url, middlewares=(sidecar_middleware(c, p, subject=t),))``.
    """
    pinned = Origin(origin)

    async def middleware(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if not pinned.admits(str(request.url)):
            return await handler(request)
        user = None if subject is None else subject_of(subject)
        token: Token
        if user is None:
            token = await client.get_token(profile)
        else:
            token = await client.exchange(user, profile)
        request.headers[hdrs.AUTHORIZATION] = bearer(token)
        response = await handler(request)
        replayable = _replayable(request)
        if user is None:
            retry = await retry_token(client, token, profile, response.status, replayable)
        else:
            retry = await retry_exchanged(
                client, token, profile, response.status, replayable, subject_token=user
            )
        if retry is None:
            return response
        response.release()
        request.headers[hdrs.AUTHORIZATION] = bearer(retry)
        return await handler(request)

    return middleware


def _replayable(request: aiohttp.ClientRequest) -> bool:
    """Whether the request body can be sent again (not a stream already consumed)."""
    return not getattr(request.body, "consumed", False)
