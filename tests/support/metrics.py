"""The metric names DESIGN.md promises, for tests that read an exposition."""

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
)
