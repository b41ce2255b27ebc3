"""The 401 rule, written once for every adapter: report the token, retry once, with another.

An adapter sends its request with the client's token and then asks
:func:`retry_token` (or :func:`retry_token_sync` in sync code) what to do with
the answer. ``None`` keeps the answer; a token means: send the request once
more, with this token, and keep whatever comes back. An adapter asks once per
request, so a request is sent at most twice. The rule:

- only a status in :data:`REFRESH_STATUS_CODES` (401: RFC 6750's "get a new
  token"; a 403 is a missing scope, which a new token does not fix);
- only when the request body can be sent again (a one-shot stream cannot);
- only with a different token: when the sidecar answers the reported token
  itself, a retry would only earn the same 401 again, so the answer is a
  :class:`SidecarError` instead (see :func:`replacement`).

For a per-user token (an adapter given a ``subject``), the report is
:meth:`TokenClient.invalidate_exchange`: the user's token is dropped in the
process and at the sidecar, and exchanged once more (:func:`retry_exchanged`).
"""

from __future__ import annotations

from collections.abc import Callable

from ._core import SidecarError, Token, TokenClient

#: Statuses of the protected API that mean "this token was rejected".
REFRESH_STATUS_CODES = frozenset({401})

#: The sidecar replaces a reported token at most once per profile in this many seconds.
INVALIDATE_THROTTLE = 10.0


def should_retry(status: int, replayable: bool) -> bool:
    """Whether an answer with ``status`` earns a report and one more attempt."""
    return status in REFRESH_STATUS_CODES and replayable


def replacement(reported: Token, answer: Token) -> Token:
    """The token to retry with after reporting ``reported``: only a different one.

    Raises:
        SidecarError: ``throttled`` (with ``retry_after``) when the sidecar
            replaced a token moments ago and still holds ``reported``;
            ``token_unavailable`` when it tried to replace it and the IdP
            failed (it hands the reported token back, flagged stale).
    """
    if answer.access_token != reported.access_token:
        return answer
    if answer.stale:
        raise SidecarError(
            "token_unavailable",
            "the sidecar could not replace the rejected token; the API's 401 stands",
            status=200,
        )
    raise SidecarError(
        "throttled",
        "the sidecar has no other token yet; the API's 401 stands",
        status=200,
        retry_after=INVALIDATE_THROTTLE,
    )


async def retry_token(
    client: TokenClient, token: Token, profile: str | None, status: int, replayable: bool
) -> Token | None:
    """After an answer with ``status`` to a request sent with ``token``: the token to
    send it again with, or None to keep the answer. Reports ``token`` when it says so."""
    if not should_retry(status, replayable):
        return None
    return replacement(token, await client.invalidate(token, profile))


def retry_token_sync(
    client: TokenClient, token: Token, profile: str | None, status: int, replayable: bool
) -> Token | None:
    """:func:`retry_token` for sync code, on the client's blocking path."""
    if not should_retry(status, replayable):
        return None
    return replacement(token, client.invalidate_sync(token, profile))


# -- per-user tokens (token exchange) ------------------------------------------------

#: A user's token for an adapter: fixed, or looked up per request (a contextvar's ``get``).
Subject = str | Callable[[], str | None]


def subject_of(subject: Subject) -> str:
    """The user's token an adapter sends a request for.

    Raises:
        SidecarError: ``missing_subject`` when the lookup gives none.
    """
    value = subject() if callable(subject) else subject
    if not value:
        raise SidecarError(
            "missing_subject", "no user's token for this request: the adapter's subject gave none"
        )
    return value


async def retry_exchanged(
    client: TokenClient,
    token: Token,
    profile: str | None,
    status: int,
    replayable: bool,
    *,
    subject_token: str,
) -> Token | None:
    """:func:`retry_token` for a per-user token: drop it here and at the sidecar, exchange anew."""
    if not should_retry(status, replayable):
        return None
    return replacement(token, await client.invalidate_exchange(token, subject_token, profile))


def retry_exchanged_sync(
    client: TokenClient,
    token: Token,
    profile: str | None,
    status: int,
    replayable: bool,
    *,
    subject_token: str,
) -> Token | None:
    """:func:`retry_exchanged` for sync code, on the client's blocking path."""
    if not should_retry(status, replayable):
        return None
    return replacement(token, client.invalidate_exchange_sync(token, subject_token, profile))
