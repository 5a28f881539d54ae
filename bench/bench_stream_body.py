"""A stream's body in process: CPU µs per event of gateway_kit.app.stream_body (the events ready together in one
body message, through a reader task) against a plain pass-through (each event its own message, as before the
coalescing), and against another checkout's stream_body (--baseline DIR).

    .venv/bin/python bench/bench_stream_body.py
    .venv/bin/python bench/bench_stream_body.py --baseline /tmp/main   # git worktree add /tmp/main main

Two kinds of stream, 200 events each: `apart`, every event one turn of the event loop after the one before (as
a provider's tokens arrive, each in its own read), and `together`, all of them ready at once (as when they
arrive in one segment, or pile up while the worker is busy). The body's messages are counted, not written: what
this measures is the hand-over, not the socket writes the coalescing saves (bench/run.py's streaming cell
measures those). The targets run in alternating order, round after round; each figure is the median.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import uvloop

from gateway_kit.app import SSE_DONE, stream_body
from lib import markdown_table

EVENT = 'data: {"choices":[{"delta":{"content":"w"}}]}\n\n'


async def pass_through(events):
    """Each event as its own message, then [DONE]: the body before the coalescing."""
    answered = False
    async for event in events:
        answered = True
        yield event
    if answered:
        yield SSE_DONE


async def events_apart(n: int):
    loop = asyncio.get_running_loop()
    for _ in range(n):
        turn = loop.create_future()
        loop.call_soon(turn.set_result, None)  # the next event is one loop turn away, as a socket read is
        await turn
        yield EVENT


async def events_together(n: int):
    for _ in range(n):
        yield EVENT


async def one_run(body, events, streams: int, n: int) -> int:
    messages = 0
    for _ in range(streams):
        async for _message in body(events(n)):
            messages += 1
    return messages


def cpu_us_per_event(body, events, streams: int, n: int) -> tuple[float, float]:
    """(CPU µs per event, body messages per stream)."""
    started = time.process_time()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # the workers' loop (uvicorn's `auto`)
        messages = runner.run(one_run(body, events, streams, n))
    return (time.process_time() - started) * 1e6 / (streams * n), messages / streams


def baseline_body(checkout: Path):
    """stream_body from another checkout's gateway_kit/app.py (its own imports from this checkout's package)."""
    path = checkout / "gateway_kit" / "app.py"
    spec = importlib.util.spec_from_file_location("baseline_gateway_app", path)
    if spec is None or not path.exists():
        raise SystemExit(f"bench_stream_body: error: {path} not found: give a checkout of the kit")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.stream_body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="another checkout's stream_body too")
    parser.add_argument("--events", type=int, default=200, help="events per stream (default 200)")
    parser.add_argument("--streams", type=int, default=200, help="streams per round (default 200)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds (default 9)")
    args = parser.parse_args()
    bodies = {"pass-through": pass_through, "stream_body": stream_body}
    if args.baseline:
        bodies["baseline"] = baseline_body(args.baseline)
    kinds = {"apart": events_apart, "together": events_together}
    cpu = {(name, kind): [] for name in bodies for kind in kinds}
    per_stream = {}
    for round_ in range(args.rounds):
        order = list(bodies) if round_ % 2 == 0 else list(reversed(bodies))
        for kind, events in kinds.items():
            for name in order:
                us, messages = cpu_us_per_event(bodies[name], events, args.streams, args.events)
                cpu[name, kind].append(us)
                per_stream[name, kind] = messages
    rows = []
    for kind in kinds:
        reference = statistics.median(cpu["pass-through", kind])
        for name in bodies:
            median = statistics.median(cpu[name, kind])
            rows.append([kind, name, f"{median:.1f}", f"{median / reference:.2f}x", f"{per_stream[name, kind]:.0f}"])
    print(
        f"{args.streams} streams of {args.events} events per round, {args.rounds} rounds, median:\n\n"
        + markdown_table(["events", "body", "CPU µs/event", "vs pass-through", "messages/stream"], rows)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
