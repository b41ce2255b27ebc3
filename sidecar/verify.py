"""Access-token verification: JWKS signature check and claim checks on our clock.

The JWKS is fetched with aiohttp (pyjwt's ``PyJWKClient`` uses blocking
urllib and must never run on the event loop), cached, refreshed after
:data:`JWKS_MAX_AGE`, and re-fetched at most once per unknown ``kid`` (key
rotation) with a cooldown so a stream of bad tokens cannot hammer the IdP.
``exp``/``nbf`` are checked against the injected clock, not pyjwt's wall
clock, so virtual-time tests see the same rules production does. Users'
tokens checked before an exchange (:mod:`sidecar.subject`) arrive many at a
time, so a JWKS fetch is single flight: concurrent callers wait for the one
fetch under way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson
from jwt.types import Options

from sidecar.clock import Clock
from sidecar.config import ASYMMETRIC_ALGORITHMS, ProfileConfig, Verify
from sidecar.errors import IdPResponseError, IdPUnavailableError, InvalidTokenError
from sidecar.idp import map_transport_errors, read_capped

JWKS_MAX_AGE = 3600.0
#: Bound on one JWKS fetch, in seconds.
JWKS_TIMEOUT = 10.0
UNKNOWN_KID_COOLDOWN = 10.0
#: A key set is a few KiB; more is garbage (or an attack), not keys.
MAX_JWKS_BODY = 1024 * 1024
#: Tolerated clock difference for ``nbf`` and ``iat`` in the future.
LEEWAY = 60.0
_NO_PYJWT_CLAIM_CHECKS: Options = {
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
}


class JWKSCache:
    """The signing keys of one issuer, fetched asynchronously and cached."""

    def __init__(self, session: aiohttp.ClientSession, url: str, clock: Clock) -> None:
        self._session = session
        self.url = url
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._fetching = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key with ``kid``; fetch the JWKS when stale or when ``kid`` is new.

        An unknown ``kid`` is refetched at most once per cooldown. Inside the
        cooldown the key may simply not be fetched yet (a rotation right after
        our last fetch), so that is a transient failure, retried with backoff;
        only a ``kid`` still unknown after a fresh fetch is an invalid token.
        Callers that need a fetch take turns, so concurrent ones share one.
        """
        known = self._keys.get(kid)
        fetched_at = self._fetched_at
        if (
            known is not None
            and fetched_at is not None
            and self._clock.monotonic() - fetched_at < JWKS_MAX_AGE
        ):
            return known
        async with self._fetching:
            return await self._key_fetching(kid)

    async def _key_fetching(self, kid: str) -> jwt.PyJWK:
        now = self._clock.monotonic()
        fetched = False
        if self._fetched_at is None or now - self._fetched_at >= JWKS_MAX_AGE:
            fetched = await self._refetch_keeping_old_on_failure()
        elif kid not in self._keys:
            if now - self._fetched_at < UNKNOWN_KID_COOLDOWN:
                raise IdPUnavailableError(
                    "token signed with a key the JWKS did not have moments ago; retrying",
                    error="unknown_kid",
                    description=f"unknown kid {kid[:64]!r} within the JWKS refetch cooldown",
                )
            await self.fetch()
            fetched = True
        try:
            return self._keys[kid]
        except KeyError:
            if not fetched:
                # The refetch failed and we kept the old keys: try again later.
                raise IdPUnavailableError(
                    "cannot fetch the JWKS to find the token's key", error="unknown_kid"
                ) from None
            raise InvalidTokenError(
                "token signed with a key not in the issuer's JWKS",
                error="invalid_token",
                description=f"unknown kid {kid[:64]!r}",
            ) from None

    async def _refetch_keeping_old_on_failure(self) -> bool:
        """Refetch a stale JWKS; returns whether fresh keys arrived."""
        if not self._keys:
            await self.fetch()
            return True
        try:
            await self.fetch()
        except IdPUnavailableError:
            # Known keys stay good while the JWKS endpoint hiccups; the next
            # verification tries again.
            self._fetched_at = self._clock.monotonic() - JWKS_MAX_AGE + UNKNOWN_KID_COOLDOWN
            return False
        return True

    async def fetch(self) -> None:
        """Fetch the JWKS now and replace the cached keys.

        Redirects are not followed (one could lead to plain http, where anyone
        on the path swaps the keys) and the body is read up to
        :data:`MAX_JWKS_BODY`: either is a failed fetch.
        """
        timeout = aiohttp.ClientTimeout(total=JWKS_TIMEOUT, sock_connect=3)
        with map_transport_errors(self.url, JWKS_TIMEOUT):
            async with self._session.get(self.url, timeout=timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise IdPUnavailableError(f"JWKS endpoint answered {resp.status}")
                try:
                    body = await read_capped(resp, MAX_JWKS_BODY)
                except IdPResponseError:
                    raise IdPUnavailableError("JWKS body is larger than 1 MiB") from None
        try:
            document = orjson.loads(body)
            if not isinstance(document, dict):
                raise TypeError("JWKS document is not an object")  # noqa: TRY301 - same mapping
            jwks = jwt.PyJWKSet.from_dict(document)
        except (orjson.JSONDecodeError, jwt.PyJWTError, TypeError, KeyError, ValueError) as exc:
            raise IdPUnavailableError(f"JWKS is not a valid key set: {type(exc).__name__}") from exc
        self._keys = {k.key_id: k for k in jwks.keys if k.key_id}
        self._fetched_at = self._clock.monotonic()


@dataclass(frozen=True)
class Expectations:
    """What a profile's tokens must say about themselves."""

    audience: str | None
    issuer: str | None

    @classmethod
    def of(cls, profile: ProfileConfig) -> Expectations:
        return cls(audience=profile.audience or profile.resource, issuer=profile.issuer)


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` parses as a JWS compact serialization."""
    if token.count(".") != 2:
        return False
    try:
        jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return False
    return True


def effective_mode(profile: ProfileConfig, token: str) -> Verify:
    """The verify mode for one token: configured, or automatic per DESIGN.md."""
    if profile.verify is not None:
        return profile.verify
    if profile.jwks_url:
        return "jwks"
    return "claims" if looks_like_jwt(token) else "none"


class TokenVerifier:
    """Verifies issued tokens per profile ``verify`` mode; returns their claims."""

    def __init__(self, session: aiohttp.ClientSession, clock: Clock) -> None:
        self._session = session
        self._clock = clock
        self._caches: dict[str, JWKSCache] = {}

    def jwks(self, url: str) -> JWKSCache:
        cache = self._caches.get(url)
        if cache is None:
            cache = self._caches[url] = JWKSCache(self._session, url, self._clock)
        return cache

    async def verify(self, profile: ProfileConfig, token: str) -> dict[str, Any]:
        """Check ``token`` as the profile asks; raise :class:`InvalidTokenError` if it fails."""
        mode = effective_mode(profile, token)
        if mode == "none":
            return {}
        if not looks_like_jwt(token):
            raise _invalid("token is not a JWT", f"verify = {mode!r} needs a JWT")
        if mode == "claims":
            claims = unverified_claims(token)
        else:
            assert profile.jwks_url is not None  # noqa: S101 - the loader requires it
            claims = await self.signed_claims(token, profile.jwks_url)
        check_claims(claims, Expectations.of(profile), now=self._clock.time())
        return claims

    async def signed_claims(self, token: str, jwks_url: str) -> dict[str, Any]:
        """The claims of JWT ``token`` once its signature checks against ``jwks_url``'s keys.

        Only the signature (an asymmetric algorithm, a ``kid`` in the JWKS) and
        the presence of ``exp`` are checked; claims are the caller's to check.
        """
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise _invalid("token algorithm not allowed", f"alg {str(alg)[:16]!r}")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise _invalid("token header has no kid", "missing kid")
        key = await self.jwks(jwks_url).key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                options={**_NO_PYJWT_CLAIM_CHECKS, "require": ["exp"]},
            )
        except jwt.PyJWTError as exc:
            raise _invalid("token signature check failed", type(exc).__name__) from None
        return claims


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of JWT ``token``, signature not checked; InvalidTokenError if unparsable."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token, options={**_NO_PYJWT_CLAIM_CHECKS, "verify_signature": False}
        )
    except jwt.PyJWTError as exc:
        raise _invalid("token payload is not valid", type(exc).__name__) from None
    return claims


def check_client(claims: dict[str, Any], client_id: str) -> None:
    """The token was issued to ``client_id``, as DESIGN "Limits and trust" says.

    ``azp`` and ``client_id``, where present, must name it; with neither,
    ``sub`` must be ``CLIENT_ID@clients`` (Auth0's client-credentials subject).
    """
    named = [claims[c] for c in ("azp", "client_id") if c in claims]
    if named:
        matches = all(value == client_id for value in named)
    else:
        matches = claims.get("sub") == f"{client_id}@clients"
    if not matches:
        raise _invalid("token was issued to another client", "azp/client_id/sub mismatch")


def check_claims(claims: dict[str, Any], expect: Expectations, *, now: float) -> None:
    """``exp`` required and in the future, ``nbf`` reached, ``aud`` and ``iss`` as expected."""
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise _invalid("token has no numeric exp", "missing exp")
    if exp <= now:
        raise _invalid("token is already expired", "exp is in the past")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and nbf > now + LEEWAY:
        raise _invalid("token is not valid yet", "nbf is in the future")
    if expect.audience is not None:
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if expect.audience not in audiences:
            raise _invalid(
                "token audience does not match",
                f"aud mismatch: expected {expect.audience!r}, got {_shown(aud)}",
            )
    if expect.issuer is not None and claims.get("iss") != expect.issuer:
        raise _invalid(
            "token issuer does not match",
            f"iss mismatch: expected {expect.issuer!r}, got {_shown(claims.get('iss'))}",
        )


def _invalid(message: str, description: str) -> InvalidTokenError:
    return InvalidTokenError(message, error="invalid_token", description=description)


def _shown(value: object) -> str:
    """A claim value for an error message: a claim is not a secret, but keep it short."""
    return repr(value)[:120]
