"""SidecarAuth: the client's adapter for httpx, sync and async clients alike.

Both flows take their token from a :class:`TokenClient` (the async flow from
its event-loop path, the sync flow from its blocking path), so they share one
cache, one timeout and one error mapping. Whether to retry after an answer is
:func:`should_retry`'s decision, as in every adapter.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator

from ._core import Token, TokenClient, bearer, replacement, should_retry

try:
    import httpx
except ImportError:  # pragma: no cover - httpx is the optional extra token-sidecar[httpx]
    httpx = None  # type: ignore[assignment]


if httpx is not None:

    class SidecarAuth(httpx.Auth):
        """An ``httpx.Auth`` for sync and async clients: Bearer token, one retry after a 401."""

        def __init__(self, client: TokenClient, profile: str | None = None) -> None:
            self._client = client
            self._profile = profile

        async def async_auth_flow(
            self, request: httpx.Request
        ) -> AsyncGenerator[httpx.Request, httpx.Response]:
            token = await self._client.get_token(self._profile)
            retries = 0
            while True:
                response = yield _authorized(request, token)
                if not should_retry(response.status_code, _replayable(request), retries):
                    return
                token = replacement(token, await self._client.invalidate(token, self._profile))
                retries += 1

        def sync_auth_flow(
            self, request: httpx.Request
        ) -> Generator[httpx.Request, httpx.Response]:
            token = self._client.get_token_sync(self._profile)
            retries = 0
            while True:
                response = yield _authorized(request, token)
                if not should_retry(response.status_code, _replayable(request), retries):
                    return
                token = replacement(token, self._client.invalidate_sync(token, self._profile))
                retries += 1

        def __repr__(self) -> str:
            return f"SidecarAuth({self._client!r}, profile={self._profile!r})"

else:  # pragma: no cover - exercised only without the httpx extra

    class SidecarAuth:  # type: ignore[no-redef,unreachable]
        """Placeholder that explains how to get the real one."""

        def __init__(self, *_args: object, **_kwargs: object) -> None:
            raise ImportError("SidecarAuth needs httpx: pip install 'token-sidecar[httpx]'")


def _authorized(request: httpx.Request, token: Token) -> httpx.Request:
    request.headers["Authorization"] = bearer(token)
    return request


def _replayable(request: httpx.Request) -> bool:
    """Whether the request body can be sent again (bytes, not a one-shot stream)."""
    return isinstance(request.stream, httpx.ByteStream)
