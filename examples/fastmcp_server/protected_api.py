"""A protected HTTP API: the resource server an MCP tool calls with a sidecar token.

It stands in for a real API (the seeds' Go API): every request needs
``Authorization: Bearer <RS256 JWT>``, validated against the IdP's JWKS for
signature, ``iss``, ``aud``, ``exp`` and the route's scope. Failures answer as
RFC 6750 says: 401 with ``WWW-Authenticate: Bearer error="invalid_token"``
for a bad or expired token (401 without an error code when there is no
token), 403 with ``error="insufficient_scope"`` when the scope is missing.

The JWKS is cached (re-fetched after ``max_age``) and re-fetched at once when a
token names an unknown ``kid`` (key rotation), at most once per ``cooldown``
so a stream of forged tokens cannot hammer the IdP. :meth:`KeySet.refresh`
(or ``POST /admin/refresh-keys`` when started with ``--admin``) re-fetches the
keys now: after an IdP retires a key, tokens signed with it fail at once.

Run: ``python protected_api.py --issuer ISS --jwks-url URL --audience AUD``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import jwt
from aiohttp import web

log = logging.getLogger("protected_api")

ALGORITHMS = ("RS256",)
KEYS: web.AppKey[KeySet] = web.AppKey("keys")
VALIDATOR: web.AppKey[AccessTokenValidator] = web.AppKey("validator")


class InvalidTokenError(Exception):
    """The bearer token failed validation; the message is safe to show the caller."""


class KeySet:
    """The IdP's signing keys: fetched from its JWKS URL, cached, re-fetched on rotation."""

    def __init__(
        self,
        jwks_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        max_age: float = 3600.0,
        cooldown: float = 5.0,
    ) -> None:
        self.jwks_url = jwks_url
        self.max_age = max_age
        self.cooldown = cooldown
        self._session = session
        self._own_session = session is None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def kids(self) -> list[str]:
        return sorted(self._keys)

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key named ``kid``; fetches the JWKS when stale, or once when ``kid`` is new."""
        age = None if self._fetched_at is None else time.monotonic() - self._fetched_at
        stale = age is None or age >= self.max_age
        rotated = age is not None and kid not in self._keys and age >= self.cooldown
        if stale or rotated:
            await self.refresh()
        try:
            return self._keys[kid]
        except KeyError:
            raise InvalidTokenError("token signed with an unknown key") from None

    async def refresh(self) -> None:
        """Fetch the JWKS now and replace the cached keys (one fetch at a time)."""
        async with self._lock:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            timeout = aiohttp.ClientTimeout(total=5)
            async with self._session.get(self.jwks_url, timeout=timeout) as resp:
                resp.raise_for_status()
                document = await resp.json(content_type=None)
            keys: dict[str, jwt.PyJWK] = {}
            for entry in document.get("keys", []):
                if entry.get("use", "sig") != "sig" or entry.get("kty") != "RSA":
                    continue
                if "kid" not in entry:
                    continue
                try:
                    keys[entry["kid"]] = jwt.PyJWK(entry, algorithm="RS256")
                except jwt.PyJWTError:
                    log.warning("skipping unusable key kid=%s", entry.get("kid"))
            self._keys = keys
            self._fetched_at = time.monotonic()
            self.fetches += 1

    async def aclose(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None


class AccessTokenValidator:
    """Checks an RS256 access token: signature (JWKS), ``iss``, ``aud``, ``exp``."""

    def __init__(self, keys: KeySet, *, issuer: str, audience: str, leeway: float = 30.0) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

    async def validate(self, token: str) -> dict[str, Any]:
        """The token's claims, or :class:`InvalidTokenError` saying what failed."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidTokenError("malformed token") from None
        if header.get("alg") not in ALGORITHMS:
            raise InvalidTokenError("token algorithm not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidTokenError("token names no key")
        key = await self.keys.key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError("token expired") from None
        except jwt.InvalidAudienceError:
            raise InvalidTokenError("token audience not accepted") from None
        except jwt.InvalidIssuerError:
            raise InvalidTokenError("token issuer not accepted") from None
        except jwt.PyJWTError:
            raise InvalidTokenError("token signature or claims invalid") from None
        return claims


def token_scopes(claims: dict[str, Any]) -> set[str]:
    """Scopes from ``scope`` (space-separated, RFC 8693/9068) or ``scp``/``permissions`` lists."""
    scopes: set[str] = set()
    if isinstance(claims.get("scope"), str):
        scopes.update(claims["scope"].split())
    for name in ("scp", "permissions"):
        if isinstance(claims.get(name), list):
            scopes.update(str(s) for s in claims[name])
    return scopes


def challenge(error: str | None = None, description: str | None = None, **params: str) -> str:
    """An RFC 6750 ``WWW-Authenticate`` value."""
    parts = ['realm="protected-api"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{description}"')
    parts.extend(f'{k}="{v}"' for k, v in params.items())
    return "Bearer " + ", ".join(parts)


Handler = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


def requires_scope(scope: str) -> Callable[[Handler], Callable[[web.Request], Awaitable[Any]]]:
    """Wrap a handler: validate the bearer token and require ``scope``."""

    def wrap(handler: Handler) -> Callable[[web.Request], Awaitable[Any]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return _reject(401, "unauthorized", challenge(), "missing bearer token")
            try:
                claims = await request.app[VALIDATOR].validate(token.strip())
            except InvalidTokenError as exc:
                return _reject(401, "invalid_token", challenge("invalid_token", str(exc)), str(exc))
            except (aiohttp.ClientError, TimeoutError):
                log.exception("JWKS unavailable")
                return web.json_response({"error": "temporarily_unavailable"}, status=503)
            if scope not in token_scopes(claims):
                header = challenge("insufficient_scope", f"needs {scope}", scope=scope)
                return _reject(403, "insufficient_scope", header, f"needs scope {scope}")
            return await handler(request, claims)

        return guarded

    return wrap


def _reject(status: int, error: str, header: str, message: str) -> web.Response:
    body = {"error": error, "message": message}
    return web.json_response(body, status=status, headers={"WWW-Authenticate": header})


@requires_scope("read:tools")
async def list_things(_request: web.Request, claims: dict[str, Any]) -> web.Response:
    caller = claims.get("client_id") or claims.get("azp") or claims.get("sub")
    return web.json_response({"things": ["alpha", "beta", "gamma"], "caller": caller})


async def refresh_keys(request: web.Request) -> web.Response:
    """Admin hook (only with ``admin=True``): re-fetch the JWKS now."""
    keys = request.app[KEYS]
    await keys.refresh()
    return web.json_response({"kids": keys.kids})


def make_app(
    *,
    jwks_url: str,
    issuer: str,
    audience: str,
    admin: bool = False,
    keys: KeySet | None = None,
) -> web.Application:
    """The API. ``admin`` adds ``POST /admin/refresh-keys`` (tests, local runs)."""
    app = web.Application()
    keyset = keys if keys is not None else KeySet(jwks_url)
    app[KEYS] = keyset
    app[VALIDATOR] = AccessTokenValidator(keyset, issuer=issuer, audience=audience)

    async def close_keys(_app: web.Application) -> AsyncIterator[None]:
        yield
        await keyset.aclose()

    app.cleanup_ctx.append(close_keys)
    app.router.add_get("/things", list_things)
    if admin:
        app.router.add_post("/admin/refresh-keys", refresh_keys)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8800)
    parser.add_argument("--issuer", required=True, help="expected iss, exactly")
    parser.add_argument("--jwks-url", required=True)
    parser.add_argument("--audience", required=True, help="expected aud")
    parser.add_argument("--admin", action="store_true", help="enable POST /admin/refresh-keys")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    app = make_app(
        jwks_url=args.jwks_url, issuer=args.issuer, audience=args.audience, admin=args.admin
    )
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
