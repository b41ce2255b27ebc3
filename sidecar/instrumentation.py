"""ProfileInstruments: what one profile's refresher tells the metrics and the logs.

Every metric a refresher moves and every event it logs goes through one
:class:`ProfileInstruments`, so the refresher reads as its logic and the
event names, fields and labels of DESIGN.md live in one place. Fields name a
token only by its fingerprint.
"""

from __future__ import annotations

import logging

from sidecar.errors import FailureKind, RefreshError
from sidecar.fleet import FleetResult, SharedToken, Source
from sidecar.metrics import Metrics
from sidecar.token import HeldToken

log = logging.getLogger("sidecar.refresh")


class ProfileInstruments:
    """The metrics and log events of one profile, bound to its name."""

    def __init__(self, metrics: Metrics, profile: str) -> None:
        self._metrics = metrics
        self.profile = profile

    def holds(self, token: HeldToken) -> None:
        """The profile now holds ``token``: the expiry gauge follows it."""
        self._metrics.token_expiry.labels(self.profile).set(token.expires_at_wall)

    def served_fallback(self, reason: str) -> None:
        """A token was served in a degraded mode (``fallback_total`` reason)."""
        self._metrics.fallback_total.labels(self.profile, reason).inc()

    def invalidated(self, result: str, fingerprint: str | None) -> None:
        """A caller reported a token; ``fingerprint`` when it was dropped."""
        if fingerprint is not None:
            log.info(
                "token.invalidated", extra={"profile": self.profile, "fingerprint": fingerprint}
            )
        self._metrics.invalidations_total.labels(self.profile, result).inc()

    def credentials_changed(self) -> None:
        log.info("credentials.changed", extra={"profile": self.profile})

    def attempt_took(self, seconds: float) -> None:
        self._metrics.refresh_duration.labels(self.profile).observe(seconds)

    def crashed(self, exc: Exception) -> None:
        """An attempt died of a bug: logged with its traceback, counted as an error."""
        log.error("refresh.crashed", exc_info=exc, extra={"profile": self.profile})
        self._metrics.refresh_total.labels(self.profile, FailureKind.ERROR).inc()

    def refreshed(self, result: FleetResult, *, now: float) -> None:
        token = result.token
        self._metrics.refresh_total.labels(self.profile, "success").inc()
        if result.source is not Source.SHARED:
            self._metrics.tokens_minted.labels(self.profile).inc()
        self.holds(token)
        log.info(
            "token.refreshed",
            extra={
                "profile": self.profile,
                "fingerprint": token.fingerprint,
                "expires_in": token.expires_in(now),
                "next_refresh_in": round(token.refresh_at - now, 3),
                "source": result.source.value,
            },
        )
        if result.source is Source.LOCAL:
            # Refreshed without the shared cache: counted once per such token.
            self.served_fallback("cache_backend_down")

    def refresh_failed(
        self, exc: RefreshError, *, failures: int, retry_in: float, servable: bool
    ) -> None:
        self._metrics.refresh_total.labels(self.profile, exc.kind).inc()
        log.log(
            logging.ERROR if exc.kind.misconfigured else logging.WARNING,
            "refresh.failed",
            extra={
                "profile": self.profile,
                "kind": exc.kind,
                "error": exc.error,
                "description": exc.description or str(exc),
                "status": exc.status,
                "consecutive_failures": failures,
                "retry_in": round(retry_in, 3),
                "token_servable": servable,
            },
        )

    def shared_rejected(self, shared: SharedToken, exc: RefreshError) -> None:
        """A token from the fleet cache failed (or could not pass) vetting: not adopted."""
        self._metrics.cache_errors.labels("rejected").inc()
        log.warning(
            "cache.token_rejected",
            extra={
                "profile": self.profile,
                "fingerprint": shared.fingerprint[:12],
                "reason": exc.description or str(exc),
            },
        )

    def __repr__(self) -> str:
        return f"ProfileInstruments(profile={self.profile!r})"
