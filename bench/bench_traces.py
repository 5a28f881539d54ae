#!/usr/bin/env python3
"""What traces cost per request: the request id middleware and the usage recorder as they were before traces
(a baseline git revision) against now with the OTLP export off and on, side by side in one process.

    python bench/bench_traces.py                       # baseline: the commit before gateway_kit/traces.py
    python bench/bench_traces.py --baseline main --requests 10000 --rounds 9
    python bench/bench_traces.py --wrk                 # end to end: three replicas under wrk (about 2 minutes)

Each request goes RequestContext -> UsageRecorder -> a trivial app answering a chat completion with its usage,
and its record to the usage log (stdout, here /dev/null), as a replica serves /gateway/chat/invocations; with the
export on, also to traces.Exporter, whose batches are encoded and POSTed to a real OTLP/HTTP receiver in
another process (gateway_kit/otlp_receiver.py) as they fill, in the timed thread (in a replica, the export thread does
it; the CPU is the worker's all the same). The request id middleware is also timed alone. Two kinds of request: with a client's traceparent and without one. Rounds
alternate the versions (in turn first and last). The figure is each one's CPU µs per request in its least
disturbed round (the minimum, as timeit reports: the process's user + system time, every thread, still varies
2x between rounds when other jobs share the cores), and its ratio to the baseline. A whole request costs a worker about 600 µs of CPU (docs/performance.md): divide the
difference by that for its share of a request.

--wrk: end to end instead. Three replicas by entrypoint.sh, 1 worker each, against one fake upstream: the
baseline's checkout (`git archive` of it), this checkout with the export off, and with the export on (to the
receiver); wrk POSTs /v1/chat/completions to each in turn, --rounds rounds of --duration seconds (the order
turned every round). The figures: each one's least CPU µs per request (its processes' CPU time from /proc
over the requests wrk counted) and best requests/s, with their ratios to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path


from lib import REPO, baseline_module, baseline_revision

from gateway_kit import app as current_app
from gateway_kit import recording as current_recording
from gateway_kit import traces
from gateway_kit.events import Events
from gateway_kit.pricing import Pricer
from gateway_kit.procs import stop_group
from gateway_kit.settings import TraceExport

PATH = "/gateway/chat/invocations"
CONFIG = {
    "endpoints": [
        {"name": "chat", "endpoint_type": "llm/v1/chat", "model": {"provider": "openai", "name": "gpt-4o-mini"}}
    ]
}
ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Fake answer to: hi"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19}}'
)
NGINX_HEADERS = [  # what nginx.conf sends a replica with a small chat request
    (b"host", b"mlflow-gateway"),
    (b"x-request-id", b"3f2a9c1e7b8d4e6f3f2a9c1e7b8d4e6f"),
    (b"x-gateway-client", b""),
    (b"x-real-ip", b"127.0.0.1"),
    (b"x-forwarded-for", b"127.0.0.1"),
    (b"x-forwarded-proto", b"http"),
    (b"content-length", b"60"),
    (b"content-type", b"application/json"),
    (b"user-agent", b"python-requests/2.32"),
]
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
RECEIVER = """
import time
from gateway_kit.otlp_receiver import running_receiver
with running_receiver() as r:
    print(r.base_url, flush=True)
    time.sleep(86400)
