"""The dev IdP's signing keys: RSA key generation, the key ring that signs and verifies tokens.

:class:`KeyRing` holds the key that signs new tokens, the keys published in
the JWKS, and a key that is never published (for the ``unpublished_key``
fault). Verification judges ``exp`` by the time it is given, so an injected
clock decides when a token has expired.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


def generate_private_key() -> rsa.RSAPrivateKey:
    """A fresh RSA 2048 key (tens of milliseconds: create them sparingly)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of ``key``'s public half, for :class:`DevClient`."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@functools.cache
def shared_key(slot: int) -> rsa.RSAPrivateKey:
    """The key material of ``slot``, generated once per process."""
    # Every DevIdP starts with the same key material (under its own random kid),
    # so a test suite that builds hundreds of IdPs pays for key generation once.
    del slot
    return generate_private_key()


@dataclass(frozen=True, repr=False)
class SigningKey:
    """An RSA key under a random kid; the repr shows only the kid."""

    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def create(cls, private_key: rsa.RSAPrivateKey | None = None) -> SigningKey:
        """A key with a fresh kid, over ``private_key`` or newly generated material."""
        return cls(secrets.token_hex(8), private_key or generate_private_key())

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK, as the JWKS lists it."""
        jwk = dict(RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"


class KeyRing:
    """The keys of one IdP: the signing key, the published keys, one never-published key.

    Invariant: the signing key is published unless :meth:`rotate` was told
    not to; the unpublished key is never in :meth:`jwks`.
    """

    def __init__(self) -> None:
        self._signing = SigningKey.create(shared_key(0))
        self._published: dict[str, SigningKey] = {self._signing.kid: self._signing}
        self._unpublished: SigningKey | None = None

    @property
    def signing_kid(self) -> str:
        """The kid of the key that signs new tokens."""
        return self._signing.kid

    def rotate(self, *, publish: bool, keep_old: bool) -> str:
        """Sign with a fresh key from now on, and return its kid."""
        self._signing = SigningKey.create()
        if not keep_old:
            self._published.clear()
        if publish:
            self._published[self._signing.kid] = self._signing
        return self._signing.kid

    def jwks(self) -> dict[str, Any]:
        """The published public keys, as a JWKS document."""
        return {"keys": [key.public_jwk() for key in self._published.values()]}

    def sign(self, claims: dict[str, Any], *, unpublished: bool = False) -> str:
        """An RS256 JWT of ``claims``, by the signing key or (``unpublished``) the hidden one."""
        key = self._signing
        if unpublished:
            if self._unpublished is None:
                self._unpublished = SigningKey.create(shared_key(1))
            key = self._unpublished
        headers = {"kid": key.kid, "typ": "JWT"}
        return jwt.encode(claims, key.private_key, algorithm="RS256", headers=headers)

    def verify(
        self, token: str, *, audience: str | Sequence[str], issuer: str, now: float
    ) -> dict[str, Any]:
        """The claims of ``token``, signed by a published key for ``audience`` and unexpired.

        ``audience`` may be several: the token must name one of them.

        Raises a ``jwt.InvalidTokenError`` subclass.
        """
        kid = jwt.get_unverified_header(token).get("kid")
        key = self._published.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise jwt.InvalidTokenError(f"kid {kid!r} is not in the JWKS")
        claims: dict[str, Any] = jwt.decode(
            token,
            key.private_key.public_key(),
            algorithms=["RS256"],
            audience=audience,
            issuer=issuer,
            # pyjwt would compare exp with the machine's clock; ours may be a FakeClock.
            options={
                "require": ["exp", "iat", "iss", "aud", "sub"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
        if claims["exp"] <= now:
            raise jwt.ExpiredSignatureError("Signature has expired")
        return claims

    def __repr__(self) -> str:
        return f"KeyRing(signing_kid={self.signing_kid!r}, published={len(self._published)})"
