#!/usr/bin/env python3
"""How fast analyze_costs.py reads a ledger: records per second for a ledger of 1M records (goal: ≥ 200k/s).

    python3 bench/bench_analyze_costs.py                       # 1M records, automatic workers, then --workers 1
    python3 bench/bench_analyze_costs.py --records 200000 --workers 1
    python3 bench/bench_analyze_costs.py --keep /tmp/ledger    # keep the ledger; the next run reuses it
    git worktree add /tmp/base main && python3 bench/bench_analyze_costs.py --baseline /tmp/base --workers 1

The ledger is written the way the gateway writes it (UsageRecord.to_json(), one file per replica per day:
3 replicas x 7 days), with a realistic mix of endpoints, models, clients, streams, errors and cached tokens.
The timed figure is the whole command a user runs, `analyze_costs.py --ledger DIR --json`, start to exit, the
median of --repeat runs. With --baseline DIR, the analyze_costs.py of another checkout of the kit reads the same
ledger in the same rounds, alternating with this one's (which goes first every other round), so that machine noise
hits both alike; the ratio of the medians says what a change costs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway_kit.pricing import Pricer
from gateway_kit.usage import UsageRecord, ledger_file_name, utc_now_iso

ROOT = Path(__file__).resolve().parent.parent

ENDPOINTS = [  # (endpoint, route, provider, model as answered, weight)
    ("chat", "/gateway/chat/invocations", "openai", "gpt-4o-mini-2024-07-18", 50),
    ("chat", "/v1/chat/completions", "openai", "gpt-4o-mini-2024-07-18", 15),
    ("anthropic-chat", "/gateway/anthropic-chat/invocations", "anthropic", "claude-3-5-haiku-latest", 10),
    ("azure-chat", "/gateway/azure-chat/invocations", "azure", "gpt-4o-mini", 10),
    ("embeddings", "/gateway/embeddings/invocations", "openai", "text-embedding-3-small", 10),
    ("completions", "/gateway/completions/invocations", "openai", "gpt-3.5-turbo-instruct", 5),
]
CLIENTS = ["team-a", "team-b", "search", "support-bot", None]
REPLICAS = ["mlflow-gateway-1", "mlflow-gateway-2", "mlflow-gateway-3"]
DAYS = 7


def generate(directory: Path, n: int, seed: int = 7) -> int:
    """Write n usage records; returns the bytes written."""
    rng = random.Random(seed)
    pricer = Pricer()
    weights = [e[4] for e in ENDPOINTS]
    start = time.time() - DAYS * 86400
    files = {}
    size = 0
    try:
        for i in range(n):
            endpoint, route, provider, model, _ = rng.choices(ENDPOINTS, weights)[0]
            replica = REPLICAS[i % len(REPLICAS)]
            t = start + i * (DAYS * 86400 / n)
            day = time.strftime("%Y-%m-%d", time.gmtime(t))
            failed = rng.random() < 0.02
            stream = endpoint != "embeddings" and rng.random() < 0.3
            prompt = 0 if failed else rng.randint(20, 4000)
            completion = 0 if failed or endpoint == "embeddings" else rng.randint(1, 800)
            cached = prompt // 2 if prompt > 1024 and rng.random() < 0.3 else 0
            cost = pricer.cost_tokens(model, provider, prompt, completion, cached, 0)
            record = UsageRecord(
                ts=utc_now_iso(t),
                request_id=f"{i:08x}{rng.getrandbits(96):024x}",
                route=route,
                endpoint=endpoint,
                provider=provider,
                model=model,
                status=rng.choice((429, 500, 502)) if failed else 200,
                latency_ms=round(rng.uniform(80, 4000), 1),
                ttft_ms=round(rng.uniform(50, 600), 1) if stream else None,
                stream=stream,
                partial=stream and rng.random() < 0.01,
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                cached_tokens=cached,
                client=rng.choice(CLIENTS),
                replica=replica,
                cost_usd=cost[0],
                price_source=cost[1],
                error="upstream_error" if failed else None,
            )
            key = (replica, day)
            f = files.get(key)
            if f is None:
                f = files[key] = open(directory / ledger_file_name(replica, day), "a", encoding="utf-8")
            line = record.to_json() + "\n"
            size += len(line)
            f.write(line)
    finally:
        for f in files.values():
            f.close()
    return size


def run_analyzer(checkout: Path, directory: Path, workers: int | None) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the command and its worker processes, the JSON report) of `checkout`'s
    analyze_costs.py, which imports the gateway_kit beside it."""
    cmd = [sys.executable, str(checkout / "analyze_costs.py"), "--ledger", str(directory), "--json"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"bench: {cmd[1]} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_000_000, help="records in the ledger (default: 1,000,000)")
    p.add_argument("--workers", type=int, help="pass --workers N (default: automatic, then 1 for comparison)")
    p.add_argument("--keep", metavar="DIR", help="write the ledger here and keep it (default: a temporary dir)")
    p.add_argument(
        "--repeat", type=int, default=3, help="timed runs of each kind; the median is the figure (default 3)"
    )
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="another checkout of the kit (e.g. `git worktree add /tmp/base main`): its analyze_costs.py reads the "
        "same ledger, alternating with this one's",
    )
    args = p.parse_args(argv)
    targets = {"this checkout": ROOT}
    if args.baseline:
        if not (args.baseline / "analyze_costs.py").is_file():
            p.error(f"--baseline {args.baseline}: no analyze_costs.py there; give a checkout of the kit")
        targets["baseline"] = args.baseline.resolve()

    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        directory = Path(args.keep or tmp)
        directory.mkdir(parents=True, exist_ok=True)
        marker = directory / f".bench-{args.records}-records"
        files = len(list(directory.glob("usage-*.jsonl")))
        if marker.exists():
            size = sum(p.stat().st_size for p in directory.glob("usage-*.jsonl"))
            print(f"reusing {args.records:,} records ({size / 1e6:,.0f} MB, {files} files) in {directory}")
        else:
            if files:
                sys.exit(f"bench: {directory} already holds ledger files; choose an empty directory for --keep")
            t0 = time.perf_counter()
            size = generate(directory, args.records)
            marker.touch()
            os.sync()  # write the new files out now, not while the analyzer is being timed
            print(
                f"generated {args.records:,} records ({size / 1e6:,.0f} MB, "
                f"{len(list(directory.glob('usage-*.jsonl')))} files) in {time.perf_counter() - t0:.1f} s"
            )
        print(
            f"machine: {os.cpu_count()} CPU(s), Python {sys.version.split()[0]}. Figures depend on what else runs "
            "(the load average before each run is shown); the median of the runs is the figure."
        )
        runs = [args.workers] if args.workers is not None else [None, 1]
        for workers in runs:
            label = "automatic workers" if workers is None else f"--workers {workers}"
            timings: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
            for n in range(args.repeat):
                order = list(targets.items())
                for name, checkout in order[::-1] if n % 2 else order:  # ABBA: a load that drifts favours neither
                    load = os.getloadavg()[0]
                    elapsed, cpu, report = run_analyzer(checkout, directory, workers)
                    counted = report["requests"]["total"]
                    if counted != args.records:
                        sys.exit(f"bench: {name} counted {counted:,} records, expected {args.records:,}")
                    timings[name].append((elapsed, cpu))
                    print(f"  {label}, {name}: {elapsed:.2f} s, {cpu:.2f} CPU s, load average before {load:.2f}")
            medians = {
                name: (statistics.median(t for t, _ in measured), statistics.median(c for _, c in measured))
                for name, measured in timings.items()
            }
            for name, (wall, cpu) in medians.items():
                print(
                    f"analyze_costs.py --ledger ({label}, {name}): {args.records:,} records in {wall:.2f} s = "
                    f"{args.records / wall:,.0f} records/s, {args.records / cpu:,.0f} records per CPU second "
                    f"(median of {args.repeat}; total ${report['cost']['total_usd']:,.2f})"
                )
            if "baseline" in medians:
                (wall, cpu), (base_wall, base_cpu) = medians["this checkout"], medians["baseline"]
                print(
                    f"this checkout / baseline ({label}): records/s {base_wall / wall:.3f}x, "
                    f"records per CPU second {base_cpu / cpu:.3f}x"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
