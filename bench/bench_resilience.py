"""What resilience costs on the healthy path, side by side in one run.

    .venv/bin/python bench/bench_resilience.py              # all three parts
    .venv/bin/python bench/bench_resilience.py --no-wrk     # the in-process parts only

1. The Fallback middleware in isolation: a trivial ASGI app bare and wrapped (microseconds per request).
2. The circuit breaker in isolation, per successful provider call (before_call + record): the per-worker
   breaker (no GATEWAY_REDIS_URL) and the breaker shared through a real Redis (redis-server on a free port).
3. End to end with wrk: two kit replicas on the fake upstream, the same worker count, one without Redis
   (per-worker breakers) and one with GATEWAY_REDIS_URL (shared breakers; no limits are configured, so the
   breakers are its only use of Redis); interleaved rounds, the median round counts, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lib import Servers, chat_body, markdown_table, median_run, redis_server, wrk, wrk_script

from gateway_kit.procs import free_port
from gateway_kit.resilience import Breaker, CircuitName, Fallback, Policy, Settings
from gateway_kit.shared_redis import RedisLink

BODY = b'{"model":"chat","messages":[]}'


async def app(scope, receive, send):
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"ok":1}', "more_body": False})


async def receive():
    return {"type": "http.request", "body": BODY, "more_body": False}


async def send(message):
    pass


async def fallback_middleware(n: int) -> None:
    policy = Policy.default(Settings())
    wrapped = Fallback(app, {"chat": policy}, policy)
    for path in ("/gateway/chat/invocations", "/v1/chat/completions"):
        scope = {"type": "http", "path": path, "headers": [], "state": {}}
        for target, label in ((app, "bare"), (wrapped, "with Fallback")):
            started = time.perf_counter()
            for _ in range(n):
                await target(dict(scope), receive, send)
            print(f"{path:28} {label:14} {(time.perf_counter() - started) / n * 1e6:6.2f} us/request")


async def breaker_calls(redis_url: str, seconds: float, rounds: int) -> dict[str, float]:
    """Successful calls through each breaker for `seconds`, `rounds` times interleaved: median us per call.
    Timed by wall clock, so the shared breaker's one Redis read per second is in the figure."""
    name = CircuitName("http://127.0.0.1:9/v1", "gpt-4o-mini")
    breakers = {
        "per-worker": Breaker(name, 5, 60.0, None),
        "shared (Redis)": Breaker(name, 5, 60.0, RedisLink(redis_url)),
    }
    await breakers["shared (Redis)"].before_call()  # connect once
    results: dict[str, list[float]] = {label: [] for label in breakers}
    for _ in range(rounds):
        for label, breaker in breakers.items():
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                for _ in range(1000):
                    await breaker.record(True, await breaker.before_call())
                calls += 1000
            results[label].append((time.perf_counter() - started) / calls * 1e6)
    return {label: statistics.median(values) for label, values in results.items()}


def end_to_end(servers: Servers, work: Path, redis_url: str, args) -> dict[str, dict]:
    fake = servers.fake(free_port())
    targets = {
        "per-worker breaker": servers.kit(free_port(), fake, args.workers),
        "shared breaker (Redis)": servers.kit(free_port(), fake, args.workers, GATEWAY_REDIS_URL=redis_url),
    }
    script = wrk_script(work / "chat.lua", chat_body("How fast is the breaker?", model="chat"))
    for url in targets.values():
        wrk(f"{url}/v1/chat/completions", 2, 8, script)  # warm up
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for label, url in targets.items():
            runs.setdefault(label, []).append(
                wrk(f"{url}/v1/chat/completions", args.duration, args.connections, script)
            )
    return {label: median_run(rs) for label, rs in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50_000, help="requests per Fallback measurement (50000)")
    parser.add_argument(
        "--breaker-seconds",
        type=float,
        default=3.0,
        help="seconds per breaker measurement, at least 1 for the shared breaker's read (3)",
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk measurement (10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--workers", type=int, default=2, help="workers per kit replica (2)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median counts (3)")
    parser.add_argument("--no-wrk", action="store_true", help="skip the end-to-end part")
    args = parser.parse_args(argv)
    if not shutil.which("redis-server"):
        print("bench: error: redis-server is not installed — apt-get install redis-server", file=sys.stderr)
        return 2
    if not args.no_wrk and not shutil.which("wrk"):
        print("bench: error: wrk is not installed — apt-get install wrk, or use --no-wrk", file=sys.stderr)
        return 2

    print("1. Fallback middleware, in isolation\n")
    asyncio.run(fallback_middleware(args.calls))
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-resilience-"))
    with Servers(work) as servers:
        redis_url = redis_server(servers)
        print(
            "\n2. Circuit breaker per successful provider call, in isolation (median of "
            f"{args.rounds} interleaved rounds of {args.breaker_seconds:g} s)\n"
        )
        calls = asyncio.run(breaker_calls(redis_url, args.breaker_seconds, args.rounds))
        base = calls["per-worker"]
        print(
            markdown_table(
                ["breaker", "us per call", "vs per-worker"],
                [[label, f"{us:.2f}", f"{us / base:.2f}x"] for label, us in calls.items()],
            )
        )
        if not args.no_wrk:
            results = end_to_end(servers, work, redis_url, args)
            print(
                f"\n3. End to end: POST /v1/chat/completions, {args.workers} workers per replica, "
                f"c={args.connections}, {args.duration} s x {args.rounds} rounds (median)\n"
            )
            base_rps = results["per-worker breaker"]["rps"]
            print(
                markdown_table(
                    ["target", "requests/s", "vs per-worker", "p50 ms", "p99 ms", "errors"],
                    [
                        [
                            label,
                            f"{r['rps']:.0f}",
                            f"{r['rps'] / base_rps:.3f}x",
                            f"{r['p50_ms']:.1f}",
                            f"{r['p99_ms']:.1f}",
                            r["errors"],
                        ]
                        for label, r in results.items()
                    ],
                )
            )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
