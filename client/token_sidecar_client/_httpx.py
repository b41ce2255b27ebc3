"""SidecarAuth: the client's adapter for httpx and httpx2, sync and async clients alike.

httpx2 (which FastMCP 4 and the MCP Python SDK 2 use) is a separate package
with httpx's API but classes of its own: ``httpx2.AsyncClient`` accepts only an
instance of ``httpx2.Auth``, and httpx only one of ``httpx.Auth``. The flows
below use nothing but the API the two share, so :class:`SidecarAuth` is one
class whose bases are the ``Auth`` classes of whichever of the two libraries
is installed: one object works with both, and ``isinstance`` checks pass in
either. (After ``httpx2.alias_httpx()`` the two names are one class, taken once.)

Both flows take their token from a :class:`TokenClient`, the async flow from
its event-loop path and the sync flow from its blocking path, so they share
one cache, one timeout and one error mapping. Which origin gets the token is
``_origin.py``'s decision and whether to retry is ``_retry.py``'s, as in every
adapter.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncGenerator, Generator, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._core import Token, TokenClient, bearer
from ._origin import Origin
from ._retry import (
    Subject,
    retry_exchanged,
    retry_exchanged_sync,
    retry_token,
    retry_token_sync,
    subject_of,
)

#: The request extension that names a request's user (its token), for per-user tokens.
SUBJECT_EXTENSION = "token_sidecar_subject"

#: The HTTP libraries SidecarAuth serves, in the order their bases are taken.
LIBRARIES = ("httpx2", "httpx")


def _installed() -> list[Any]:
    modules: list[Any] = []
    for name in LIBRARIES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - tests/test_client_dist.py, in a bare venv
            continue
        if all(module.Auth is not other.Auth for other in modules):
            modules.append(module)
    return modules


_MODULES = _installed()
#: The ``Auth`` base of each installed library (none: SidecarAuth cannot be made).
AUTH_BASES: tuple[type, ...] = tuple(module.Auth for module in _MODULES)
# A request body held in memory, which can be sent again; anything else is a stream.
_BYTE_STREAMS: tuple[type, ...] = tuple(module.ByteStream for module in _MODULES)


class _URL(Protocol):
    def __str__(self) -> str: ...


class _Request(Protocol):
    @property
    def url(self) -> _URL: ...
    @property
    def headers(self) -> MutableMapping[str, str]: ...
    @property
    def stream(self) -> object: ...
    @property
    def extensions(self) -> MutableMapping[str, Any]: ...


class _Response(Protocol):
    @property
    def status_code(self) -> int: ...
    @property
    def request(self) -> _Request: ...


RequestT = TypeVar("RequestT", bound=_Request)


class _BearerFlows:
    """The sync and async auth flows, written against the API httpx and httpx2 share."""

    def __init__(
        self,
        client: TokenClient,
        profile: str | None = None,
        *,
        origin: str | None = None,
        subject: Subject | None = None,
    ) -> None:
        if not AUTH_BASES:  # pragma: no cover - tests/test_client_dist.py, in a bare venv
            raise ImportError(
                "SidecarAuth needs httpx2 or httpx: pip install 'token-sidecar-client[httpx2]'"
            )
        self._client = client
        self._profile = profile
        self._origin = Origin(origin)
        self._subject = subject

    def _user(self, request: _Request) -> str | None:
        """The user's token of this request (per-request extension, else ``subject``), or None."""
        given = request.extensions.get(SUBJECT_EXTENSION)
        if given is not None:
            return subject_of(given)
        return None if self._subject is None else subject_of(self._subject)

    async def async_auth_flow(self, request: RequestT) -> AsyncGenerator[RequestT, _Response]:
        if not self._origin.admits(str(request.url)):
            yield request
            return
        user = self._user(request)
        if user is not None:
            token = await self._client.exchange(user, self._profile)
            response = yield _authorized(request, token)
            retry = await retry_exchanged(
                self._client,
                token,
                self._profile,
                response.status_code,
                self._may_retry(response),
                subject_token=user,
            )
            if retry is not None:
                yield _authorized(request, retry)
            return
        token = await self._client.get_token(self._profile)
        response = yield _authorized(request, token)
        retry = await retry_token(
            self._client, token, self._profile, response.status_code, self._may_retry(response)
        )
        if retry is not None:
            yield _authorized(request, retry)

    def sync_auth_flow(self, request: RequestT) -> Generator[RequestT, _Response]:
        if not self._origin.admits(str(request.url)):
            yield request
            return
        user = self._user(request)
        if user is not None:
            token = self._client.exchange_sync(user, self._profile)
            response = yield _authorized(request, token)
            retry = retry_exchanged_sync(
                self._client,
                token,
                self._profile,
                response.status_code,
                self._may_retry(response),
                subject_token=user,
            )
            if retry is not None:
                yield _authorized(request, retry)
            return
        token = self._client.get_token_sync(self._profile)
        response = yield _authorized(request, token)
        retry = retry_token_sync(
            self._client, token, self._profile, response.status_code, self._may_retry(response)
        )
        if retry is not None:
            yield _authorized(request, retry)

    def _may_retry(self, response: _Response) -> bool:
        """Whether the request can be sent again, and its 401 came from the pinned origin.

        A client that follows redirects hands the flow the last hop's answer;
        a 401 from another origin says nothing about this token.
        """
        final = response.request
        return isinstance(final.stream, _BYTE_STREAMS) and self._origin.admits(str(final.url))

    def __repr__(self) -> str:
        per_user = ", subject=[per-user]" if self._subject is not None else ""
        return (
            f"SidecarAuth({self._client!r}, profile={self._profile!r}, "
            f"origin={self._origin.pinned!r}{per_user})"
        )


def _authorized(request: RequestT, token: Token) -> RequestT:
    request.headers["Authorization"] = bearer(token)
    return request


_DOC = """An ``Auth`` for httpx2 and httpx clients, sync and async.

    Attaches ``Authorization: Bearer`` from ``client`` to requests for one
    origin (``origin``, else the first request's) and, after a 401 from that
    origin, reports the token and sends the request once more with a
    different one. It is an instance of the ``Auth`` class of each of httpx2
    and httpx that is installed.

    Args:
        client: where the tokens come from.
        profile: the sidecar profile; default: the client's.
        origin: the only origin (``scheme://host[:port]``) that gets the
            token; default: the origin of the first request.
        subject: for per-user tokens (``profile`` an exchange profile): the
            user's token, or a function giving it per request (a
            contextvar's ``get``); each request then carries that user's
            exchanged token (:meth:`TokenClient.exchange`), and a 401 drops
            it and exchanges once more. A request may instead name its user
            with the extension ``token_sidecar_subject``:
            ``http.get(url, extensions={"token_sidecar_subject": user_token})``.
    """

if TYPE_CHECKING:
    import httpx
    import httpx2

    # The two Auth classes type their methods with their own Request classes;
    # SidecarAuth overrides both flows with ones written for either.
    class SidecarAuth(_BearerFlows, httpx2.Auth, httpx.Auth):  # type: ignore[misc]
        __doc__ = _DOC

else:

    class SidecarAuth(_BearerFlows, *AUTH_BASES):
        __doc__ = _DOC
