"""IdP economy: tokens minted per profile per day, computed from the policy and confirmed.

Computed from ``sidecar.policy`` (the functions the engine schedules with):
for a ``--day-lifetime`` token (default 24 h) under the default refresh policy
(``refresh_before = "20%"``, ``min_ttl = 30 s``, jitter up to 10 % of the
window), the mean interval between refreshes and so the tokens minted per
profile per day, for 1 pod, for ``--fleet`` pods (default 50) each refreshing
on its own, and for the same pods in fleet mode (one shared token per window;
fleet mode is not implemented yet, so that figure is computed only).

Confirmed by a short-TTL run: ``--pods`` sidecar processes (default 10)
against one development IdP issuing ``--lifetime`` tokens (default 20 s,
``min_ttl`` 5 s) for ``--duration`` seconds (default 60). The measured
mean refresh interval per pod is compared with the one the same policy
functions predict for that lifetime, and the IdP's request count with
pods times the per-pod prediction.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time

import benchlib as bl

from sidecar.config import RefreshShare
from sidecar.policy import JITTER_SHARE, refresh_window

DAY = 86_400.0


def mean_interval(lifetime: float, min_ttl: float) -> tuple[float, float, float]:
    """(mean, shortest, longest) seconds between refreshes under the default policy."""
    window = refresh_window(lifetime, RefreshShare(0.2), min_ttl)
    longest = lifetime - window
    shortest = lifetime - window * (1 + JITTER_SHARE)
    return (longest + shortest) / 2, shortest, longest


def fleet_interval(lifetime: float, min_ttl: float, pods: int) -> float:
    """Mean interval when the earliest of ``pods`` jittered refreshes refreshes for all."""
    window = refresh_window(lifetime, RefreshShare(0.2), min_ttl)
    # The largest of n uniform(0, J*w) jitters has mean J*w*n/(n+1).
    return lifetime - window - JITTER_SHARE * window * pods / (pods + 1)


async def confirm(args: argparse.Namespace) -> tuple[list[list[float]], int, float]:
    """Run the pods; (refresh instants per pod, IdP token requests, seconds run)."""
    server_core, load_core = bl.cores()
    bl.pin_self(load_core)
    with bl.workdir() as wd:
        async with bl.start_idp(lifetime=args.lifetime) as idp:
            toml = bl.profile_toml(idp, min_ttl=f'"{args.min_ttl}s"')
            pods = [bl.sidecar_process(wd, toml, core=server_core) for _ in range(args.pods)]
            try:
                for pod in pods:
                    await pod.start(wait_for=None)
                for pod in pods:
                    await pod.wait_event("token.refreshed", timeout=60)
                start = time.monotonic()
                base = idp.dev.token_requests
                await asyncio.sleep(args.duration)
                requests = idp.dev.token_requests - base
                elapsed = time.monotonic() - start
            finally:
                await asyncio.gather(*(pod.stop() for pod in pods))
    instants = [[e.received_at for e in pod.named("token.refreshed")] for pod in pods]
    return instants, requests, elapsed


async def main(args: argparse.Namespace) -> int:
    bl.print_machine()
    day_mean, day_short, day_long = mean_interval(args.day_lifetime, 30.0)
    per_pod = DAY / day_mean
    fleet = DAY / fleet_interval(args.day_lifetime, 30.0, args.fleet)
    window = refresh_window(args.day_lifetime, RefreshShare(0.2), 30.0)
    bl.print_table(
        f"Computed: tokens minted per profile per day, {args.day_lifetime / 3600:.0f} h tokens, "
        f"default policy (window {window:.0f} s, jitter up to {window * JITTER_SHARE:.0f} s)",
        ["deployment", "tokens/day", "range", "note"],
        [
            ("1 pod", per_pod, f"{DAY / day_long:.3f}-{DAY / day_short:.3f}", "+1 per pod start"),
            (
                f"{args.fleet} pods, memory cache",
                per_pod * args.fleet,
                f"{DAY / day_long * args.fleet:.1f}-{DAY / day_short * args.fleet:.1f}",
                f"+{args.fleet} per fleet rollout",
            ),
            (
                f"{args.fleet} pods, fleet mode (redis)",
                fleet,
                "-",
                "computed only: fleet mode is not implemented yet",
            ),
        ],
    )
    instants, requests, elapsed = await confirm(args)
    gaps = [b - a for pod in instants for a, b in itertools.pairwise(pod)]
    # The sidecar sees lifetime min(expires_in, exp - now) and exp is whole seconds,
    # so the lifetime it schedules with is between L-1 and L.
    lo_mean = mean_interval(args.lifetime - 1, args.min_ttl)[0]
    hi_mean = mean_interval(args.lifetime, args.min_ttl)[0]
    predicted = (lo_mean + hi_mean) / 2
    measured = statistics.mean(gaps) if gaps else float("nan")
    predicted_requests = args.pods * elapsed / predicted
    bl.print_table(
        f"Confirmed: {args.pods} pods, {args.lifetime} s tokens (min_ttl {args.min_ttl} s), "
        f"{elapsed:.0f} s",
        ["figure", "measured", "predicted by sidecar.policy"],
        [
            ("mean refresh interval per pod (s)", measured, f"{lo_mean:.2f}-{hi_mean:.2f}"),
            ("refreshes measured", len(gaps), "-"),
            ("IdP token requests, all pods", requests, f"{predicted_requests:.1f}"),
            (
                "IdP token requests per pod",
                requests / args.pods,
                f"{predicted_requests / args.pods:.2f}",
            ),
            ("measured / predicted interval", measured / predicted, "1.00"),
        ],
    )
    scaled = per_pod * predicted / measured if measured else float("nan")
    print(
        f"24 h tokens per pod per day, corrected by the measured/predicted ratio: {scaled:.3f} "
        f"(policy: {per_pod:.3f})"
    )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--day-lifetime", type=float, default=DAY, help="token lifetime to compute for"
    )
    parser.add_argument("--fleet", type=int, default=50, help="pods in the computed fleet")
    parser.add_argument("--pods", type=int, default=10, help="sidecar processes in the run")
    parser.add_argument("--lifetime", type=int, default=20, help="token lifetime in the run")
    parser.add_argument("--min-ttl", type=int, default=5, help="min_ttl in the run")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the run")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
