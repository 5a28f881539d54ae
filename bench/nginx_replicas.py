"""nginx in front: throughput with 1, 2 and 3 replicas, and what nginx adds to the time to first token.

    .venv/bin/python bench/nginx_replicas.py                 # c=32, 10 s per measurement, 2 rounds
    .venv/bin/python bench/nginx_replicas.py --replicas 1 2 3 --streams 300

The local stack (scripts/local_stack.sh: nginx, replicas, the fake upstream at 0 ms) is scaled between
measurements exactly as `scripts/scale.sh` would, with no nginx reload. On this 2-core machine more replicas
cannot add throughput (wrk, nginx, the fake and every worker share the cores); the question is what they
cost. Time to first token: streamed chat requests one after another on a kept-alive connection, through nginx
and straight to replica 1, interleaved; the difference of the medians is nginx's share.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lib import chat_body, local_stack, markdown_table, median_run, wrk, wrk_script

NGINX = ("127.0.0.1", 5000)
REPLICA_1 = ("127.0.10.1", 8000)
SCALE_SETTLE_S = 7  # nginx re-resolves the replicas every 5 s (resolver valid=5s)


def first_token_ms(conn: http.client.HTTPConnection, body: str) -> float:
    """Milliseconds from sending a streamed request to its first `data:` line; reads the rest too."""
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"bench: error: stream answered {response.status}: {response.read()[:200]!r}")
    ttft = None
    while line := response.readline():
        if ttft is None and line.startswith(b"data:"):
            ttft = (time.perf_counter() - started) * 1000
    return ttft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3], help="replica counts (default 1 2 3)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the median counts (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="workers per replica (default 2)")
    parser.add_argument("--streams", type=int, default=200, help="streamed requests per path for TTFT (default 200)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-nginx-"))
    script = wrk_script(work / "post.lua", chat_body("How fast is nginx?", model="chat"))
    url = f"http://{NGINX[0]}:{NGINX[1]}/v1/chat/completions"
    runs: dict[int, list[dict]] = {n: [] for n in args.replicas}
    ttft: dict[str, list[float]] = {"nginx": [], "direct": []}
    with local_stack(work, replicas=args.replicas[0], workers=args.workers) as scale:
        wrk(url, 2, args.connections, script)
        for _ in range(args.rounds):
            for n in args.replicas:
                scale(n)
                time.sleep(SCALE_SETTLE_S)
                runs[n].append(wrk(url, args.duration, args.connections, script))
        scale(max(args.replicas))
        time.sleep(SCALE_SETTLE_S)
        body = chat_body("Stream me a short answer.", model="chat", stream=True)
        connections = {
            "nginx": http.client.HTTPConnection(*NGINX, timeout=30),
            "direct": http.client.HTTPConnection(*REPLICA_1, timeout=30),
        }
        for name, conn in connections.items():  # warm up
            first_token_ms(conn, body)
        for _ in range(args.streams):
            for name, conn in connections.items():
                ttft[name].append(first_token_ms(conn, body))
    shutil.rmtree(work, ignore_errors=True)

    results = {n: median_run(rs) for n, rs in runs.items()}
    base = results[args.replicas[0]]["rps"]
    ttft_p50 = {name: statistics.median(values) for name, values in ttft.items()}
    ttft_p90 = {name: statistics.quantiles(values, n=10)[-1] for name, values in ttft.items()}
    if args.json:
        print(
            json.dumps(
                {"options": vars(args), "throughput": results, "ttft_p50_ms": ttft_p50, "ttft_p90_ms": ttft_p90},
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    print(
        f"\nthrough nginx, c={args.connections}, {args.workers} workers per replica, {args.duration}s x "
        f"{args.rounds} rounds (median), fake upstream 0 ms, {os.cpu_count()} cores\n"
    )
    print(
        markdown_table(
            ["replicas", "requests/s", f"vs {args.replicas[0]}", "p50 ms", "p99 ms", "errors"],
            [
                [
                    n,
                    f"{r['rps']:.0f}",
                    f"{r['rps'] / base:.2f}x",
                    f"{r['p50_ms']:.1f}",
                    f"{r['p99_ms']:.1f}",
                    r["errors"],
                ]
                for n, r in results.items()
            ],
        )
    )
    print(f"\ntime to first token, {args.streams} streamed requests each, interleaved:\n")
    print(
        markdown_table(
            ["path", "p50 ms", "p90 ms"], [[name, f"{ttft_p50[name]:.2f}", f"{ttft_p90[name]:.2f}"] for name in ttft]
        )
    )
    print(
        f"\nnginx adds {ttft_p50['nginx'] - ttft_p50['direct']:.2f} ms to the median time to first token "
        f"(goal: within 5 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
