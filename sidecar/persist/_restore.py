"""Restoring held tokens from the cold-start file at start, and checking their signatures later.

:func:`restore_tokens` runs once, before the refresh loops start. For each
profile it opens the entry of the profile's token identity (so a profile
whose endpoint, client, audience, resource, scope or extra parameters
changed finds nothing), skips a token with ``min_ttl`` or less left, and vets
the rest with :meth:`~sidecar.minter.TokenMinter.vet_sealed`: the seal stands
for the signature, and ``iss``, ``aud``, client and expiry must match the
profile. A token that passes is served at once; no IdP request is made.

For a profile that checks signatures (``verify = "jwks"``),
:func:`confirm_signature` then checks the restored token against the JWKS as
soon as the JWKS answers (it may be down with the rest of the IdP: then it
retries with the profile's backoff). A token that fails is withdrawn at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sidecar.clock import Clock
from sidecar.credentials import CredentialStore
from sidecar.errors import CredentialsError, IdPUnavailableError, InvalidTokenError, RefreshError
from sidecar.fleet import SharedToken, identity_of
from sidecar.metrics import Metrics
from sidecar.persist._token_file import TokenFile
from sidecar.policy import backoff_delay
from sidecar.refresher import ProfileRefresher

log = logging.getLogger("sidecar.persist")


@dataclass(frozen=True)
class Restored:
    """A token a profile took from the file, and the client id it was vetted for."""

    refresher: ProfileRefresher
    shared: SharedToken
    client_id: str


def restore_tokens(
    token_file: TokenFile,
    refreshers: Iterable[ProfileRefresher],
    *,
    environ: Mapping[str, str],
    clock: Clock,
    metrics: Metrics,
) -> list[Restored]:
    """Load the file and give each profile its stored token if it passes; returns the restored."""
    token_file.load()
    restored = []
    for refresher in refreshers:
        try:
            client_id = CredentialStore(refresher.profile, environ).load().client_id
        except CredentialsError as exc:
            # Without the client id there is no identity to look up, nor a client to match.
            log.warning(
                "persist.restore_skipped",
                extra={"profile": refresher.name, "reason": _reason(exc)},
            )
            continue
        shared = _restore_one(token_file, refresher, client_id, clock=clock, metrics=metrics)
        if shared is not None:
            restored.append(Restored(refresher, shared, client_id))
    return restored


def _restore_one(
    token_file: TokenFile,
    refresher: ProfileRefresher,
    client_id: str,
    *,
    clock: Clock,
    metrics: Metrics,
) -> SharedToken | None:
    identity = identity_of(refresher.profile, client_id)
    shared = token_file.stored(identity, profile=refresher.name)
    if shared is None:
        return None
    fields = {"profile": refresher.name, "fingerprint": shared.fingerprint}
    if shared.expires_at - clock.time() <= refresher.profile.min_ttl:
        metrics.persist_restore.labels("expired").inc()
        log.info("persist.token_expired", extra=fields)
        return None
    try:
        token = refresher.minter.vet_sealed(shared, client_id)
    except InvalidTokenError as exc:
        metrics.persist_restore.labels("rejected").inc()
        log.warning("persist.token_rejected", extra=fields | {"reason": _reason(exc)})
        return None
    if not refresher.restore(token, identity):
        return None
    metrics.persist_restore.labels("restored").inc()
    now = clock.monotonic()
    log.info(
        "persist.token_restored",
        extra=fields
        | {
            "expires_in": token.expires_in(now),
            "next_refresh_in": round(token.refresh_at - now, 3),
        },
    )
    return shared


async def confirm_signature(
    restored: Restored, *, clock: Clock, metrics: Metrics, rng: random.Random
) -> None:
    """Check a restored token's JWKS signature; withdraw the token if it fails.

    Retries with the profile's backoff while the JWKS cannot be had, and ends
    early once the profile no longer holds the token (refreshed, invalidated).
    """
    refresher, shared = restored.refresher, restored.shared
    backoff = refresher.profile.backoff
    fields = {"profile": refresher.name, "fingerprint": shared.fingerprint}
    attempt = 0
    while _still_held(refresher, shared):
        try:
            await refresher.minter.vet_shared(shared, restored.client_id)
        except InvalidTokenError as exc:
            if refresher.withdraw(shared.fingerprint):
                metrics.persist_restore.labels("rejected").inc()
                log.warning("persist.token_withdrawn", extra=fields | {"reason": _reason(exc)})
            return
        except IdPUnavailableError as exc:
            attempt += 1
            delay = backoff_delay(attempt, base=backoff.base, cap=backoff.cap, rng=rng)
            # Once at info: the JWKS is down with the IdP; the token is served meanwhile.
            log.log(
                logging.INFO if attempt == 1 else logging.DEBUG,
                "persist.signature_unchecked",
                extra=fields | {"reason": _reason(exc), "retry_in": round(delay, 3)},
            )
            await clock.sleep(delay)
            continue
        log.info("persist.signature_checked", extra=fields)
        return


def _still_held(refresher: ProfileRefresher, shared: SharedToken) -> bool:
    held = refresher.held()
    return held is not None and held[1].fingerprint == shared.fingerprint


def _reason(exc: RefreshError) -> str:
    return exc.description or str(exc)
