"""Gateway throughput, side by side in one run: fake upstream, stock MLflow, the kit, the kit behind nginx.

    make bench                                    # or: .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --duration 20 --connections 32 --rounds 3

Every target answers from the same fake upstream (0 ms latency) and uses the same worker count; the kit
runs with its usage records (stdout + ledger) on, and once more with them off to show what they cost. wrk
(Debian package) drives POST chat requests; rounds interleave the targets so machine noise hits them
alike, and the table reports each target's median round with its ratio to stock MLflow. Needs root
(the local stack's DNS on 127.0.0.11:53). Prints a Markdown table; --json for machines.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAKE = "http://127.0.0.1:9000"
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"messages":[{"role":"user","content":"How fast is this gateway?"}]}'
wrk.headers["Content-Type"] = "application/json"
"""


def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"bench: error: {url} did not answer within {timeout:.0f}s")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    # `mlflow gateway start` leaves its gunicorn behind on SIGTERM: stop the whole process group.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def wrk(url: str, duration: int, connections: int, script: Path) -> dict:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout

    def latency_ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency_ms("50%"),
        "p99_ms": latency_ms("99%"),
        "errors": (int(errors.group(1)) if errors else 0)
        + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per gateway (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the median counts (default 2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("bench: error: wrk is not installed — apt-get install wrk (scripts/setup.sh does)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    script = work / "post.lua"
    script.write_text(WRK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_API_BASE"))}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(REPO), GATEWAY_DEMO_UPSTREAM=FAKE,
               GATEWAY_WORKERS=str(args.workers))
    stack = [str(REPO / "scripts/local_stack.sh"), "--state-dir", str(work / "stack")]
    procs: list[subprocess.Popen] = []
    try:
        subprocess.run([*stack[:1], "up", "--replicas", "2", "--workers", str(args.workers), *stack[1:]],
                       env=env, check=True)
        for port, records, metrics in ((18100, "on", "on"), (18101, "off", "on"), (18102, "on", "off")):
            procs.append(start([str(REPO / "entrypoint.sh")], {
                **env, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_USAGE_RECORDS": records,
                "GATEWAY_METRICS": metrics,
                "GATEWAY_RUNTIME_DIR": str(work / f"kit-{port}"), "GATEWAY_LEDGER_DIR": str(work / "ledger"),
            }, work / f"kit-{port}.log"))
            wait_http(f"http://127.0.0.1:{port}/health")
        # Stock MLflow serves the very config the kit checked and wrote (demo keys, fake upstream).
        stock = start([sys.executable, "-m", "mlflow", "gateway", "start", "--config-path",
                       str(work / "kit-18100" / "config.active.yaml"), "--port", "18200", "--workers", str(args.workers)],
                      env, work / "stock.log")
        procs.append(stock)
        wait_http("http://127.0.0.1:18200/health")

        targets = {
            "(a) fake upstream directly": f"{FAKE}/v1/chat/completions",
            "(b) stock `mlflow gateway start`": "http://127.0.0.1:18200/gateway/chat/invocations",
            "(c) kit, one instance": "http://127.0.0.1:18100/gateway/chat/invocations",
            "(c0) kit, usage records off": "http://127.0.0.1:18101/gateway/chat/invocations",
            "(c1) kit, metrics off": "http://127.0.0.1:18102/gateway/chat/invocations",
            "(d) kit, nginx + 2 instances": "http://127.0.0.1:5000/gateway/chat/invocations",
        }
        for url in targets.values():  # warm up every path once
            wrk(url, 2, args.connections, script)
        rounds: dict[str, list[dict]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, url in targets.items():
                rounds[name].append(wrk(url, args.duration, args.connections, script))
    finally:
        for proc in procs:
            stop(proc)
        subprocess.run([*stack[:1], "down", *stack[1:]], env=env, capture_output=True)

    results = {name: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2] for name, rs in rounds.items()}
    stock_rps = results["(b) stock `mlflow gateway start`"]["rps"]
    if args.json:
        print(json.dumps({"options": vars(args), "results": results}, indent=2, sort_keys=True))
        return 0
    print(f"\nc={args.connections}, {args.workers} workers per gateway, {args.duration}s x {args.rounds} rounds "
          f"(median), fake upstream 0 ms, {os.cpu_count()} cores\n")
    print("| target | requests/s | vs stock | p50 ms | p99 ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['rps']:.0f} | {r['rps'] / stock_rps:.2f}x | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
              f"| {r['errors']} |")
    spread = statistics.pstdev(r["rps"] for r in rounds["(b) stock `mlflow gateway start`"])
    print(f"\nstock MLflow's spread between rounds: ±{spread:.0f} requests/s (machine noise)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
