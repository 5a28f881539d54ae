"""Gateway throughput side by side in one run: stock MLflow, the kit, LiteLLM's proxy, the fake upstream.

    make bench                                     # this, then the nginx, TLS and evaluate benchmarks
    .venv/bin/python bench/run.py                  # 0 and 50 ms upstream latency x c=8, 32, 128
    .venv/bin/python bench/run.py --latency 0 --connections 32 --duration 5 --rounds 1   # a quick look

Every gateway gets the same worker count and answers POST /v1/chat/completions (model "chat") from the
same fake upstream; the fake's latency is set per request by a [[latency:MS]] marker in the prompt.
Targets:
  stock    `gunicorn -k uvicorn_worker.UvicornWorker 'mlflow.gateway.app:create_app_from_env()'`, serving the
           very config the kit checked and wrote (demo keys, the fake upstream)
  kit      entrypoint.sh, everything at its defaults (usage records, metrics, the shared upstream client)
  kit-no-metrics  the kit with metrics off (GATEWAY_METRICS=off): what metrics cost is the gap to `kit`
  kit-bare the kit with usage records and metrics off
  kit-baseline  with --baseline DIR: the kit of another checkout (e.g. `git worktree add /tmp/base main~3`), at its
           defaults, so what a change costs shows in one run
  litellm  LiteLLM's proxy (`litellm --num_workers N`), no database, LITELLM_LOCAL_MODEL_COST_MAP=True, a random
           master key; from its own venv (bench/litellm_venv.sh makes it), skipped with a note when missing
Rounds interleave the targets so machine noise hits them alike; each cell is the median round.
CPU µs per request: the target's processes' CPU time (from /proc) over the requests wrk counted in the same run;
it moves far less than requests/s on a shared machine.
Prints Markdown tables with each target's ratio to stock; --json for machines.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from gateway_kit.procs import clean_env, free_port
from lib import REPO, Servers, chat_body, markdown_table, median_run, wrk, wrk_script

LITELLM = REPO / ".bench" / "litellm" / "bin" / "litellm"
LITELLM_CONFIG = """\
model_list:
  - model_name: chat
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {upstream}/v1
      api_key: fake-key-for-the-fake-upstream
litellm_settings:
  telemetry: false
  drop_params: true
