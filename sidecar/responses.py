"""JSON answers of the sidecar's HTTP apps: one encoder, the no-store headers, the error body.

Both the token API and the ops API answer through :func:`json_response`, so
every answer is orjson-encoded ``application/json`` and never cached by an
intermediary. :func:`error_response` renders an :class:`~sidecar.errors.ApiError`
as DESIGN's error body.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import hdrs, web
from multidict import CIMultiDict

from sidecar.errors import ApiError, ExchangeError

#: Headers of every answer: tokens and status must never sit in a cache.
NO_STORE: Final[Mapping[str, str]] = {"Cache-Control": "no-store", "Pragma": "no-cache"}


#: Marks an answer the sidecar made itself, as opposed to one a proxied upstream gave.
ERROR_HEADER: Final = "Token-Sidecar-Error"

#: :data:`NO_STORE` plus the JSON content type, built once: the token API's hot path copies it.
JSON_NO_STORE: Final = CIMultiDict({**NO_STORE, hdrs.CONTENT_TYPE: "application/json"})


def bytes_response(
    body: bytes, *, status: int, headers: Mapping[str, str] = NO_STORE
) -> web.Response:
    """Already encoded JSON ``body`` as an answer."""
    if headers is NO_STORE:
        return web.Response(body=body, status=status, headers=JSON_NO_STORE)
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def json_response(
    body: Mapping[str, Any], *, status: int, headers: Mapping[str, str] = NO_STORE
) -> web.Response:
    """``body`` as an orjson-encoded JSON answer."""
    return bytes_response(orjson.dumps(body), status=status, headers=headers)


def error_response(exc: ApiError) -> web.Response:
    """DESIGN's error body ``{"error", "message", "profile", "retry_after"?}`` for ``exc``.

    ``exc.fields`` add to it (an exchange refusal's ``idp`` object).
    """
    body: dict[str, Any] = {"error": exc.code, "message": exc.message, "profile": exc.profile}
    body.update(exc.fields)
    headers = {**NO_STORE, **exc.headers}
    if exc.retry_after is not None:
        seconds = max(1, math.ceil(exc.retry_after))
        body["retry_after"] = seconds
        headers[hdrs.RETRY_AFTER] = str(seconds)
    response = json_response(body, status=exc.status, headers=headers)
    if exc.headers.get(hdrs.CONNECTION) == "close":
        response.force_close()
    return response


def edge_error_response(status: int) -> web.Response:
    """The answer to a request that failed below the app (malformed, or a handler crashed).

    Fixed text: the request itself (which may carry a token in its query or
    headers) is never echoed. Marked with :data:`ERROR_HEADER`: the target is
    unknown here, and on ``/v1/proxy/`` a caller must tell this answer from
    the upstream's.
    """
    if status < 500:
        exc = ApiError(400, "bad_request", "malformed HTTP request")
    else:
        exc = ApiError(500, "internal_error", "internal error; see the sidecar log")
    response = error_response(exc)
    response.headers[ERROR_HEADER] = exc.code
    return response


def exchange_refusal(exc: ExchangeError) -> ApiError:
    """The answer to a refused exchange; the IdP's own words go in an ``idp`` object.

    The body's ``error`` is the sidecar's code, so the IdP's ``error``,
    ``error_description`` and (Entra) ``claims`` challenge are nested:
    ``{"error": "exchange_denied", ..., "idp": {"error": "interaction_required", ...}}``.
    """
    fields: dict[str, object] = {}
    if exc.status in (401, 403) and exc.error is not None:
        idp: dict[str, str] = {"error": exc.error}
        if exc.description is not None:
            idp["error_description"] = exc.description
        if exc.claims is not None:
            idp["claims"] = exc.claims
        fields["idp"] = idp
    return ApiError(
        exc.status,
        exc.code,
        exc.message,
        profile=exc.profile,
        retry_after=exc.retry_after if exc.status == 503 else None,
        fields=fields,
    )
