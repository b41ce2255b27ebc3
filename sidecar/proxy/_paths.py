"""Path rules: which upstream a proxy path names, and which paths are refused.

The path after ``/v1/proxy/{upstream}/`` is passed on byte for byte: never
decoded, never re-encoded, so the upstream sees what the caller wrote. To keep
a request inside ``base_url``, a path with a ``..`` segment, or with an
encoded ``/``, ``\\`` or ``.`` (``%2F``, ``%5C``, ``%2E``, any case, also
encoded twice or more as ``%252E``) that a server might decode into one, is
refused before anything is sent. Segments
end at ``/`` and at ``\\`` too (WHATWG URL parsers, and so many servers, read
a backslash as a slash), and a segment's ``;`` parameters do not hide a
``..`` (servlet containers read ``..;x`` as ``..``).
"""

from __future__ import annotations

import re
from typing import Final

#: The route prefix; what follows is ``{upstream}/{path}``.
PREFIX: Final = "/v1/proxy/"
#: Also encoded more than once (``%252e``): an upstream that decodes twice would see a '.'.
_ENCODED_SEPARATOR = re.compile(r"%(?:25)*(?:2[fFeE]|5[cC])")
#: What ends a path segment for some server: '/' always, '\\' for WHATWG URL parsers.
_SEPARATOR = re.compile(r"[/\\]")


class PathRefusedError(ValueError):
    """The proxy path would leave ``base_url`` (or could, once decoded by the upstream)."""


def split_target(raw_target: str) -> tuple[str, str]:
    """``/v1/proxy/NAME/REST?Q`` to ``("NAME", "REST?Q")``; a missing part is empty."""
    rest = raw_target.removeprefix(PREFIX)
    name, _, tail = rest.partition("/")
    if "?" in name:  # "/v1/proxy/NAME?q": no path at all, and the query may hold a '/'
        name, _, query = rest.partition("?")
        return name, f"?{query}"
    return name, tail


def check_path(tail: str) -> str:
    """``tail`` (path and query) if it stays inside ``base_url``; raises PathRefusedError.

    The query is not examined: it is data, and it cannot change the path.
    """
    path = tail.partition("?")[0]
    if _ENCODED_SEPARATOR.search(path):
        raise PathRefusedError(
            "encoded '/', '\\\\' or '.' (%2F, %5C, %2E) is not allowed in the path"
        )
    if ".." in path and any(
        segment.partition(";")[0] == ".." for segment in _SEPARATOR.split(path)
    ):
        raise PathRefusedError("'..' segments are not allowed in the path")
    return tail
