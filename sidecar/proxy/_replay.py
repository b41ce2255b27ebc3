"""The replay rule: which request bodies are buffered, and what an upstream 401 leads to.

A body is buffered only when it fits ``retry_body_limit`` (and a retry is
possible at all); anything larger is streamed to the upstream as it arrives,
after the part already read, so a 10 MB upload costs a few chunks of memory.
Only a request with no body or a buffered one can be sent twice. After a 401,
:func:`retry_result` decides: ``not_replayable`` when the body cannot be sent
again, else ``throttled`` when no different token is to be had, else
``retried``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from aiohttp import StreamReader

RetryResult = Literal["retried", "not_replayable", "throttled"]


@dataclass(frozen=True)
class RequestBody:
    """What is sent upstream: nothing, buffered bytes (replayable), or a one-shot stream."""

    data: bytes | AsyncIterator[bytes] | None
    replayable: bool


#: A request without a body: nothing to send, and nothing stands in the way of sending it twice.
NO_BODY = RequestBody(None, replayable=True)


async def read_body(
    content: StreamReader,
    *,
    exists: bool,
    length: int | None,
    limit: int,
    idle_timeout: float,
) -> RequestBody:
    """Buffer the caller's body when it fits ``limit`` bytes, else stream it.

    ``limit`` is 0 when no retry can happen: then nothing is read ahead.
    Each read ahead waits at most ``idle_timeout``; a stream's reads are
    bounded by the upstream request's deadline.

    Raises:
        TimeoutError: the caller sent nothing for ``idle_timeout`` while buffering.
    """
    if not exists:
        return NO_BODY
    if limit == 0 or (length is not None and length > limit):
        return RequestBody(_stream(b"", content), replayable=False)
    read = bytearray()
    while len(read) <= limit:
        async with asyncio.timeout(idle_timeout):
            chunk = await content.readany()
        if not chunk:
            return RequestBody(bytes(read), replayable=True)
        read += chunk
    return RequestBody(_stream(bytes(read), content), replayable=False)


async def _stream(head: bytes, content: StreamReader) -> AsyncIterator[bytes]:
    """``head``, then the rest of the caller's body, chunk by chunk as it arrives."""
    if head:
        yield head
    while chunk := await content.readany():
        yield chunk


def retry_result(*, replayable: bool, sent: str, offered: str | None) -> RetryResult:
    """What a 401 for the token ``sent`` leads to, given the token ``offered`` now (fingerprints).

    ``offered`` is None when no servable token could be had at all.
    """
    if not replayable:
        return "not_replayable"
    if offered is None or offered == sent:
        return "throttled"
    return "retried"
