"""The connect-time address check: an upstream name may not resolve to a private address.

Config refuses a ``base_url`` whose host is a literal private address; a host
*name* can only be judged once resolved, and again at every resolution, or an
attacker who controls its DNS could rebind it to ``127.0.0.1`` or the cloud
metadata address after the sidecar started. :class:`GuardedResolver` wraps
the resolver of an upstream's connector and refuses the whole answer when
any address in it is private, so no connection to such an address is opened.
"""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult

from sidecar.config import is_private_address


class AddressDeniedError(OSError):
    """An upstream name resolved to an address ``allow_private`` does not allow.

    An ``OSError``, so aiohttp's connector wraps it like any resolver failure
    (``ClientConnectorDNSError``); the proxy's error mapping finds it there.
    """

    def __init__(self, host: str) -> None:
        super().__init__(f"{host} resolves to a loopback, private, link-local or metadata address")
        self.host = host


class GuardedResolver(AbstractResolver):
    """A resolver that refuses names resolving to a private address (any one of them)."""

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if any(is_private_address(result["host"]) for result in results):
            raise AddressDeniedError(host)
        return results

    async def close(self) -> None:
        await self._inner.close()
