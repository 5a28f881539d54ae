"""Soak: a steady mix of streamed and plain requests through nginx for 20 minutes, with every worker's memory.

    .venv/bin/python bench/soak.py                          # 20 min at 40 requests/s, half of them streamed
    .venv/bin/python bench/soak.py --minutes 2 --rate 20    # a short look

Not part of CI (it takes 20 minutes). Starts the local stack (2 replicas x 2 workers, the fake upstream with
a 20 ms first token and 5 ms between chunks), sends an open-loop load at --rate, and samples the resident
memory (RSS) of every gunicorn worker every --sample seconds. After the warm-up (--warmup minutes), a worker's
RSS should stay within +-10% of its value at the end of the warm-up, and no request should fail.
Prints a summary table; --samples-csv keeps every sample. Exit 1 when either goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from gateway_kit.procs import children
from lib import local_stack

URL = "http://127.0.0.1:5000/v1/chat/completions"
PAGE = os.sysconf("SC_PAGE_SIZE")


def workers(state: Path) -> dict[str, int]:
    """Every gunicorn worker of the stack's replicas: {"gateway-1/pid": pid}."""
    found = {}
    for pid_file in sorted((state / "pids").glob("replica-*.pid")):
        for pid in children(int(pid_file.read_text().strip())):
            found[f"gateway-{pid_file.stem.split('-')[1]}/{pid}"] = pid
    return found


def rss_mb(pid: int) -> float | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return None


async def one_request(session: aiohttp.ClientSession, n: int, stats: dict) -> None:
    stream = n % 2 == 0
    body = {"model": "chat", "messages": [{"role": "user", "content": f"Soak request {n}: say something."}]}
    if stream:
        body["stream"] = True
    started = time.perf_counter()
    try:
        async with session.post(URL, json=body) as response:
            data = await response.read()
            ok = response.status == 200 and (b"data:" in data if stream else b'"choices"' in data)
            if not ok:
                stats["errors"].append(f"{response.status} {data[:120]!r}")
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        stats["errors"].append(f"{type(e).__name__}: {e}")
    else:
        stats["latency_ms"].append((time.perf_counter() - started) * 1000)
    stats["sent"] += 1


async def load(rate: float, seconds: float, state: Path, sample_s: float, samples: list) -> dict:
    stats = {"sent": 0, "errors": [], "latency_ms": []}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=200)) as session:
        tasks: set[asyncio.Task] = set()
        started = time.monotonic()
        next_sample = started
        n = 0
        while (now := time.monotonic()) - started < seconds:
            if now >= next_sample:
                elapsed = now - started
                samples.extend((elapsed, name, rss_mb(pid)) for name, pid in workers(state).items())
                next_sample += sample_s
            due = started + n / rate
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.create_task(one_request(session, n, stats))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20, help="how long to run (default 20)")
    parser.add_argument("--warmup", type=float, default=2, help="minutes before RSS is compared (default 2)")
    parser.add_argument("--rate", type=float, default=40, help="requests per second (default 40)")
    parser.add_argument("--sample", type=float, default=10, help="seconds between RSS samples (default 10)")
    parser.add_argument("--samples-csv", type=Path, help="write every RSS sample here")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    os.environ.update(FAKE_LLM_TTFT_MS="20", FAKE_LLM_CHUNK_DELAY_MS="5")  # the stack's fake upstream reads these
    samples: list[tuple[float, str, float | None]] = []
    with local_stack(work, replicas=2, workers=2):
        stats = asyncio.run(load(args.rate, args.minutes * 60, work / "stack", args.sample, samples))
    if args.samples_csv:
        with args.samples_csv.open("w", newline="") as f:
            csv.writer(f).writerows([("seconds", "worker", "rss_mb"), *samples])

    warm = args.warmup * 60
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for t, name, mb in samples:
        if mb is not None:
            by_worker.setdefault(name, []).append((t, mb))
    rows = []
    for name, points in sorted(by_worker.items()):
        after = [mb for t, mb in points if t >= warm]
        if not after:
            continue
        base = after[0]
        rows.append(
            {
                "worker": name,
                "rss_at_warmup_mb": round(base, 1),
                "rss_end_mb": round(after[-1], 1),
                "min_mb": round(min(after), 1),
                "max_mb": round(max(after), 1),
                "max_drift_pct": round(max(abs(mb - base) for mb in after) / base * 100, 1),
            }
        )
    latencies = sorted(stats["latency_ms"])
    summary = {
        "minutes": args.minutes,
        "rate": args.rate,
        "sent": stats["sent"],
        "errors": len(stats["errors"]),
        "first_errors": stats["errors"][:5],
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1) if latencies else None,
        "workers": rows,
    }
    flat = bool(rows) and all(r["max_drift_pct"] <= 10 for r in rows)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(
            f"\nsoak: {args.minutes:g} min at {args.rate:g} requests/s (half streamed) through nginx to 2 replicas "
            f"x 2 workers: {summary['sent']} sent, {summary['errors']} failed, p50 {summary['p50_ms']} ms, "
            f"p99 {summary['p99_ms']} ms\n"
        )
        print("| worker | RSS after warm-up MB | RSS at end MB | min MB | max MB | max drift |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(
                f"| {r['worker']} | {r['rss_at_warmup_mb']} | {r['rss_end_mb']} | {r['min_mb']} | {r['max_mb']} "
                f"| {r['max_drift_pct']}% |"
            )
        for error in summary["first_errors"]:
            print(f"error: {error}", file=sys.stderr)
    return 0 if flat and not stats["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
