#!/usr/bin/env python3
"""Is this change slower? The kit of several checkouts side by side: CPU µs per request, one worker each pinned
to the last CPU, wrk and the fake upstream on CPU 0, rounds alternating the order (ABBA).

    git worktree add --detach /tmp/base main~5 && git worktree add --detach /tmp/copy HEAD
    .venv/bin/python bench/kit_versions.py . /tmp/copy /tmp/base      # this tree, an identical copy, a baseline

Pass an identical copy of one checkout too: the spread between the two is the measurement's noise, which a
difference must exceed. Pinning keeps each worker's CPU time free of wrk's and the fake's on a 2-core machine;
requests/s is not shown, being what other work on a shared machine moves most. The figure is the median round
(and the least, which noise can only raise) of POST /v1/chat/completions with the fake at 0 ms, c=16.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from lib import Servers, chat_body, pin_group, wrk, wrk_script

from gateway_kit.procs import free_port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+", type=Path, metavar="DIR", help="checkouts of the kit")
    parser.add_argument("--rounds", type=int, default=9, help="rounds (default 9)")
    parser.add_argument("--duration", type=int, default=4, help="seconds per target per round (default 4)")
    args = parser.parse_args()
    if os.cpu_count() < 2:
        raise SystemExit("kit_versions: error: needs 2 CPUs (the workers on one, wrk and the fake on the other)")
    last = str(os.cpu_count() - 1)
    work = Path(tempfile.mkdtemp(prefix="gateway-kit-versions-"))
    with Servers(work) as servers:
        fake = servers.fake(free_port())
        pin_group(servers.groups[fake], "0")
        urls = {}
        for checkout in args.checkouts:
            url = servers.kit(free_port(), fake, 1, checkout=checkout.resolve())
            pin_group(servers.groups[url], last)
            urls[f"{checkout} ({url})"] = url
        script = wrk_script(work / "chat.lua", chat_body("[[latency:0]] Which is faster?", model="chat"))
        for url in urls.values():  # warm up
            wrk(f"{url}/v1/chat/completions", 2, 16, script, threads=1, cpus="0")
        cpu: dict[str, list[float]] = {name: [] for name in urls}
        for n in range(args.rounds):
            order = list(urls.items())
            for name, url in order[::-1] if n % 2 else order:
                run = wrk(f"{url}/v1/chat/completions", args.duration, 16, script, 1, servers.groups[url], cpus="0")
                if run["errors"]:
                    raise SystemExit(f"kit_versions: error: {name} failed {run['errors']} requests (logs: {work})")
                cpu[name].append(run["cpu_us_per_request"])
    shutil.rmtree(work, ignore_errors=True)
    first = statistics.median(cpu[next(iter(cpu))])
    print(f"CPU µs per request, 1 worker pinned to CPU {last}, {args.rounds} rounds of {args.duration} s, c=16:")
    for name, values in cpu.items():
        median = statistics.median(values)
        print(f"  {name}: median {median:.0f} ({median / first:.3f}x the first), least {min(values):.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
