"""Token exchange: per-user tokens, cached per subject, one IdP request per key at a time.

An exchange profile trades a caller's user token for a token issued to the
same user for the profile's API (RFC 8693 token exchange, or Entra's
on-behalf-of), so an MCP server never passes its client's token upstream and
never holds client credentials. Callers use :class:`ExchangeService`
(``exchange()``, ``drop()``); the rest is its machinery, one concern each:

    ExchangeService (_service)      the exchange profiles of a daemon; reloads, status
    +-- ProfileExchanger            one profile: scope, key, cache lookup, single
    |   (_exchanger)                flight per key, counting and logging of refusals
    |   +-- SubjectCache (_cache)   per-user tokens and remembered rejections, LRU-bound
    |   +-- SubjectChecker          the user's token, checked locally first
    |   |   (sidecar.subject)
    |   +-- ExchangeMinter          hold-off -> breaker -> IdP -> verify -> entry
    |       (_minter)

There is no stale serving and no background refresh: an entry lives until
``min(issued exp, subject exp)`` and is served only while more than
``min_ttl`` is left. Only transport errors and 5xx count against the token
endpoint's breaker; a user's rejected token never does, and a rejection is
remembered for ``negative_ttl``. The raw user token is never stored, logged
or used as a label: keys are SHA-256 digests, and logs and ``/status`` name
no subject.
"""

from sidecar.exchange._cache import SWEEP_INTERVAL, ExchangedToken, SubjectCache, cache_key
from sidecar.exchange._exchanger import ExchangeAnswer, ProfileExchanger
from sidecar.exchange._minter import TRANSIENT_RETRY_AFTER, ExchangeMinter
from sidecar.exchange._service import ExchangeService

__all__ = [
    "SWEEP_INTERVAL",
    "TRANSIENT_RETRY_AFTER",
    "ExchangeAnswer",
    "ExchangeMinter",
    "ExchangeService",
    "ExchangedToken",
    "ProfileExchanger",
    "SubjectCache",
    "cache_key",
]
