#!/usr/bin/env python3
"""How much load evaluate_gateway.py itself can generate, next to what it measures through nginx.

One run, three measurements, one table:
  1. ceiling   evaluate_gateway.py against the fake upstream directly (POST /v1/chat/completions):
               the fake answers in well under a millisecond, so this is the generator's own ceiling
               (its CPU per request, and the fake's CPU to show the fake was not the limit).
  2. nginx     the same closed-loop load through nginx and 2 gateway replicas
               (scripts/local_stack.sh up --replicas 2, fake upstream behind them).
  3. nginx-open an open-loop run (--rate) through nginx at half the rate step 2 reached, where
               latency should be the gateway's, not a queue's.

If step 2 comes close to step 1, the generator was the limit and the gateway may do more.

Usage:
    python bench/bench_evaluate.py                       # 2000 requests, concurrency 16
    python bench/bench_evaluate.py --requests 5000 --concurrency 32 --replicas 2
Needs: the repo's venv (mlflow[gateway], aiohttp), nginx and dnsmasq for scripts/local_stack.sh, root
for dnsmasq on 127.0.0.11:53, and ports 5000 and 9000 free. Never calls a real provider.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from gateway_kit.procs import clean_env, free_port
from lib import Servers, group_cpu_seconds

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "evaluate_gateway.py"
STACK = REPO / "scripts" / "local_stack.sh"
NGINX_URL = "http://127.0.0.1:5000"


def evaluate(args: list[str], workdir: Path) -> tuple[dict, str]:
    command = [
        sys.executable,
        str(CLI),
        *args,
        "--json",
        "--no-progress",
        "--max-error-rate",
        "100%",
        "--output",
        str(workdir / "results.json"),
    ]
    proc = subprocess.run(command, cwd=REPO, env=clean_env(), capture_output=True, check=False, text=True, timeout=900)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"bench: error: evaluate_gateway.py exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    shown = "python3 evaluate_gateway.py " + " ".join(shlex.quote(a) for a in args)
    return json.loads(proc.stdout), shown


def row(name: str, doc: dict, extra: str = "") -> list[str]:
    s, g = doc["summary"], doc["summary"]["generator"]
    lat = s["latency_ms"] or {}
    return [
        name,
        str(s["requests"]),
        str(s["errors"]),
        f"{s['throughput_rps']:.0f}",
        f"{lat.get('p50', 0):.1f}",
        f"{lat.get('p95', 0):.1f}",
        f"{lat.get('p99', 0):.1f}",
        f"{g['cpu_per_request_ms']:.2f}",
        f"{g['cpu_utilization']:.2f}",
        f"{g['ceiling_rps']:.0f}" if g["ceiling_rps"] else "-",
        "yes" if g["bound"] else "no",
        extra,
    ]


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per closed-loop run (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--replicas", type=int, default=2, help="gateway replicas behind nginx (default 2)")
    parser.add_argument("--open-seconds", type=float, default=10, help="length of the open-loop run (default 10)")
    args = parser.parse_args(argv)
    if not STACK.exists():
        raise SystemExit(f"bench: error: {STACK.relative_to(REPO)} is missing; it starts nginx and the replicas")

    rows, commands = [], []
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        work = Path(tmp)
        # Step 1: the generator against the fake upstream itself.
        with Servers(work) as servers:
            fake_url = servers.fake(free_port())
            fake_pid = servers.groups[fake_url]
            direct = work / "direct.yaml"
            direct.write_text(
                "- {name: direct, model: gpt-4o-mini, messages: [{role: user, content: hi}],"
                " params: {max_tokens: 16}}\n"
            )
            fake_cpu0 = group_cpu_seconds(fake_pid)
            doc, cmd = evaluate(
                [
                    "--url",
                    fake_url,
                    "--test-file",
                    str(direct),
                    "--concurrency",
                    str(args.concurrency),
                    "--requests",
                    str(args.requests),
                ],
                work,
            )
            fake_cores = (group_cpu_seconds(fake_pid) - fake_cpu0) / max(doc["summary"]["duration_s"], 1e-9)
            rows.append(row("ceiling: fake upstream direct", doc, f"fake upstream used {fake_cores:.2f} cores"))
            commands.append(cmd)

        # Steps 2 and 3: through nginx and the replicas.
        state = work / "stack"
        stack_cmd = [str(STACK), "up", "--replicas", str(args.replicas), "--state-dir", str(state)]
        up = subprocess.run(
            stack_cmd, cwd=REPO, env=clean_env(), capture_output=True, check=False, text=True, timeout=300
        )
        try:
            if up.returncode != 0:
                raise SystemExit(f"bench: error: scripts/local_stack.sh up failed:\n{up.stdout}\n{up.stderr}")
            commands.append(" ".join(["scripts/local_stack.sh", "up", "--replicas", str(args.replicas)]))
            gateway_cases = work / "gateway.yaml"
            gateway_cases.write_text(
                "- {name: chat, endpoint: chat, messages: [{role: user, content: hi}], params: {max_tokens: 16}}\n"
            )
            evaluate(
                [
                    "--url",
                    NGINX_URL,
                    "--test-file",
                    str(gateway_cases),
                    "--requests",
                    "50",
                    "--concurrency",
                    "4",
                ],
                work,
            )  # warm-up: connections, imports, first requests
            doc, cmd = evaluate(
                [
                    "--url",
                    NGINX_URL,
                    "--test-file",
                    str(gateway_cases),
                    "--concurrency",
                    str(args.concurrency),
                    "--requests",
                    str(args.requests),
                ],
                work,
            )
            spread = ", ".join(f"{k} {v}" for k, v in doc["summary"]["replicas"].items())
            rows.append(row(f"nginx + {args.replicas} replicas, closed", doc, spread))
            commands.append(cmd)
            rate = max(1, round(doc["summary"]["throughput_rps"] / 2))
            doc, cmd = evaluate(
                [
                    "--url",
                    NGINX_URL,
                    "--test-file",
                    str(gateway_cases),
                    "--rate",
                    str(rate),
                    "--duration",
                    f"{args.open_seconds:g}",
                ],
                work,
            )
            g = doc["summary"]["generator"]
            rows.append(
                row(
                    f"nginx + {args.replicas} replicas, open {rate}/s",
                    doc,
                    f"sent {g['achieved_rate']} req/s, {g['workers']} workers",
                )
            )
            commands.append(cmd)
        finally:
            subprocess.run(
                [str(STACK), "down", "--state-dir", str(state)],
                cwd=REPO,
                env=clean_env(),
                capture_output=True,
                check=False,
                text=True,
                timeout=120,
            )

    print(
        table(
            rows,
            [
                "RUN",
                "REQUESTS",
                "ERRORS",
                "REQ/S",
                "P50 MS",
                "P95 MS",
                "P99 MS",
                "GEN CPU MS/REQ",
                "GEN CORES",
                "GEN CEILING REQ/S",
                "GEN-BOUND",
                "NOTE",
            ],
        )
    )
    print(f"\nhost: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print("command: python bench/bench_evaluate.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print("runs:\n  " + "\n  ".join(commands))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
