"""The dev IdP's signing keys: RSA key generation and the published JWK of each key."""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from typing import Any

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
def _shared_key(slot: int) -> rsa.RSAPrivateKey:
    # Every DevIdP starts with the same key material (under its own random kid),
    # so a test suite that builds hundreds of IdPs pays for key generation once.
    del slot
    return generate_private_key()


@dataclass(frozen=True, repr=False)
class _SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey

    @classmethod
    def create(cls, private_key: rsa.RSAPrivateKey | None = None) -> _SigningKey:
        return cls(secrets.token_hex(8), private_key or generate_private_key())

    def public_jwk(self) -> dict[str, Any]:
        jwk = dict(RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def __repr__(self) -> str:
        return f"_SigningKey(kid={self.kid!r})"
