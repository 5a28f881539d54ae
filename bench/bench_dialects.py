#!/usr/bin/env python3
"""What the translation of /v1/messages and /v1/responses costs (gateway_kit.dialects), in one run: the middleware
alone in process, and one kit replica against the fake upstream, the same question asked as a plain chat request
and in each dialect.

    .venv/bin/python bench/bench_dialects.py                     # 1 worker, 3 s per run, 3 rounds
    .venv/bin/python bench/bench_dialects.py --seconds 5 --rounds 5 --connections 8

wrk sends each request body for `--seconds` per run; rounds alternate the routes (in turn first and last). The
figure is the replica's CPU µs per request (its process group's user + system time, which other load on a shared
machine does not add to), median of the rounds, and its ratio to the plain chat route: JSON answers and streams
(the fake's answer is a dozen chunks). The replica records usage (stdout and a ledger) as deployed.

In process first: the Dialects middleware in front of a canned chat answer, CPU µs per request for each route,
against the canned answer alone; the chat route through the middleware is what it costs every other request
(one route lookup).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import tempfile
from pathlib import Path

from lib import Servers, wrk, wrk_script

from gateway_kit.dialects import Dialects
from gateway_kit.procs import free_port

QUESTION = "What does a gateway cost per request, roughly?"


def bodies(stream: bool) -> dict[str, tuple[str, dict]]:
    """route name: (path, body) for the same question."""
    messages = [{"role": "user", "content": QUESTION}]
    extra = {"stream": True} if stream else {}
    return {
        "chat (/v1/chat/completions)": ("/v1/chat/completions", {"model": "chat", "messages": messages, **extra}),
        "messages (/v1/messages)": (
            "/v1/messages",
            {"model": "chat", "max_tokens": 256, "messages": messages, **extra},
        ),
        "responses (/v1/responses)": ("/v1/responses", {"model": "chat", "input": QUESTION, **extra}),
    }


CANNED = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"Fake answer to: {QUESTION}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28},
    }
).encode()


async def canned_chat(scope, receive, send) -> None:
    await receive()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(CANNED)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": CANNED})


async def requests_through(app, path: str, body: bytes, n: int) -> None:
    async def send(message) -> None:
        pass

    for _ in range(n):
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop() if messages else {"type": "http.disconnect"}

        scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b""}
        await app({**scope, "headers": [(b"content-type", b"application/json")]}, receive, send)


def in_process(n: int, rounds: int) -> None:
    targets = {
        "canned chat answer alone": (
            canned_chat,
            "/v1/chat/completions",
            bodies(False)["chat (/v1/chat/completions)"][1],
        )
    }
    for name, (path, body) in bodies(False).items():
        targets[f"dialects, {name}"] = (Dialects(canned_chat), path, body)
    cpu: dict[str, list[float]] = {name: [] for name in targets}
    for r in range(rounds):
        for name in targets if r % 2 == 0 else reversed(targets):
            app, path, body = targets[name]
            start = time.process_time()
            asyncio.run(requests_through(app, path, json.dumps(body).encode(), n))
            cpu[name].append((time.process_time() - start) * 1e6 / n)
    print(f"in process, {rounds} x {n} requests, CPU µs per request:")
    for name, runs in cpu.items():
        print(f"    {name:50} {statistics.median(runs):7.1f} µs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=3, help="seconds per wrk run (3)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per route and kind, alternating (3)")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections (4)")
    parser.add_argument("--workers", type=int, default=1, help="the replica's workers (1)")
    parser.add_argument("--requests", type=int, default=20_000, help="requests per in-process round (20000)")
    args = parser.parse_args(argv)
    in_process(args.requests, args.rounds)
    with tempfile.TemporaryDirectory() as tmp, Servers(Path(tmp)) as servers:
        work = Path(tmp)
        upstream = servers.fake(free_port())
        url = servers.kit(free_port(), upstream, args.workers)
        pgid = servers.groups[url]
        print(f"one replica ({args.workers} worker), {args.rounds} x {args.seconds} s per route, CPU µs per request")
        for kind, stream in (("JSON", False), ("stream", True)):
            routes = bodies(stream)
            scripts = {
                name: wrk_script(work / f"{i}-{stream}.lua", json.dumps(body))
                for i, (name, (_, body)) in enumerate(routes.items())
            }
            cpu: dict[str, list[float]] = {name: [] for name in routes}
            for r in range(args.rounds):
                order = list(routes) if r % 2 == 0 else list(reversed(routes))
                for name in order:
                    run = wrk(url + routes[name][0], args.seconds, args.connections, scripts[name], pgid=pgid)
                    if run["errors"]:
                        raise SystemExit(f"bench: error: {run['errors']} failed requests on {name} ({work})")
                    cpu[name].append(run["cpu_us_per_request"])
            base = statistics.median(cpu[next(iter(routes))])
            print(f"{kind}:")
            for name, runs in cpu.items():
                micros = statistics.median(runs)
                print(f"    {name:30} {micros:8.0f} µs   {micros / base:6.3f} x chat")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
