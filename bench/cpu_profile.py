"""Where a gateway worker spends its CPU: py-spy samples one worker while wrk loads it, then the functions are
ranked by their share of the samples where each was running (self time: the function itself, not its callees;
a system call such as a socket write counts for the Python function that made it).

    .venv/bin/python bench/cpu_profile.py                       # the kit, 1 worker, 0 ms upstream, c=16, 20 s
    .venv/bin/python bench/cpu_profile.py --target stock        # stock MLflow under gunicorn, the same way
    .venv/bin/python bench/cpu_profile.py --stream 200          # streamed answers of 200 chunks instead
    .venv/bin/python bench/cpu_profile.py --baseline /tmp/base  # another checkout of the kit (git worktree add ...)

py-spy (requirements-dev.txt) reads the worker's stacks from outside, 100 times a second, without pausing it
(--nonblocking: a worker paused for every sample served a sixth of the requests, which skews the profile). Only
samples where the worker runs count, not its idle wait in the event loop. The first table groups the functions'
files by package (the kit, uvicorn, aiohttp, MLflow ...): where the time goes by layer. --raw FILE keeps
py-spy's collapsed stacks for a flame graph (speedscope, flamegraph.pl).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from gateway_kit.procs import children, free_port, stat_fields
from lib import Servers, chat_body, markdown_table, wrk, wrk_script

PY_SPY = Path(sys.executable).with_name("py-spy")
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")
LAYERS = (  # the first match names a file's layer
    ("gateway_kit", "kit"),
    ("mlflow/gateway", "mlflow gateway"),
    ("mlflow", "mlflow other"),
    ("starlette", "starlette"),
    ("fastapi", "fastapi"),
    ("pydantic", "pydantic"),
    ("uvicorn", "uvicorn"),
    ("aiohttp", "aiohttp"),
    ("prometheus_client", "prometheus_client"),
    ("asyncio", "asyncio"),
    ("json", "json"),
)


def worker_pid(master: int) -> int:
    """The one worker of a gunicorn master (the kit and stock run 1 worker here)."""
    workers = children(master)
    if not workers:
        raise SystemExit(f"cpu_profile: error: process {master} has no worker")
    return workers[0]


def samples(raw: Path) -> list[tuple[list[str], int]]:
    """py-spy's collapsed stacks: (frames outermost first, count)."""
    out = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            out.append((stack.split(";"), int(count)))
    return out


def frame_parts(frame: str) -> tuple[str, str]:
    """(`function (file)`, the file) of a py-spy frame `function (path/to/file.py:LINE)`."""
    m = FRAME.match(frame)
    if not m:
        return frame, ""
    path = m["file"]
    short = path.split("site-packages/")[-1].split("/lib/python3.11/")[-1]
    return f"{m['func']} ({short})", short


def layer(file: str) -> str:
    return next((name for prefix, name in LAYERS if prefix in file), "other")


def rank(stacks: list[tuple[list[str], int]], top: int) -> tuple[list[list[str]], list[list[str]]]:
    """The `top` functions by self time, and every layer, as table rows with their share of the samples. Only
    the innermost frame of a sample counts: a stack read without pausing the worker may lack its outer frames."""
    total = sum(n for _, n in stacks) or 1
    own, layers = Counter(), Counter()
    for frames, n in stacks:
        function, file = frame_parts(frames[-1])
        own[function] += n
        layers[layer(file)] += n

    def rows(counter: Counter, limit: int) -> list[list[str]]:
        return [[name, f"{100 * n / total:.1f}%"] for name, n in counter.most_common(limit)]

    return rows(own, top), rows(layers, len(LAYERS) + 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("kit", "kit-bare", "stock"), default="kit")
    parser.add_argument("--baseline", type=Path, metavar="DIR", help="profile the kit of another checkout")
    parser.add_argument("--duration", type=int, default=20, help="seconds sampled (default 20)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--stream", type=int, default=0, metavar="CHUNKS", help="streamed answers of CHUNKS chunks")
    parser.add_argument("--top", type=int, default=25, help="functions per table (default 25)")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args()
    if not PY_SPY.exists():
        raise SystemExit(f"cpu_profile: error: {PY_SPY} is missing: pip install -r requirements-dev.txt")

    work = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    raw = args.raw or work / "stacks.txt"
    with Servers(work) as servers:
        fake = servers.fake(free_port())
        settings = {"GATEWAY_USAGE_RECORDS": "off", "GATEWAY_METRICS": "off"} if args.target == "kit-bare" else {}
        checkout = {"checkout": args.baseline.resolve()} if args.baseline else {}
        kit = servers.kit(free_port(), fake, 1, **checkout, **settings)
        url = kit
        if args.target == "stock":
            active = work / f"kit-{kit.rsplit(':', 1)[1]}" / "config.active.yaml"
            url = servers.stock(free_port(), active, 1)
        if args.stream:
            reply = " ".join(f"w{i}" for i in range(args.stream))
            body = chat_body(f"[[reply:{reply}]] Stream it, please.", model="chat", stream=True)
        else:
            body = chat_body("[[latency:0]] How fast is this gateway?", model="chat")
        script = wrk_script(work / "load.lua", body)
        chat = f"{url}/v1/chat/completions"
        wrk(chat, 3, args.connections, script)  # warm up
        pid = worker_pid(servers.groups[url])
        before = stat_fields(pid)[0]
        load: dict = {}
        loader = threading.Thread(
            target=lambda: load.update(wrk(chat, args.duration + 2, args.connections, script, pgid=servers.groups[url]))
        )
        loader.start()
        subprocess.run(
            [str(PY_SPY), "record", "--pid", str(pid), "--duration", str(args.duration), "--rate", "100"]
            + ["--format", "raw", "--output", str(raw), "--nonblocking"],
            check=True,
            capture_output=True,
        )
        loader.join()
        after = stat_fields(pid)[0]
    if load.get("errors"):
        raise SystemExit(
            f"cpu_profile: error: {load['errors']} of the requests failed: the servers' logs are in {work}"
        )
    per = (args.stream or 1) * max(load.get("requests", 0), 1) / 1e6 * os.sysconf("SC_CLK_TCK")
    user, system = ((int(after[i]) - int(before[i])) / per for i in (11, 12))
    stacks = samples(raw)
    own, layers = rank(stacks, args.top)
    what = args.target + (f" of {args.baseline}" if args.baseline else "")
    print(
        f"## {what}: 1 worker, {'%d-chunk streams' % args.stream if args.stream else '0 ms upstream'}, "
        f"c={args.connections}, {sum(n for _, n in stacks)} samples; under py-spy: {load.get('rps', 0):.0f} "
        f"requests/s, {load.get('cpu_us_per_request') or 0:.0f} CPU µs/request\n\n"
        f"The worker's CPU per {'chunk' if args.stream else 'request'}: {user:.0f} µs in user space (Python and "
        f"the C it calls), {system:.0f} µs in the kernel (system calls: socket writes and reads, files)\n"
    )
    print("### By layer (self time)\n\n" + markdown_table(["layer", "share"], layers) + "\n")
    print("### Self time\n\n" + markdown_table(["function", "share"], own))
    if not args.raw:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