"""  # the receiver in a process of its own: its CPU is not the gateway's


async def provider(scope, receive, send):
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})


async def nothing(scope, receive, send):
    """The app inside the request id middleware when it is timed alone."""


async def receive():
    return {"type": "http.request", "body": b"{}", "more_body": False}


async def send(message):
    pass


def served(app_module, recording_module, listeners, exporting: bool | None):
    """RequestContext -> UsageRecorder -> provider, for one version (exporting None: the baseline's signature)."""
    events = Events(listeners)
    infos = recording_module.endpoint_infos(CONFIG)
    pricer = Pricer()
    pricer.warm([("gpt-4o-mini", "openai")])
    inner = recording_module.UsageRecorder(provider, infos, "bench", pricer, events)
    if exporting is None:
        return app_module.RequestContext(inner, replica="bench")
    return app_module.RequestContext(inner, replica="bench", exporting=exporting)


async def time_round(target, headers, n: int, exporter) -> float:
    scope = {"type": "http", "method": "POST", "path": PATH, "headers": headers}
    started = time.process_time()  # CPU time, user and system
    for _ in range(n):
        await target({**scope, "headers": list(headers)}, receive, send)
        if exporter is not None and len(exporter.queue) >= traces.BATCH:
            exporter.flush()  # what the export thread does when a batch is full, here in the timed thread
    if exporter is not None:
        exporter.flush()
    return (time.process_time() - started) / n * 1e6


@contextlib.contextmanager
def receiver_process():
    proc = subprocess.Popen(
        [sys.executable, "-c", RECEIVER],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        url = proc.stdout.readline().strip()
        yield url
    finally:
        stop_group(proc.pid)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="git revision to compare with (default: the commit before traces)")
    parser.add_argument("--requests", type=int, default=5000, help="requests per round and kind")
    parser.add_argument("--rounds", type=int, default=9, help="rounds per version (alternating)")
    parser.add_argument("--wrk", action="store_true", help="end to end: three replicas under wrk")
    parser.add_argument("--duration", type=int, default=5, help="--wrk: seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8, help="--wrk: wrk's connections")
    args = parser.parse_args(argv)
    rev, args.baseline = baseline_revision(
        args.baseline, "bench_traces.py", ("--diff-filter=A", "--", "gateway_kit/traces.py"), "gateway_kit/traces.py"
    )
    if args.wrk:
        return end_to_end(rev, args)
    base_app, base_recording = baseline_module("app", rev), baseline_module("recording", rev)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the usage log's stdout for the whole run
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    with receiver_process() as receiver_url:
        os.dup2(devnull.fileno(), 1)
        try:
            exporter = traces.Exporter(TraceExport(f"{receiver_url}/v1/traces"), CONFIG, "bench")
            exporter.start = lambda: None  # no thread: time_round sends each full batch, so its CPU is timed
            log = current_app.UsageLog(None)
            base = f"baseline ({args.baseline})"
            paths = {
                "request id middleware alone": {
                    base: (base_app.RequestContext(nothing, replica="bench"), None),
                    "export off": (current_app.RequestContext(nothing, replica="bench", exporting=False), None),
                    "export on": (current_app.RequestContext(nothing, replica="bench", exporting=True), None),
                },
                "request id + usage record (+ span)": {
                    base: (served(base_app, base_recording, [base_app.UsageLog(None)], None), None),
                    "export off": (served(current_app, current_recording, [log], False), None),
                    "export on": (served(current_app, current_recording, [log, exporter], True), exporter),
                },
            }
            kinds = {
                "no traceparent": NGINX_HEADERS,
                "with traceparent": [*NGINX_HEADERS, (b"traceparent", TRACEPARENT)],
            }
            times = {(path, v, k): [] for path, versions in paths.items() for v in versions for k in kinds}
            for n in range(args.rounds):
                for path, versions in paths.items():
                    order = list(versions)
                    for name in order[::-1] if n % 2 else order:
                        target, waits_for = versions[name]
                        for kind, headers in kinds.items():
                            cpu = await time_round(target, headers, args.requests, waits_for)
                            times[path, name, kind].append(cpu)
        finally:
            os.dup2(saved_stdout, 1)
    print(f"CPU µs per request, least of {args.rounds} rounds of {args.requests} (ratio to the {base}):")
    for path, versions in paths.items():
        print(f"{path}:")
        for kind in kinds:
            reference = min(times[path, base, kind])
            for name in versions:
                value = min(times[path, name, kind])
                print(
                    f"  {kind:17} {name:22} {value:7.1f} µs  {value / reference:5.3f}x  ({value - reference:+.1f} µs)"
                )
    print(f"spans exported: {exporter.failed} failed, {exporter.dropped} dropped (queue full)")
    return 0


def end_to_end(rev: str, args) -> int:
    """--wrk: the baseline's replica, this checkout's with the export off and on, under wrk in turn."""
    import shutil
    import tempfile

    from lib import Servers, chat_body, wrk, wrk_script

    from gateway_kit.procs import free_port

    work = Path(tempfile.mkdtemp(prefix="bench-traces-"))
    checkout = work / "baseline"
    checkout.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive, check=True)
    base = f"baseline ({args.baseline})"
    runs: dict[str, list[dict]] = {}
    try:
        with receiver_process() as receiver_url, Servers(work) as servers:
            fake = servers.fake(free_port())
            targets = {
                base: servers.kit(free_port(), fake, 1, checkout=checkout),
                "export off": servers.kit(free_port(), fake, 1),
                "export on": servers.kit(free_port(), fake, 1, OTEL_EXPORTER_OTLP_ENDPOINT=receiver_url),
            }
            script = wrk_script(work / "chat.lua", chat_body("How fast is this gateway?", model="chat"))
            order = list(targets)
            for url in targets.values():  # warm every path up once
                wrk(f"{url}/v1/chat/completions", 2, args.connections, script)
            for n in range(args.rounds):
                for name in order[n % len(order) :] + order[: n % len(order)]:
                    url = targets[name]
                    run = wrk(
                        f"{url}/v1/chat/completions",
                        args.duration,
                        args.connections,
                        script,
                        threads=1,
                        pgid=servers.groups[url],
                    )
                    runs.setdefault(name, []).append(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cpu = {name: min(r["cpu_us_per_request"] for r in rs) for name, rs in runs.items()}
    rps = {name: max(r["rps"] for r in rs) for name, rs in runs.items()}
    print(
        f"1 worker per replica, wrk c={args.connections}, {args.rounds} rounds of {args.duration}s, /v1/chat/completions:"
    )
    for name in runs:
        errors = sum(r["errors"] for r in runs[name])
        print(
            f"  {name:22} {cpu[name]:6.0f} CPU µs/request  {cpu[name] / cpu[base]:5.3f}x   "
            f"{rps[name]:6.0f} requests/s  {rps[name] / rps[base]:5.3f}x   errors {errors}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