"""


def start_litellm(servers: Servers, port: int, upstream: str, workers: int) -> tuple[str, dict[str, str]]:
    config = servers.work / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(upstream=upstream))
    master_key = f"sk-{secrets.token_hex(16)}"  # it refuses well-known keys
    servers.start(
        "litellm",
        [
            str(LITELLM),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            str(workers),
        ],
        clean_env(
            LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_MASTER_KEY=master_key, LITELLM_LOG="ERROR", PYTHONPATH=""
        ),
    )
    headers = {"Authorization": f"Bearer {master_key}"}
    url = f"http://127.0.0.1:{port}"
    servers.wait(f"{url}/health/liveliness", timeout=180, headers=headers)
    return url, headers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[8, 32, 128],
        help="concurrent connections to try (default 8 32 128)",
    )
    parser.add_argument(
        "--latency", type=int, nargs="+", default=[0, 50], help="fake upstream latency in ms to try (default 0 50)"
    )
    parser.add_argument("--workers", type=int, default=2, help="workers per gateway (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the median counts (default 2)")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument(
        "--baseline", type=Path, metavar="DIR", help="another checkout of the kit, run as the target kit-baseline"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("bench: error: wrk is not installed — apt-get install wrk (scripts/setup.sh does)", file=sys.stderr)
        return 2
    litellm = not args.no_litellm and LITELLM.exists()
    if not args.no_litellm and not litellm:
        print(f"bench: LiteLLM left out: {LITELLM} is missing — make it with bench/litellm_venv.sh", file=sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    with Servers(work) as servers:
        fake = servers.fake(free_port())
        targets: dict[str, tuple[str, dict[str, str]]] = {"fake": (f"{fake}/v1/chat/completions", {})}
        kit = servers.kit(free_port(), fake, args.workers)
        active = work / f"kit-{kit.rsplit(':', 1)[1]}" / "config.active.yaml"
        targets["stock"] = (servers.stock(free_port(), active, args.workers) + "/v1/chat/completions", {})
        targets["kit"] = (f"{kit}/v1/chat/completions", {})
        no_metrics = servers.kit(free_port(), fake, args.workers, GATEWAY_METRICS="off")
        targets["kit-no-metrics"] = (f"{no_metrics}/v1/chat/completions", {})
        bare = servers.kit(free_port(), fake, args.workers, GATEWAY_USAGE_RECORDS="off", GATEWAY_METRICS="off")
        targets["kit-bare"] = (f"{bare}/v1/chat/completions", {})
        if args.baseline:
            baseline = servers.kit(free_port(), fake, args.workers, checkout=args.baseline.resolve())
            targets["kit-baseline"] = (f"{baseline}/v1/chat/completions", {})
        if litellm:
            url, headers = start_litellm(servers, free_port(), fake, args.workers)
            targets["litellm"] = (f"{url}/v1/chat/completions", headers)

        scripts = {}
        for latency in args.latency:
            for name, (_, headers) in targets.items():
                body = chat_body(
                    f"[[latency:{latency}]] How fast is this gateway?",
                    model="gpt-4o-mini" if name == "fake" else "chat",
                )
                scripts[latency, name] = wrk_script(work / f"{name}-{latency}.lua", body, headers)
        for name, (url, _) in targets.items():  # warm every path up once
            wrk(url, 2, 8, scripts[args.latency[0], name])
        runs: dict[tuple, list[dict]] = {}
        for _ in range(args.rounds):
            for latency in args.latency:
                for c in args.connections:
                    for name, (url, _) in targets.items():
                        group = servers.groups.get(url.removesuffix("/v1/chat/completions"))
                        runs.setdefault((latency, c, name), []).append(
                            wrk(url, args.duration, c, scripts[latency, name], pgid=group)
                        )
    shutil.rmtree(work, ignore_errors=True)

    results = {key: median_run(rs) for key, rs in runs.items()}
    if args.json:
        print(
            json.dumps(
                {
                    "options": vars(args),
                    "results": [
                        {"latency_ms": lat, "connections": c, "target": name, **r}
                        for (lat, c, name), r in results.items()
                    ],
                },
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    print(
        f"\n{args.workers} workers per gateway, {args.duration}s x {args.rounds} rounds (median), "
        f"{os.cpu_count()} cores, POST /v1/chat/completions\n"
    )
    rows = []
    for (latency, c, name), r in results.items():
        stock = results[latency, c, "stock"]["rps"]
        rows.append(
            [
                f"{latency} ms",
                c,
                name,
                f"{r['rps']:.0f}",
                f"{r['rps'] / stock:.2f}x",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                "-" if r["cpu_us_per_request"] is None else f"{r['cpu_us_per_request']:.0f}",
                r["errors"],
            ]
        )
    header = ["upstream", "c", "target", "requests/s", "vs stock", "p50 ms", "p99 ms", "CPU µs/request", "errors"]
    print(markdown_table(header, rows))
    print()
    cells = sorted({(lat, c) for lat, c, _ in results})
    # Where the kit comes within 20% of connections / latency (Little's law), the upstream's latency, not the
    # gateway, sets its pace: no gateway could do better there, so such cells say nothing about the goals.
    bound = [(lat, c) for lat, c in cells if lat and results[lat, c, "kit"]["rps"] >= 0.8 * c * 1000 / lat]
    for other, goal in (("stock", 1.5), ("litellm", 8)):
        ratios = [
            results[lat, c, "kit"]["rps"] / results[lat, c, other]["rps"]
            for lat, c in cells
            if (lat, c) not in bound and (lat, c, other) in results
        ]
        if ratios:
            print(
                f"kit / {other} requests/s where the gateway is the limit: min {min(ratios):.2f}x, median "
                f"{statistics.median(ratios):.2f}x (goal >= {goal}x)"
            )
    if bound:
        print(f"left out, the kit bound by connections / latency: {', '.join(f'{lat} ms c={c}' for lat, c in bound)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
