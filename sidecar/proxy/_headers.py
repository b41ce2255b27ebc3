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

from collections.abc import Callable
from typing import Final

from aiohttp import hdrs
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


#: Header names remembered per spelling, so a verdict costs one dictionary lookup.
_REMEMBERED_NAMES: Final = 256
#: Longer names are judged each time rather than remembered.
_REMEMBERED_LENGTH: Final = 64


def _connection_named(headers: CIMultiDictProxy[str]) -> set[str]:
    """The field names listed in ``Connection`` (they are hop-by-hop for this message)."""
    return {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
        if token.strip()
    }


def _stripped(lower: str) -> bool:
    """Whether a (lowercase) field never crosses the sidecar in either direction."""
    return lower in HOP_BY_HOP or lower.startswith(_STRIPPED_PREFIXES)


def _request_stripped(lower: str) -> bool:
    return _stripped(lower) or lower in _REQUEST_ONLY


class _Verdicts:
    """Whether each header name is stripped by ``rule``, remembered per spelling (bounded).

    Callers send the same few names on every request; the bound keeps names
    made up by a client from piling up.
    """

    def __init__(self, rule: Callable[[str], bool]) -> None:
        self.rule = rule
        self.known: dict[str, bool] = {}

    def judge(self, name: str) -> bool:
        """``rule`` for ``name`` (any case), remembered when there is room."""
        verdict = self.rule(name.lower())
        if len(name) <= _REMEMBERED_LENGTH and len(self.known) < _REMEMBERED_NAMES:
            self.known[name] = verdict
        return verdict


_REQUEST_VERDICTS: Final = _Verdicts(_request_stripped)
_ANSWER_VERDICTS: Final = _Verdicts(_stripped)


def upstream_headers(incoming: CIMultiDictProxy[str], upstream: UpstreamConfig) -> CIMultiDict[str]:
    """The caller's headers as the upstream may see them, without any credential yet."""
    known, judge = _REQUEST_VERDICTS.known, _REQUEST_VERDICTS.judge
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        stripped = known.get(name)
        if not (judge(name) if stripped is None else stripped):
            out.add(name, value)
    out.popall(upstream.header, None)  # the credential, in any spelling: replaced, never added
    if hdrs.CONNECTION in incoming:
        for named in _connection_named(incoming):
            out.popall(named, None)
    for name, value in upstream.set_headers.items():
        out[name] = value
    return out


def dropped_from_answer(received: CIMultiDictProxy[str]) -> list[str]:
    """The names among the upstream's response headers the caller must not see (usually none)."""
    known, judge = _ANSWER_VERDICTS.known, _ANSWER_VERDICTS.judge
    dropped = []
    for name in received:
        stripped = known.get(name)
        if judge(name) if stripped is None else stripped:
            dropped.append(name)
    if hdrs.CONNECTION in received:
        dropped.extend(_connection_named(received))
    return dropped
