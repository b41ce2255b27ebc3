"""Header rules: what a proxied request and its answer carry across the sidecar.

Towards the upstream, the caller's credential is removed and replaced, never
added to; hop-by-hop headers (RFC 9110 7.6.1, and those the ``Connection``
header names), ``Proxy-*``, ``Token-Sidecar*``, ``Forwarded``,
``X-Forwarded-*``, ``Via``, ``Expect`` and ``Host`` are removed; the
upstream's static ``set_headers`` are set. Back to the caller, hop-by-hop
headers are removed, and so is any ``Token-Sidecar*`` header, so an upstream
can never pose as the sidecar. Nothing else is rewritten (``Location``
included).
"""

from __future__ import annotations

from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.config import UpstreamConfig

#: RFC 9110 7.6.1 and the fields that must not travel past one connection.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_STRIPPED_PREFIXES: Final = ("proxy-", "token-sidecar", "x-forwarded-")
#: Removed from requests besides the hop-by-hop ones (lowercase).
_REQUEST_ONLY: Final = frozenset({"host", "authorization", "forwarded", "via", "expect"})

#: Headers the sidecar adds to a proxied answer.
STALE_HEADER: Final = "Token-Sidecar-Stale"
RETRIED_HEADER: Final = "Token-Sidecar-Retried"


def _connection_named(headers: CIMultiDictProxy[str]) -> set[str]:
    """The field names listed in ``Connection`` (they are hop-by-hop for this message)."""
    return {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }


def _stripped(lower: str, named: set[str]) -> bool:
    return lower in HOP_BY_HOP or lower in named or lower.startswith(_STRIPPED_PREFIXES)


def upstream_headers(incoming: CIMultiDictProxy[str], upstream: UpstreamConfig) -> CIMultiDict[str]:
    """The caller's headers as the upstream may see them, without any credential yet."""
    named = _connection_named(incoming)
    credential = upstream.header.lower()
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if _stripped(lower, named) or lower in _REQUEST_ONLY or lower == credential:
            continue
        out.add(name, value)
    for name, value in upstream.set_headers.items():
        out[name] = value
    return out


def answer_headers(received: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's response headers as the caller may see them."""
    named = _connection_named(received)
    return CIMultiDict(
        (name, value) for name, value in received.items() if not _stripped(name.lower(), named)
    )
