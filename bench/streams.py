"""How many concurrent streams one replica holds, and at what memory.

    .venv/bin/python bench/streams.py                    # 100, 400 and 1000 streams of about 10 s each
    .venv/bin/python bench/streams.py --streams 2000 --workers 4

One kit replica (entrypoint.sh, 2 workers, usage records and metrics on) in front of the fake upstream, which
sends each answer as 40 chunks 250 ms apart. N clients open their streams at once and read them to the end.
Reported per N: streams that completed, time to first token p50/p99, and the workers' resident memory (RSS)
idle and at the peak, summed over the workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from gateway_kit.procs import children, free_port
from lib import Servers, markdown_table

PAGE = 4096
REPLY = " ".join(f"word{i}" for i in range(40))


def workers_rss_mb(master: int) -> float:
    total = 0
    for pid in children(master):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
    return total / 2**20


async def one_stream(session: aiohttp.ClientSession, url: str, ttfts: list[float]) -> bool:
    body = {
        "model": "chat",
        "stream": True,
        "messages": [{"role": "user", "content": f"[[chunk_delay:250]] [[reply:{REPLY}]] stream please"}],
    }
    started = time.perf_counter()
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                return False
            first = True
            chunks = 0
            async for line in response.content:
                if line.startswith(b"data:"):
                    if first:
                        ttfts.append((time.perf_counter() - started) * 1000)
                        first = False
                    chunks += 1
            return chunks > 1
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def hold(url: str, n: int, master: int) -> dict:
    ttfts: list[float] = []
    peak = 0.0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks = [asyncio.create_task(one_stream(session, url, ttfts)) for _ in range(n)]
        while not all(t.done() for t in tasks):
            peak = max(peak, workers_rss_mb(master))
            await asyncio.wait(tasks, timeout=0.5)
        ok = sum(t.result() for t in tasks)
    ttfts.sort()
    return {
        "streams": n,
        "completed": ok,
        "ttft_p50_ms": statistics.median(ttfts) if ttfts else None,
        "ttft_p99_ms": ttfts[max(0, int(len(ttfts) * 0.99) - 1)] if ttfts else None,
        "peak_rss_mb": peak,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 400, 1000], help="concurrent streams")
    parser.add_argument("--workers", type=int, default=2, help="workers in the replica (default 2)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-streams-"))
    with Servers(work) as servers:
        fake = servers.fake(free_port())
        kit = servers.kit(free_port(), fake, args.workers)
        master = servers.procs[-1].pid  # entrypoint.sh execs gunicorn: this is its master
        url = f"{kit}/v1/chat/completions"
        asyncio.run(hold(url, 4, master))  # warm up every worker a little
        idle = workers_rss_mb(master)
        results = [asyncio.run(hold(url, n, master)) for n in args.streams]
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"idle_rss_mb": idle, "results": results}, indent=2, sort_keys=True))
        return 0
    print(
        f"\none replica, {args.workers} workers; each stream 40 chunks 250 ms apart (about 10 s); "
        f"workers' RSS idle: {idle:.0f} MB\n"
    )
    print(
        markdown_table(
            ["concurrent streams", "completed", "TTFT p50 ms", "TTFT p99 ms", "peak RSS MB", "MB per 100 streams"],
            [
                [
                    r["streams"],
                    r["completed"],
                    f"{r['ttft_p50_ms']:.0f}",
                    f"{r['ttft_p99_ms']:.0f}",
                    f"{r['peak_rss_mb']:.0f}",
                    f"{(r['peak_rss_mb'] - idle) / r['streams'] * 100:.1f}",
                ]
                for r in results
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
