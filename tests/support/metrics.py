"""The metric names DESIGN.md promises, and reading one sample from a registry."""

from __future__ import annotations

from typing import Any


def sample(metrics: Any, name: str, **labels: str) -> float:
    """The value of one sample of ``metrics.registry`` (0.0 when never set)."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


METRIC_NAMES = (
    "token_sidecar_refresh_total",
    "token_sidecar_refresh_duration_seconds",
    "token_sidecar_token_expiry_timestamp_seconds",
    "token_sidecar_token_requests_total",
    "token_sidecar_fallback_total",
    "token_sidecar_circuit_state",
    "token_sidecar_invalidations_total",
    "token_sidecar_ready",
    "token_sidecar_build_info",
    "token_sidecar_exchange_total",
    "token_sidecar_exchange_cache_total",
    "token_sidecar_exchange_cache_entries",
    "token_sidecar_exchange_cache_capacity",
    "token_sidecar_exchange_duration_seconds",
)
