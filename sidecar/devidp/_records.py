"""What the dev IdP knows about clients and requests: registered clients, recorded requests.

Secrets stay out of every repr: :class:`DevClient` hides its secret and key,
:class:`MaskedValues` shows only the names of the values it holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.files import SECRET_LIMIT, read_small_text


@dataclass(repr=False)
class DevClient:
    """A registered machine-to-machine application.

    ``audiences`` maps each API the client may call to the scopes granted
    there (Auth0 "client grants"); an audience not in it is refused.
    ``subject_audiences`` are the APIs whose users' tokens the client may
    exchange (its own API identifier, as Auth0's "Custom API client" has it);
    the exchange grants are allowed only when named in ``grant_types``. With
    ``secret_file``, the secret is whatever that file holds at each request
    (``token-sidecar dev --idp-only`` shares it with the sidecar's config, so
    writing a new secret to it is a rotation). The repr never shows the secret
    or the key.
    """

    client_id: str
    client_secret: str | None = None
    public_key_pem: bytes | None = None
    audiences: dict[str, tuple[str, ...]] = field(default_factory=dict)
    grant_types: tuple[str, ...] = ("client_credentials",)
    subject_audiences: tuple[str, ...] = ()
    secret_file: Path | None = None

    def expected_secret(self) -> str | None:
        """The secret a request must present now; None accepts no secret at all."""
        if self.secret_file is None:
            return self.client_secret
        try:
            return read_small_text(self.secret_file, SECRET_LIMIT).strip() or None
        except (OSError, UnicodeDecodeError):
            return None  # a missing or unreadable file accepts no secret

    def __repr__(self) -> str:
        secret = "[secure]" if self.client_secret is not None else None
        key = "[set]" if self.public_key_pem is not None else None
        file = "" if self.secret_file is None else f", secret_file={str(self.secret_file)!r}"
        return (
            f"DevClient(client_id={self.client_id!r}, client_secret={secret}, "
            f"public_key_pem={key}, audiences={sorted(self.audiences)!r}, "
            f"grant_types={self.grant_types!r}{file})"
        )


class MaskedValues(Mapping[str, str]):
    """Secret request values (client secret, client assertion) whose repr shows only names."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})

    def __getitem__(self, key: str) -> str:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"MaskedValues({', '.join(f'{name}=[secure]' for name in self._values)})"


@dataclass
class RecordedRequest:
    """One request to the token endpoint, as the IdP saw and answered it.

    ``fields`` holds the body without ``client_secret``, ``client_assertion``
    and the exchanged user tokens (``subject_token``, ``assertion``,
    ``actor_token``); those (and a Basic-auth secret) live only in
    ``sensitive``, which masks them.
    ``status`` stays ``None`` while the request hangs and when it was reset.
    """

    content_type: str
    fields: dict[str, str] = field(default_factory=dict)
    sensitive: MaskedValues = field(default_factory=MaskedValues)
    auth_method: str | None = None
    client_id: str | None = None
    status: int | None = None
    error: str | None = None

    @property
    def client_secret(self) -> str | None:
        """The client secret sent (in the body or a Basic header), if any."""
        return self.sensitive.get("client_secret")

    @property
    def client_assertion(self) -> str | None:
        """The ``private_key_jwt`` client assertion sent, if any."""
        return self.sensitive.get("client_assertion")

    @property
    def subject_token(self) -> str | None:
        """The user's token of an exchange: RFC 8693 ``subject_token`` or OBO ``assertion``."""
        return self.sensitive.get("subject_token") or self.sensitive.get("assertion")
