"""Outage: the IdP fails for a whole refresh window while callers keep asking.

The sidecar gets short tokens (``--lifetime``, default 30 s, ``min_ttl`` 5 s,
otherwise the default policy, backoff and breaker). Once its first token is
in, the script starts steady callers, makes the IdP answer 503 from
``--outage-start`` seconds into the token's life until ``--after-expiry``
seconds after the token expired (so the IdP is down for the whole refresh
window and beyond), then lets it recover.

Reported: caller errors while a servable token existed (must be 0), stale
answers, errors once no servable token was left (expected: the 503 of the
contract), the IdP requests and circuit openings during the outage, and the
time from IdP recovery to a fresh token (from the daemon's ``token.refreshed``
event and as the first caller saw it).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass

import aiohttp
import benchlib as bl


@dataclass
class Answer:
    at: float  # time.time()
    status: int
    stale: bool
    expires_at: int | None


async def caller(
    http: aiohttp.ClientSession, url: str, answers: list[Answer], stop: asyncio.Event, pause: float
) -> None:
    while not stop.is_set():
        try:
            async with http.get(url, headers=bl.HEADERS) as resp:
                body = await resp.json(content_type=None)
                answers.append(
                    Answer(
                        time.time(),
                        resp.status,
                        bool(body.get("stale")),
                        body.get("expires_at") if resp.status == 200 else None,
                    )
                )
        except aiohttp.ClientError:
            answers.append(Answer(time.time(), -1, stale=False, expires_at=None))
        await asyncio.sleep(pause)


def profile_extra(args: argparse.Namespace) -> dict[str, str]:
    extra = {"min_ttl": f'"{args.min_ttl}s"', "wait_timeout": '"2s"', "timeout": '"2s"'}
    if args.breaker_reset is not None:
        extra["breaker"] = f'{{ failures = 5, reset = "{args.breaker_reset}s" }}'
    if args.backoff_cap is not None:
        extra["backoff"] = f'{{ base = "1s", cap = "{args.backoff_cap}s" }}'
    return extra


async def main(args: argparse.Namespace) -> int:
    bl.print_machine()
    server_core, load_core = bl.cores()
    bl.pin_self(load_core)
    answers: list[Answer] = []
    stop = asyncio.Event()
    with bl.workdir() as wd:
        async with bl.start_idp(lifetime=args.lifetime) as idp, aiohttp.ClientSession() as http:
            sidecar = bl.sidecar_process(
                wd, bl.profile_toml(idp, **profile_extra(args)), core=server_core
            )
            try:
                await sidecar.start()
                first = await sidecar.wait_event("token.refreshed")
                url = f"{sidecar.url}/v1/token/bench"
                status, body = await bl.fetch_json(http, url, headers=bl.HEADERS)
                if status != 200:
                    raise RuntimeError(f"no first token: {status} {body}")
                expires_at = int(body["expires_at"])
                obtained_wall = time.time() - (time.monotonic() - first.received_at)
                callers = [
                    asyncio.create_task(caller(http, url, answers, stop, args.pause))
                    for _ in range(args.callers)
                ]
                outage_at = obtained_wall + args.outage_start
                await asyncio.sleep(max(0.0, outage_at - time.time()))
                refreshed_before = sidecar.count("token.refreshed")
                if refreshed_before > 1:
                    print("a refresh happened before the outage; use a later --outage-start")
                requests_before = idp.dev.token_requests
                outage_began = time.time()
                idp.dev.faults.status = args.status
                recover_at = expires_at + args.after_expiry
                await asyncio.sleep(max(0.0, recover_at - time.time()))
                idp.dev.faults.clear()
                recovered = time.time()
                recovered_mono = time.monotonic()
                outage_requests = idp.dev.token_requests - requests_before
                opened = sidecar.count("circuit.opened")
                failed_refreshes = sidecar.count("refresh.failed")
                try:
                    event = await sidecar.wait_event(
                        "token.refreshed", refreshed_before + 1, timeout=args.recovery_timeout
                    )
                    recovery = event.received_at - recovered_mono
                except TimeoutError:
                    recovery = float("nan")
                await asyncio.sleep(args.tail)
                stop.set()
                await asyncio.gather(*callers)
            finally:
                stop.set()
                await sidecar.stop()
    servable_until = expires_at - args.min_ttl  # expires_at is floored: true end is within 1 s
    during = [a for a in answers if outage_began <= a.at < recovered]
    servable = [a for a in during if a.at < servable_until - 1]
    unservable = [a for a in during if a.at >= servable_until + 1]
    seen_fresh = [
        a.at - recovered
        for a in answers
        if a.at >= recovered and a.status == 200 and not a.stale and a.expires_at != expires_at
    ]
    bl.print_table(
        f"Outage: IdP answers {args.status} from {args.outage_start:.0f} s into a "
        f"{args.lifetime} s token until {args.after_expiry:.0f} s after it expired",
        ["figure", "value", "target"],
        [
            ("outage length (s)", recovered - outage_began, "-"),
            ("caller requests during outage", len(during), "-"),
            ("  while a servable token existed", len(servable), "-"),
            ("  errors while servable", sum(a.status != 200 for a in servable), "0"),
            ("  stale answers", sum(a.stale for a in during), "-"),
            (
                "  fresh (non-stale) answers",
                sum(a.status == 200 and not a.stale for a in during),
                "-",
            ),
            ("  after the token became unservable", len(unservable), "-"),
            (
                "  errors once unservable (503 expected)",
                sum(a.status != 200 for a in unservable),
                "-",
            ),
            ("IdP token requests during outage", outage_requests, "-"),
            ("refresh.failed events", failed_refreshes, "-"),
            ("circuit.opened events", opened, "-"),
            ("recovery: IdP up to token.refreshed (s)", recovery, "-"),
            (
                "recovery: IdP up to a caller's fresh token (s)",
                min(seen_fresh, default=float("nan")),
                "-",
            ),
            (
                "errors after recovery + fresh token",
                sum(
                    a.status != 200
                    for a in answers
                    if seen_fresh and a.at >= recovered + min(seen_fresh)
                ),
                "0",
            ),
        ],
    )
    errors_servable = sum(a.status != 200 for a in servable)
    print(
        "target: 0 caller errors while a servable token exists: "
        f"{'met' if errors_servable == 0 else 'MISSED'}"
    )
    return 0 if errors_servable == 0 else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lifetime", type=int, default=30, help="token lifetime in seconds")
    parser.add_argument("--min-ttl", type=int, default=5, help="profile min_ttl in seconds")
    parser.add_argument(
        "--outage-start", type=float, default=9.0, help="seconds into the token's life"
    )
    parser.add_argument(
        "--after-expiry", type=float, default=2.0, help="outage ends this long after expiry"
    )
    parser.add_argument("--status", type=int, default=503, help="the IdP's failure status")
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument(
        "--pause", type=float, default=0.02, help="seconds between a caller's requests"
    )
    parser.add_argument("--breaker-reset", type=float, help="override breaker.reset (default 30 s)")
    parser.add_argument("--backoff-cap", type=float, help="override backoff.cap (default 60 s)")
    parser.add_argument("--recovery-timeout", type=float, default=120.0)
    parser.add_argument("--tail", type=float, default=2.0, help="load after recovery, seconds")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
