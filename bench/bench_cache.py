"""What the response cache gains on a hit, and what it costs when no endpoint has `cache:`; ratios in one run.

    .venv/bin/python bench/bench_cache.py                               # part 1 only
    .venv/bin/python bench/bench_cache.py --baseline /path/to/main      # and part 2 against that checkout

1. A hit against a provider call, end to end: one kit replica (1 worker, usage records and metrics on) in
   demo mode against the fake upstream answering after --provider-ms (a realistic short chat: 300 ms), Redis on
   a free port, config.yaml's chat endpoint with `cache: {ttl: 600}`. The same question asked --requests times
   with `Cache-Control: no-cache` (the lookup skipped: a provider call through the same stack), then as many
   times without (a hit each), plain and streamed; median latency of each, and their ratio.
2. With the cache off (no endpoint has `cache:`, so no cache middleware) the only change on a request's path
   is the usage recorder's (it reads the scope state CACHE; the record has two more fields). The recorder in
   process, on a canned OpenAI answer, with its record encoded as the usage log does: this checkout against
   --baseline (another checkout of the kit: a `git worktree add` of main), each in its own interpreter,
   interleaved rounds; the fastest round of each counts (on a shared machine the others measure the
   neighbours), and their ratio is the cost of the cache when off.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml
from lib import REPO, Servers, markdown_table, redis_server

from gateway_kit.procs import clean_env, free_port

RECORDER = r"""
import asyncio, sys, time
from gateway_kit.events import Events, Listener
from gateway_kit.pricing import Pricer
from gateway_kit.recording import EndpointInfo, UsageRecorder

ANSWER = (b'{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,'
          b'"message":{"role":"assistant","content":"Fake answer"},"finish_reason":"stop"}],'
          b'"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}')

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER, "more_body": False})

class Encode(Listener):
    def usage_recorded(self, record):
        record.to_json_bytes()

async def receive():
    return {"type": "http.request", "body": b'{"messages":[]}', "more_body": False}

async def send(message):
    pass

async def main(n):
    recorder = UsageRecorder(app, {"chat": EndpointInfo("openai", "gpt-4o-mini")}, "bench", Pricer(), Events([Encode()]))
    scope = {"type": "http", "path": "/gateway/chat/invocations", "headers": [], "method": "POST"}
    for _ in range(2000):
        await recorder({**scope, "state": {}}, receive, send)
    started = time.process_time()  # this process's CPU time: what the neighbours' load does not stretch
    for _ in range(n):
        await recorder({**scope, "state": {}}, receive, send)
    print((time.process_time() - started) / n * 1e6)

asyncio.run(main(int(sys.argv[1])))
"""


def timed(session: requests.Session, url: str, body: dict, headers: dict, n: int, expect: str | None) -> float:
    """Median ms of n requests; each must be answered 200 with X-Gateway-Cache `expect` (None: absent)."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        r = session.post(url, json=body, headers=headers, timeout=30)
        r.content
        times.append((time.perf_counter() - started) * 1000)
        if r.status_code != 200 or r.headers.get("X-Gateway-Cache") != expect:
            raise SystemExit(
                f"bench: error: expected a 200 ({expect}), got {r.status_code} {r.headers}: {r.text[:200]}"
            )
    return statistics.median(times)


def hit_against_provider(servers: Servers, work: Path, args) -> list[list[str]]:
    redis_url = redis_server(servers)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    chat = next(e for e in config["endpoints"] if e["name"] == "chat")
    (work / "cache.yaml").write_text(yaml.safe_dump({"endpoints": [{**chat, "cache": {"ttl": 600}}]}))
    fake = servers.fake(free_port(), "--latency-ms", str(args.provider_ms))
    kit = servers.kit(
        free_port(),
        fake,
        1,
        GATEWAY_CONFIG=str(work / "cache.yaml"),
        GATEWAY_REDIS_URL=redis_url,
    )
    rows = []
    with requests.Session() as session:
        for stream in (False, True):
            body = {
                "messages": [{"role": "user", "content": f"How fast is a hit? (stream {stream})"}],
                "stream": stream,
            }
            url = f"{kit}/gateway/chat/invocations"
            timed(session, url, body, {}, 1, "miss")  # stores the answer
            provider = timed(session, url, body, {"Cache-Control": "no-cache"}, args.requests, None)
            hit = timed(session, url, body, {}, args.requests, "hit")
            rows.append(["stream" if stream else "plain", f"{provider:.1f}", f"{hit:.1f}", f"{provider / hit:.0f}x"])
    return rows


def recorder_us(checkout: Path, n: int) -> float:
    result = subprocess.run(
        [sys.executable, "-c", RECORDER, str(n)],
        env=clean_env(PYTHONPATH=str(checkout)),
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise SystemExit(f"bench: error: the recorder of {checkout} failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.split()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--provider-ms", type=int, default=300, help="the fake provider's answer time (300)")
    parser.add_argument("--requests", type=int, default=30, help="requests per cell (30)")
    parser.add_argument("--baseline", type=Path, help="another checkout of the kit (part 2 runs only with it)")
    parser.add_argument("--calls", type=int, default=20000, help="part 2: requests per round (20000)")
    parser.add_argument("--rounds", type=int, default=9, help="part 2: interleaved rounds (9)")
    args = parser.parse_args(argv)
    if not shutil.which("redis-server"):
        print("bench: error: redis-server is not installed — apt-get install redis-server", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gateway-bench-cache-"))
    with Servers(work) as servers:
        rows = hit_against_provider(servers, work, args)
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n1. A hit against a provider call: one replica, 1 worker, the provider answering in {args.provider_ms} ms; "
        f"median of {args.requests} sequential requests\n"
    )
    print(markdown_table(["answer", "provider call ms", "cache hit ms", "hit is faster by"], rows))
    if args.baseline:
        runs: dict[str, list[float]] = {"baseline": [], "this checkout": []}
        for _ in range(args.rounds):
            runs["baseline"].append(recorder_us(args.baseline.resolve(), args.calls))
            runs["this checkout"].append(recorder_us(REPO, args.calls))
        base = min(runs["baseline"])
        print(
            f"\n2. Cache off: the usage recorder's CPU time per request, in process (fastest of {args.rounds} interleaved "
            f"rounds of {args.calls})\n"
        )
        print(
            markdown_table(
                ["checkout", "us per request", "vs baseline"],
                [[label, f"{min(v):.2f}", f"{min(v) / base:.3f}x"] for label, v in runs.items()],
            )
        )
        print(json.dumps({label: [round(v, 2) for v in values] for label, values in runs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
