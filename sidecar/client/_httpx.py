"""SidecarAuth: the client's adapter for httpx, sync and async clients alike.

The async flow takes its token from a :class:`TokenClient`; the sync flow (a
thread without the client's event loop) asks the sidecar through a small
blocking httpx client of its own, with the same reuse-until-``min_ttl`` rule.
Whether to retry after an answer is :func:`should_retry`'s decision, as in
every adapter.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import Any

from ._core import (
    GUARD_HEADERS,
    SidecarError,
    Token,
    TokenClient,
    bearer,
    parse_answer,
    should_retry,
)

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
            self._sync_token: Token | None = None

        async def async_auth_flow(
            self, request: httpx.Request
        ) -> AsyncGenerator[httpx.Request, httpx.Response]:
            token = await self._client.get_token(self._profile)
            retries = 0
            while True:
                response = yield _authorized(request, token)
                if not should_retry(response.status_code, _replayable(request), retries):
                    return
                token = await self._client.invalidate(token, self._profile)
                retries += 1

        def sync_auth_flow(
            self, request: httpx.Request
        ) -> Generator[httpx.Request, httpx.Response]:
            token = self._sync_token
            if token is None or not self._client.usable(token):
                token = self._sync_request("GET", self._client.min_ttl)
            retries = 0
            while True:
                response = yield _authorized(request, token)
                if not should_retry(response.status_code, _replayable(request), retries):
                    return
                token = self._sync_request("POST", 0, {"fingerprint": token.fingerprint})
                retries += 1

        def _sync_request(
            self, method: str, min_ttl: float, payload: dict[str, Any] | None = None
        ) -> Token:
            endpoint = self._client.endpoint
            name = self._client.resolve_profile(self._profile)
            url = endpoint.invalidate_url(name) if payload else endpoint.token_url(name, min_ttl)
            transport = httpx.HTTPTransport(uds=endpoint.socket) if endpoint.socket else None
            try:
                with httpx.Client(
                    transport=transport, headers=dict(GUARD_HEADERS), timeout=15
                ) as http:
                    resp = http.request(method, url, json=payload)
            except httpx.HTTPError as exc:
                raise SidecarError(
                    "unreachable", f"cannot reach the sidecar at {endpoint.where}"
                ) from exc
            self._sync_token = parse_answer(
                resp.status_code, resp.content, resp.headers.get("Retry-After")
            )
            return self._sync_token

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
