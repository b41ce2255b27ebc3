"""Metrics: the Prometheus metrics of DESIGN.md, registered on an injected registry.

A :class:`Metrics` is created once per daemon (and once per test) on its own
``CollectorRegistry``; nothing is registered on the global registry at import
time. Label values come only from config (profile names) and fixed enums.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from sidecar._version import __version__
from sidecar.errors import FailureKind

REFRESH_RESULTS = ("success", *(kind.value for kind in FailureKind))
REQUEST_OUTCOMES = ("served", "stale", "unavailable", "denied")
FALLBACK_REASONS = ("refresh_failing", "circuit_open", "cache_backend_down")
INVALIDATION_RESULTS = ("refreshed", "already_rotated", "throttled")
CACHE_ERROR_REASONS = ("unavailable", "undecryptable", "unencrypted", "malformed", "rejected")
PROXY_RETRY_RESULTS = ("retried", "not_replayable", "throttled")
PERSIST_RESTORE_RESULTS = (
    "restored",
    "expired",
    "rejected",
    "undecryptable",
    "unencrypted",
    "malformed",
    "unreadable",
)
PERSIST_WRITE_RESULTS = ("success", "error")
EXCHANGE_RESULTS = (
    *("success", "invalid_subject", "subject_rejected", "denied"),
    *("rate_limited", "error", "circuit_open"),
)
EXCHANGE_CACHE_OUTCOMES = ("hit", "miss", "coalesced", "negative")
#: Upper bounds of ``token_sidecar_proxy_duration_seconds`` (``+Inf`` follows).
PROXY_DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    float("inf"),
)
#: Their ``le`` label values, as prometheus_client writes them.
_BUCKET_LABELS = tuple("+Inf" if b == float("inf") else repr(b) for b in PROXY_DURATION_BUCKETS)


class OutcomeCounter(Collector):
    """A counter ``NAME_total{profile, outcome}`` on a hot path, counted in plain numbers.

    Used for every token API request and every exchange cache lookup. A
    ``prometheus_client`` counter child takes a lock and three calls per
    increment; this keeps one list per label pair, read when the registry is
    collected. The exposition is the same: a counter family with ``_total``
    and ``_created`` samples. Only the event loop increments, so no lock is
    needed.
    """

    def __init__(self, registry: CollectorRegistry, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        # (profile, outcome) -> [count, created UNIX time]
        self._counts: dict[tuple[str, str], list[float]] = {}
        registry.register(self)

    def inc(self, profile: str, outcome: str) -> None:
        """Count one request."""
        entry = self._counts.get((profile, outcome))
        if entry is None:
            entry = self._counts[profile, outcome] = [0.0, time.time()]
        entry[0] += 1

    def series(self, profile: str, outcome: str) -> list[float]:
        """The live ``[count, created]`` of one series, exported from now on.

        For the hottest paths: ``series[0] += 1`` counts without a call. After
        :meth:`remove`, counts into a list taken before go nowhere.
        """
        return self._counts.setdefault((profile, outcome), [0.0, time.time()])

    def add(self, profile: str, outcome: str) -> None:
        """Export ``profile``'s ``outcome`` series at zero, if it is not yet there."""
        self._counts.setdefault((profile, outcome), [0.0, time.time()])

    def remove(self, profile: str, outcome: str) -> None:
        """Stop exporting a series."""
        self._counts.pop((profile, outcome), None)

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for labels, (count, created) in list(self._counts.items()):
            family.add_metric(labels, count, created=created)
        yield family

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=("profile", "outcome"))


