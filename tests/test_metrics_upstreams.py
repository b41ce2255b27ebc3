"""The proxy's plain-number metrics expose exactly what prometheus_client's own metrics would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sidecar.metrics import PROXY_DURATION_BUCKETS, Metrics, UpstreamCounters

DURATIONS = (0.0, 0.001, 0.0011, 0.003, 0.01, 0.7, 2.5, 29.0, 30.0, 31.0, 1e6)


def reference(observations: dict[str, tuple[dict[str, int], tuple[float, ...], int]]) -> bytes:
    """The exposition of the same observations through prometheus_client's metric classes."""
    registry = CollectorRegistry()
    requests = Counter(
        UpstreamCounters.REQUESTS,
        UpstreamCounters.REQUESTS_HELP,
        ["upstream", "code"],
        registry=registry,
    )
    duration = Histogram(
        UpstreamCounters.DURATION,
        UpstreamCounters.DURATION_HELP,
        ["upstream"],
        buckets=PROXY_DURATION_BUCKETS,
        registry=registry,
    )
    active = Gauge(
        UpstreamCounters.ACTIVE, UpstreamCounters.ACTIVE_HELP, ["upstream"], registry=registry
    )
    for upstream, (codes, durations, in_progress) in observations.items():
        for code, count in codes.items():
            requests.labels(upstream, code).inc(count)
        child = duration.labels(upstream)  # as add_upstream did: all buckets at zero
        for seconds in durations:
            child.observe(seconds)
        active.labels(upstream).set(in_progress)
    return generate_latest(registry)


def without_created(exposition: bytes) -> list[str]:
    """The lines of an exposition, ``_created`` series (instants) left out, in a fixed order."""
    lines = exposition.decode().splitlines()
    return sorted(line for line in lines if "_created" not in line)


def test_exposition_matches_prometheus_client():
    """Counters, histogram buckets, sum, count and gauge read as prometheus_client writes them."""
    metrics = Metrics()
    api, billing = metrics.add_upstream("api"), metrics.add_upstream("billing")
    for code, times in (("2xx", 3), ("5xx", 1), ("upstream_timeout", 2)):
        for _ in range(times):
            api.count(code)
    for seconds in DURATIONS:
        api.observe(seconds)
    api.active = 2
    billing.count("4xx")
    mine = generate_latest(metrics.registry)
    expected = reference(
        {
            "api": ({"2xx": 3, "5xx": 1, "upstream_timeout": 2}, DURATIONS, 2),
            "billing": ({"4xx": 1}, (), 0),
        }
    )
    proxy_lines = [
        line
        for line in without_created(mine)
        if "proxy_requests" in line or "proxy_duration" in line or "proxy_active" in line
    ]
    assert proxy_lines == without_created(expected)
    # The _created series exist for each counter and histogram child, as prometheus_client's.
    created = [line for line in mine.decode().splitlines() if "_created{" in line]
    assert sum("proxy_requests_created" in line for line in created) == 4
    assert sum("proxy_duration_seconds_created" in line for line in created) == 2


def test_removed_upstream_is_no_longer_exposed():
    """After remove_upstream none of its proxy series remain; the other upstream's stay."""
    metrics = Metrics()
    metrics.add_upstream("api").count("2xx")
    metrics.add_upstream("billing").count("2xx")
    metrics.remove_upstream("api")
    exposed = generate_latest(metrics.registry).decode()
    assert 'upstream="api"' not in exposed
    assert 'upstream="billing"' in exposed  # the positive control
