#!/usr/bin/env python3
"""What the usage records of refused requests cost: the client-key and limits middlewares as they are now
(ClientKeys and Limits told of each refusal by recording.Refusals, which writes the record to stdout and the
ledger) against the same two files at a baseline git revision, side by side in one process.

    python bench/bench_refusals.py                          # baseline: HEAD (what a change in the tree costs)
    python bench/bench_refusals.py --baseline v1.2 --requests 10000 --rounds 20

A baseline's keys.py and limits.py import today's package: a revision from before gateway_kit/request.py
(where they read the body from gateway_kit.recording) no longer loads; docs/performance.md keeps what refusal
records cost when they came.

Three kinds of request go through ClientKeys -> Limits -> a trivial app: admitted (a known key, under its
limits: the hot path, which must not get slower), no key (401) and over a limit (429), which now each write one
record. The limiter answers in process (no Redis), so only the kit's own code is timed. Rounds alternate the
versions (in turn first and last). "current, no Refusals" is the current code with nothing told of refusals
(what GATEWAY_USAGE_RECORDS=off runs): on the admitted path it runs the very same code as "current", so their
difference is the measurement's noise. The figure is each one's median CPU µs per request (the process's user
+ system time, which other load on a shared machine does not add to), and its ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

from lib import baseline_module, baseline_revision

from gateway_kit import keys as current_keys
from gateway_kit import limits as current_limits

from gateway_kit.app import UsageLog
from gateway_kit.events import Events
from gateway_kit.limits import Rule
from gateway_kit.recording import Refusals
from gateway_kit.usage import Ledger

PATH = "/gateway/chat/invocations"
RULE = Rule("client_calls", "k", "c", 2, 60, "minute", "requests", None, "bench")


class Limiter:
    """The part of limits.Limiter that Limits calls, answering in process: admitted, or over RULE."""

    class config:  # noqa: N801 - stands for a LimitsConfig
        endpoints: dict = {}

    policy, where, redis_url = "open", "nowhere", "redis://nowhere"

    def __init__(self, over: bool) -> None:
        self.over = over

    def rules(self, endpoint, client):
        return [RULE]

    def available(self) -> bool:
        return True

    async def check(self, rules, now):
        return (RULE, 3, 30_000) if self.over else None


async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok":1}'})


async def receive():
    return {"type": "http.request", "body": b"{}", "more_body": False}


async def send(message):
    pass


def stacks(keys_module, limits_module, store, refused):
    """{kind of request: the middleware that serves it}, for one version of keys.py and limits.py."""
    extra = (refused,) if refused is not None else ()
    return {
        over: keys_module.ClientKeys(limits_module.Limits(app, Limiter(over), *extra), store, *extra)
        for over in (False, True)
    }


async def time_round(target, headers, n: int) -> float:
    scope = {"type": "http", "method": "POST", "path": PATH, "headers": headers}
    started = time.process_time()  # CPU time, user and system: what other processes on the machine do not add
    for _ in range(n):
        await target({**scope, "state": {"request_id": "bench"}}, receive, send)
    return (time.process_time() - started) / n * 1e6


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline",
        default="HEAD",
        help="git revision to compare with (default: HEAD)",
    )
    parser.add_argument("--requests", type=int, default=20_000, help="requests per round and kind")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per version (alternating)")
    args = parser.parse_args(argv)
    rev, args.baseline = baseline_revision(args.baseline, "bench_refusals.py")

    with tempfile.TemporaryDirectory() as work, open(os.devnull, "w") as devnull:
        keys_file = Path(work) / "keys.json"
        key = current_keys.add(keys_file, "bench")
        store = current_keys.KeyStore(keys_file)
        ledger = Ledger(Path(work) / "ledger", "bench")
        refused = Refusals("bench", Events([UsageLog(ledger)]))
        versions = {
            f"baseline {args.baseline}": stacks(
                baseline_module("keys", rev), baseline_module("limits", rev), store, None
            ),
            "current": stacks(current_keys, current_limits, store, refused),
            "current, no Refusals": stacks(current_keys, current_limits, store, None),  # the noise floor
        }
        kinds = {  # kind: (over the limit?, headers)
            "admitted (hot path)": (False, [(b"authorization", f"Bearer {key}".encode())]),
            "401, no key": (False, []),
            "429, over a limit": (True, [(b"authorization", f"Bearer {key}".encode())]),
        }
        print(f"{args.requests} requests x {args.rounds} rounds per version and kind, median CPU µs per request")
        with contextlib.redirect_stdout(devnull):  # emit() writes each record to stdout too
            figures = {}
            for kind, (over, headers) in kinds.items():
                times: dict[str, list[float]] = {v: [] for v in versions}
                for r in range(args.rounds):
                    order = list(versions.items())
                    for version, served in order if r % 2 == 0 else reversed(order):  # neither always first
                        times[version].append(await time_round(served[over], headers, args.requests))
                figures[kind] = {v: statistics.median(t) for v, t in times.items()}
        for kind, by_version in figures.items():
            base = next(iter(by_version.values()))
            print(f"{kind}:")
            for version, micros in by_version.items():
                print(f"    {version:28} {micros:7.2f} µs   {micros / base:6.3f} x baseline")
        written = sum(1 for p in ledger.directory.glob("*.jsonl") for _ in p.open())
        print(f"records written by the current version: {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