class UpstreamSeries:
    """One upstream's proxy counters, duration histogram and active gauge, in plain numbers.

    Only the event loop changes them, so no lock is needed; :class:`UpstreamCounters`
    reads them when the registry is collected.
    """

    __slots__ = ("active", "buckets", "codes", "created", "duration_sum")

    def __init__(self) -> None:
        self.active = 0
        #: code -> [count, created UNIX time]
        self.codes: dict[str, list[float]] = {}
        #: Observations per bucket (not cumulative), one per bound of PROXY_DURATION_BUCKETS.
        self.buckets = [0] * len(PROXY_DURATION_BUCKETS)
        self.duration_sum = 0.0
        self.created = time.time()

    def count(self, code: str) -> None:
        """Count one request answered with ``code``."""
        entry = self.codes.get(code)
        if entry is None:
            entry = self.codes[code] = [0.0, time.time()]
        entry[0] += 1

    def observe(self, seconds: float) -> None:
        """One duration: into the first bucket whose bound is at least ``seconds``."""
        self.buckets[bisect_left(PROXY_DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds


class UpstreamCounters(Collector):
    """``token_sidecar_proxy_requests_total``, ``_duration_seconds`` and ``_active``.

    A proxied request moved a counter, a histogram and a gauge through
    ``prometheus_client`` children: a lock and several calls each. This keeps
    an :class:`UpstreamSeries` per upstream; the exposition is what
    ``prometheus_client``'s Counter, Histogram and Gauge give (``_total`` and
    ``_created``; ``_bucket``, ``_count``, ``_sum`` and ``_created``; the value).
    """

    REQUESTS = "token_sidecar_proxy_requests"
    REQUESTS_HELP = (
        "Proxied requests by upstream and answer: 1xx..5xx from the upstream, "
        "or the sidecar's own error code."
    )
    DURATION = "token_sidecar_proxy_duration_seconds"
    DURATION_HELP = "Time from a proxied request's arrival until the upstream's response headers."
    ACTIVE = "token_sidecar_proxy_active"
    ACTIVE_HELP = "Proxied requests in progress, streams included."

    def __init__(self, registry: CollectorRegistry) -> None:
        self._series: dict[str, UpstreamSeries] = {}
        registry.register(self)

    def add(self, upstream: str) -> UpstreamSeries:
        """``upstream``'s series, exported from now on (at zero when new)."""
        series = self._series.get(upstream)
        if series is None:
            series = self._series[upstream] = UpstreamSeries()
        return series

    def remove(self, upstream: str) -> None:
        """Stop exporting ``upstream``'s series."""
        self._series.pop(upstream, None)

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        requests, duration, active = self._families()
        for upstream, series in list(self._series.items()):
            for code, (count, created) in list(series.codes.items()):
                requests.add_metric((upstream, code), count, created=created)
            cumulative, buckets = 0.0, []
            for label, observed in zip(_BUCKET_LABELS, series.buckets, strict=True):
                cumulative += observed
                buckets.append((label, cumulative))
            duration.add_metric((upstream,), buckets, series.duration_sum)
            duration.samples.append(
                Sample(f"{self.DURATION}_created", {"upstream": upstream}, series.created)
            )
            active.add_metric((upstream,), series.active)
        yield from (requests, duration, active)

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily(self.REQUESTS, self.REQUESTS_HELP, labels=("upstream", "code")),
            HistogramMetricFamily(self.DURATION, self.DURATION_HELP, labels=("upstream",)),
            GaugeMetricFamily(self.ACTIVE, self.ACTIVE_HELP, labels=("upstream",)),
        )


class Metrics:
    """Every metric the sidecar exports, bound to one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.refresh_total = Counter(
            "token_sidecar_refresh_total",
            "Token refresh attempts by result.",
            ["profile", "result"],
            registry=r,
        )
        self.refresh_duration = Histogram(
            "token_sidecar_refresh_duration_seconds",
            "Time spent on one token refresh attempt, including verification.",
            ["profile"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.token_expiry = Gauge(
            "token_sidecar_token_expiry_timestamp_seconds",
            "UNIX time at which the current token of a profile expires.",
            ["profile"],
            registry=r,
        )
        self.token_requests = OutcomeCounter(
            r, "token_sidecar_token_requests", "Token API requests by outcome."
        )
        self.fallback_total = Counter(
            "token_sidecar_fallback_total",
            "Tokens served or refreshed in a degraded mode, by reason.",
            ["profile", "reason"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "token_sidecar_circuit_state",
            "Circuit breaker state of the profile's token endpoint: 0 closed, 1 half-open, 2 open.",
            ["profile"],
            registry=r,
        )
        self.invalidations_total = Counter(
            "token_sidecar_invalidations_total",
            "Caller reports of rejected tokens, by result.",
            ["profile", "result"],
            registry=r,
        )
        self.ready = Gauge(
            "token_sidecar_ready",
            "1 when every required profile holds a servable token.",
            registry=r,
        )
        self.tokens_minted = Counter(
            "token_sidecar_tokens_minted_total",
            "Tokens this sidecar obtained from the IdP (sum over the fleet for IdP issuance).",
            ["profile"],
            registry=r,
        )
        self.cache_up = Gauge(
            "token_sidecar_cache_backend_up",
            "1 while the token cache backend answers (always 1 for memory).",
            registry=r,
        )
        self.cache_up.set(1)
        self.cache_errors = Counter(
            "token_sidecar_cache_errors_total",
            "Shared token cache failures: backend unavailable, or a value that could not be read.",
            ["reason"],
            registry=r,
        )
        for reason in CACHE_ERROR_REASONS:
            self.cache_errors.labels(reason=reason)
        self.persist_restore = Counter(
            "token_sidecar_persist_restore_total",
            "Tokens read from the cold-start file at start, by result (whole-file problems "
            "count once as malformed or unreadable).",
            ["result"],
            registry=r,
        )
        self.persist_writes = Counter(
            "token_sidecar_persist_writes_total",
            "Writes of the cold-start file, by result.",
            ["result"],
            registry=r,
        )
        self.upstream_counters = UpstreamCounters(r)
        self.proxy_retries = Counter(
            "token_sidecar_proxy_retries_total",
            "Upstream 401 answers by what the proxy did: retried, not_replayable, throttled.",
            ["upstream", "result"],
            registry=r,
        )
        self.exchange_total = Counter(
            "token_sidecar_exchange_total",
            "Exchanges of users' tokens by result: those sent to the IdP, and those refused "
            "before it (invalid_subject, rate_limited, circuit_open).",
            ["profile", "result"],
            registry=r,
        )
        self.exchange_cache_total = OutcomeCounter(
            r,
            "token_sidecar_exchange_cache",
            "Per-user token cache lookups by outcome: hit, miss, coalesced (waited for another "
            "caller's exchange), negative (a remembered rejection).",
        )
        self.exchange_cache_entries = Gauge(
            "token_sidecar_exchange_cache_entries",
            "Per-user tokens held in the cache of an exchange profile.",
            ["profile"],
            registry=r,
        )
        self.exchange_cache_capacity = Gauge(
            "token_sidecar_exchange_cache_capacity",
            "The per-user cache's bound (cache_max_entries) of an exchange profile.",
            ["profile"],
            registry=r,
        )
        self.exchange_duration = Histogram(
            "token_sidecar_exchange_duration_seconds",
            "Time spent on one exchange at the IdP, including verification of the issued token.",
            ["profile"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.build_info = Gauge(
            "token_sidecar_build_info",
            "Build information; the value is always 1.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=__version__).set(1)
        #: The token API's hot path calls this directly.
        self.count_request = self.token_requests.inc

    def add_profile(self, profile: str) -> None:
        """Create every labelled series of a profile at zero, so dashboards see them at once."""
        for result in REFRESH_RESULTS:
            self.refresh_total.labels(profile=profile, result=result)
        for outcome in REQUEST_OUTCOMES:
            self.token_requests.add(profile, outcome)
        for reason in FALLBACK_REASONS:
            self.fallback_total.labels(profile=profile, reason=reason)
        for result in INVALIDATION_RESULTS:
            self.invalidations_total.labels(profile=profile, result=result)
        self.refresh_duration.labels(profile=profile)
        self.tokens_minted.labels(profile=profile)
        self.circuit_state.labels(profile=profile).set(0)

    def add_persistence(self) -> None:
        """Create the cold-start file's series at zero (only when ``persist_file`` is set)."""
        for result in PERSIST_RESTORE_RESULTS:
            self.persist_restore.labels(result)
        for result in PERSIST_WRITE_RESULTS:
            self.persist_writes.labels(result)

    def add_exchange_profile(
        self, profile: str, entries: Callable[[], float], capacity: int
    ) -> None:
        """Create an exchange profile's series at zero; ``entries`` is read at every scrape.

        ``capacity`` is the cache's bound, exported so alerts can compare the two.
        """
        for result in EXCHANGE_RESULTS:
            self.exchange_total.labels(profile, result)
        for outcome in EXCHANGE_CACHE_OUTCOMES:
            self.exchange_cache_total.add(profile, outcome)
        self.exchange_duration.labels(profile)
        self.exchange_cache_entries.labels(profile).set_function(entries)
        self.exchange_cache_capacity.labels(profile).set(capacity)

    def remove_exchange_profile(self, profile: str) -> None:
        """Drop an exchange profile's series (after a reload removed or changed it)."""
        for result in EXCHANGE_RESULTS:
            self.exchange_total.remove(profile, result)
        for outcome in EXCHANGE_CACHE_OUTCOMES:
            self.exchange_cache_total.remove(profile, outcome)
        self.exchange_duration.remove(profile)
        self.exchange_cache_entries.remove(profile)
        self.exchange_cache_capacity.remove(profile)
        try:
            self.circuit_state.remove(profile)
        except KeyError:
            return  # never set for this profile: nothing more to drop

    def add_upstream(self, upstream: str) -> UpstreamSeries:
        """Create an upstream's fixed series at zero (codes appear as they occur).

        Returns the plain numbers its proxied requests move.
        """
        for result in PROXY_RETRY_RESULTS:
            self.proxy_retries.labels(upstream, result)
        return self.upstream_counters.add(upstream)

    def remove_upstream(self, upstream: str) -> None:
        """Drop an upstream's series (after a reload removed it)."""
        self.upstream_counters.remove(upstream)
        for result in PROXY_RETRY_RESULTS:
            self.proxy_retries.remove(upstream, result)

    def remove_profile(self, profile: str) -> None:
        """Drop a profile's series (after a reload removed it)."""
        for outcome in REQUEST_OUTCOMES:
            self.token_requests.remove(profile, outcome)
        for metric, label_sets in (
            (self.refresh_total, [(profile, r) for r in REFRESH_RESULTS]),
            (self.fallback_total, [(profile, r) for r in FALLBACK_REASONS]),
            (self.invalidations_total, [(profile, r) for r in INVALIDATION_RESULTS]),
        ):
            for labels in label_sets:
                metric.remove(*labels)
        for single in (
            self.refresh_duration,
            self.token_expiry,
            self.circuit_state,
            self.tokens_minted,
        ):
            try:
                single.remove(profile)
            except KeyError:
                continue  # never set for this profile: nothing to drop
