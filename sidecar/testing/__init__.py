"""Helpers for tests and benchmarks: a virtual clock, a ``serve`` child process, token seeding.

- :class:`FakeClock` and :func:`settle` (``_clock``): time that moves only when told to.
- :class:`SidecarProcess` (``_process``): ``python -m sidecar serve`` as a child
  process, awaited through the JSON log events it writes, never by sleeping;
  tests and the benchmarks in ``bench/`` share it, with :func:`free_port` and
  :func:`clean_environ`.
- :class:`PrometheusProcess` (``_prometheus``): a real Prometheus scraping
  sidecars, for the dashboard's test and its picture.
- :func:`seed_token` (``_seed``): a profile holds a given token at once, for
  measuring the serving path without an IdP.
"""

from sidecar.testing._clock import DEFAULT_WALL_START, FakeClock, settle
from sidecar.testing._process import (
    START_TIMEOUT,
    LogEvent,
    SidecarProcess,
    clean_environ,
    free_port,
)
from sidecar.testing._prometheus import PrometheusError, PrometheusProcess, prometheus_binary
from sidecar.testing._seed import seed_token

__all__ = [
    "DEFAULT_WALL_START",
    "START_TIMEOUT",
    "FakeClock",
    "LogEvent",
    "PrometheusError",
    "PrometheusProcess",
    "SidecarProcess",
    "clean_environ",
    "free_port",
    "prometheus_binary",
    "seed_token",
    "settle",
]
