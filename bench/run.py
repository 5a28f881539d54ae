"""Gateway throughput side by side in one run: stock MLflow, the kit, MLflow's server gateway, LiteLLM's proxy,
Portkey's gateway, the fake upstream; requests/s, CPU µs per request, and a streaming cell (chunks/s, CPU µs per
chunk).

    make bench                                     # this, then the nginx, TLS and evaluate benchmarks
    .venv/bin/python bench/run.py                  # 0 and 50 ms upstream latency x c=8, 32, 128, and the streams
    .venv/bin/python bench/run.py --workers 1 --latency 0 --connections 16   # one process each
    .venv/bin/python bench/run.py --latency 0 --connections 32 --duration 5 --rounds 1   # a quick look

Every gateway gets the same worker count and answers POST /v1/chat/completions (model "chat") from the
same fake upstream; the fake's latency is set per request by a [[latency:MS]] marker in the prompt.
Targets:
  stock    `gunicorn -k uvicorn_worker.UvicornWorker 'mlflow.gateway.app:create_app_from_env()'`, serving the
           very config the kit checked and wrote (demo keys, the fake upstream)
  kit      entrypoint.sh, everything at its defaults (usage records, metrics, the shared upstream client)
  kit-no-metrics  the kit with metrics off (GATEWAY_METRICS=off): what metrics cost is the gap to `kit`
  kit-bare the kit with usage records and metrics off
  kit@NAME with --baseline DIR: the kit of another checkout (e.g. `git worktree add /tmp/base main~3`), at its
           defaults, so what a change costs shows in one run
  mlflow-server  MLflow's newer gateway in its tracking server (`mlflow server --workers N`, the same mlflow
           release): an endpoint "chat" in a sqlite backend store, the fake as its OpenAI provider (api_base),
           served at /gateway/mlflow/v1/chat/completions; usage tracking (traces) and the job runner off
  litellm  LiteLLM's proxy (`litellm --num_workers N`), no database, LITELLM_LOCAL_MODEL_COST_MAP=True, a random
           master key; from its own venv (bench/litellm_venv.sh makes it), skipped with a note when missing
  portkey  Portkey's gateway (npm @portkey-ai/gateway): one node process (it has no workers), or with --workers N > 1
           N node processes behind node's cluster module (bench/portkey_cluster.mjs, as pm2's cluster mode runs
           it), aimed at the fake by request headers (x-portkey-provider: openai, x-portkey-custom-host); from
           .bench/portkey (bench/portkey_install.sh makes it), skipped with a note when missing
Rounds interleave the targets so machine noise hits them alike; each cell is the median round.
CPU µs per request: the target's processes' CPU time (its whole process group, from /proc: master, workers,
node) over the requests wrk counted in the same run; it moves far less than requests/s on a shared machine.
The streaming cell: every answer is --stream-chunks content chunks (the fake's [[reply:...]]); each target's
stream is read once first and its chunks counted (a target whose stream delivers none is reported as such and
left out of the figures); chunks/s = answers/s x that count, CPU µs per chunk = CPU per answer / that count.
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

from dataclasses import dataclass, field

from gateway_kit.procs import clean_env, free_port
from lib import REPO, Servers, chat_body, markdown_table, median_run, stream_chunks, wrk, wrk_script

CHAT = "/v1/chat/completions"
LITELLM = REPO / ".bench" / "litellm" / "bin" / "litellm"
PORTKEY = REPO / ".bench" / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
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


@dataclass(frozen=True)
class Target:
    """One gateway under test: where wrk posts, with which headers and model, and the process group whose CPU
    time counts; `processes` says what its process count is (its workers, or Portkey's one node process)."""

    url: str
    processes: str
    model: str = "chat"
    headers: dict[str, str] = field(default_factory=dict)
    pgid: int | None = None


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


def start_portkey(servers: Servers, port: int, upstream: str, processes: int) -> tuple[str, dict[str, str]]:
    """Portkey's gateway: one node process (`start-server.js --port=N --headless`; NODE_ENV=production leaves its
    log UI out), or with `processes` > 1 that many behind node's cluster module (bench/portkey_cluster.mjs). It
    routes by request headers: provider openai, the fake as custom host (loopback is on its trusted list). It
    listens on every interface (start-server.js takes no host), on a free port, for as long as the bench runs."""
    server = [str(PORTKEY), f"--port={port}", "--headless"]
    cluster = [str(REPO / "bench" / "portkey_cluster.mjs"), str(processes)] if processes > 1 else []
    proc = servers.start("portkey", ["node", *cluster, *server], clean_env(NODE_ENV="production"))
    url = f"http://127.0.0.1:{port}"
    servers.wait(f"{url}/", proc)
    servers.groups[url] = proc.pid
    headers = {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"{upstream}/v1",
        "Authorization": "Bearer fake-key-for-the-fake-upstream",
    }
    return url, headers


def start_mlflow_server(servers: Servers, port: int, upstream: str, workers: int) -> str:
    """`mlflow server` with an AI gateway endpoint "chat": the fake as an OpenAI provider (a secret with api_base,
    a model definition, an endpoint), written to a fresh sqlite store before the server starts.
    MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS lets it call a loopback provider (its SSRF guard refuses private
    addresses otherwise); the job runner (huey consumers that score traces, not the gateway) and telemetry are
    off, and the endpoint's usage tracking (a trace per request) is off, as the YAML gateway has none."""
    from mlflow.entities.gateway_endpoint import GatewayEndpointModelConfig, GatewayModelLinkageType
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    work = servers.work / "mlflow-server"
    work.mkdir()
    store_uri = f"sqlite:///{work / 'mlflow.db'}"
    store = SqlAlchemyStore(store_uri, str(work / "artifacts"))
    secret = store.create_gateway_secret(
        "fake-upstream",
        {"api_key": "fake-key-for-the-fake-upstream"},
        provider="openai",
        auth_config={"api_base": f"{upstream}/v1"},
    )
    model = store.create_gateway_model_definition("fake-gpt-4o-mini", secret.secret_id, "openai", "gpt-4o-mini")
    primary = GatewayEndpointModelConfig(
        model_definition_id=model.model_definition_id, linkage_type=GatewayModelLinkageType.PRIMARY
    )
    store.create_gateway_endpoint("chat", [primary], usage_tracking=False)
    store.engine.dispose()
    proc = servers.start(
        f"mlflow-server-{port}",
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            store_uri,
            "--default-artifact-root",
            str(work / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        clean_env(
            MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS="true",
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
            MLFLOW_DISABLE_TELEMETRY="true",
        ),
    )
    url = f"http://127.0.0.1:{port}"
    servers.wait(f"{url}/health", proc, timeout=180)
    servers.groups[url] = proc.pid
    return url


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
    parser.add_argument(
        "--workers", type=int, default=2, help="workers (node processes for Portkey) per gateway (default 2)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the median counts (default 2)")
    parser.add_argument(
        "--stream-chunks",
        type=int,
        default=200,
        help="content chunks per streamed answer in the streaming cell; 0 leaves the cell out (default 200)",
    )
    parser.add_argument(
        "--stream-connections", type=int, default=16, help="concurrent streams in the streaming cell (default 16)"
    )
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument("--no-portkey", action="store_true", help="leave Portkey's gateway out")
    parser.add_argument("--no-mlflow-server", action="store_true", help="leave MLflow's server gateway out")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        action="append",
        default=[],
        help="another checkout of the kit, run as the target kit@DIR's name; again for more (--baseline of this "
        "very checkout's copy shows the noise between two identical kits)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        print("bench: error: wrk is not installed — apt-get install wrk (scripts/setup.sh does)", file=sys.stderr)
        return 2
    litellm = not args.no_litellm and LITELLM.exists()
    if not args.no_litellm and not litellm:
        print(f"bench: LiteLLM left out: {LITELLM} is missing — make it with bench/litellm_venv.sh", file=sys.stderr)
    portkey = not args.no_portkey and PORTKEY.exists() and shutil.which("node") is not None
    if not args.no_portkey and not portkey:
        print(
            f"bench: Portkey left out: {PORTKEY} or node is missing — make it with bench/portkey_install.sh",
            file=sys.stderr,
        )

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    workers = f"{args.workers} worker{'s' * (args.workers > 1)}"
    with Servers(work) as servers:

        def target(base: str, processes: str = workers, path: str = CHAT, **kwargs) -> Target:
            return Target(f"{base}{path}", processes, pgid=servers.groups.get(base), **kwargs)

        fake = servers.fake(free_port())
        targets: dict[str, Target] = {"fake": target(fake, "1 process", model="gpt-4o-mini")}
        kit = servers.kit(free_port(), fake, args.workers)
        active = work / f"kit-{kit.rsplit(':', 1)[1]}" / "config.active.yaml"
        targets["stock"] = target(servers.stock(free_port(), active, args.workers))
        targets["kit"] = target(kit)
        targets["kit-no-metrics"] = target(servers.kit(free_port(), fake, args.workers, GATEWAY_METRICS="off"))
        targets["kit-bare"] = target(
            servers.kit(free_port(), fake, args.workers, GATEWAY_USAGE_RECORDS="off", GATEWAY_METRICS="off")
        )
        for checkout in args.baseline:
            targets[f"kit@{checkout.resolve().name}"] = target(
                servers.kit(free_port(), fake, args.workers, checkout=checkout.resolve())
            )
        if not args.no_mlflow_server:
            server = start_mlflow_server(servers, free_port(), fake, args.workers)
            targets["mlflow-server"] = target(server, path=f"/gateway/mlflow{CHAT}")
        if litellm:
            url, headers = start_litellm(servers, free_port(), fake, args.workers)
            targets["litellm"] = target(url, headers=headers)
        if portkey:
            url, headers = start_portkey(servers, free_port(), fake, args.workers)
            processes = "1 node process" if args.workers == 1 else f"{args.workers} node processes (cluster)"
            targets["portkey"] = target(url, processes, model="gpt-4o-mini", headers=headers)

        scripts = {}
        for latency in args.latency:
            for name, t in targets.items():
                body = chat_body(f"[[latency:{latency}]] How fast is this gateway?", model=t.model)
                scripts[latency, name] = wrk_script(work / f"{name}-{latency}.lua", body, t.headers)
        chunks: dict[str, int] = {}
        if args.stream_chunks:
            reply = " ".join(f"w{i}" for i in range(args.stream_chunks))
            for name, t in targets.items():
                body = chat_body(f"[[reply:{reply}]] Stream it, please.", model=t.model, stream=True)
                scripts["stream", name] = wrk_script(work / f"{name}-stream.lua", body, t.headers)
                chunks[name] = stream_chunks(t.url, body, t.headers)
                if not chunks[name]:
                    print(
                        f"bench: {name}'s stream delivered no chunks: left out of the streaming cell", file=sys.stderr
                    )
        for name, t in targets.items():  # warm every path up once
            wrk(t.url, 2, 8, scripts[args.latency[0], name])
        cells = [(latency, c) for latency in args.latency for c in args.connections]
        cells += [("stream", args.stream_connections)] if any(chunks.values()) else []
        runs: dict[tuple, list[dict]] = {}
        for _ in range(args.rounds):
            for cell, c in cells:
                for name, t in targets.items():
                    if cell != "stream" or chunks[name]:
                        runs.setdefault((cell, c, name), []).append(
                            wrk(t.url, args.duration, c, scripts[cell, name], pgid=t.pgid)
                        )
    shutil.rmtree(work, ignore_errors=True)

    results = {key: median_run(rs) for key, rs in runs.items() if key[0] != "stream"}
    streams = {
        name: stream_figures(median_run(rs), chunks[name]) for (cell, _, name), rs in runs.items() if cell == "stream"
    }
    if args.json:
        print(
            json.dumps(
                {
                    "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "processes": {name: t.processes for name, t in targets.items()},
                    "results": [
                        {"latency_ms": lat, "connections": c, "target": name, **r}
                        for (lat, c, name), r in results.items()
                    ],
                    "streams": [{"target": name, **r} for name, r in streams.items()],
                    "stream_chunks_counted": chunks,
                },
                indent=2,
                sort_keys=True,
            )
        )
        return 0
    print(
        f"\n{args.duration}s x {args.rounds} rounds (median), {os.cpu_count()} cores, POST /v1/chat/completions; "
        + ", ".join(f"{name} {t.processes}" for name, t in targets.items() if name != "fake")
        + "\n"
    )
    print_requests(results)
    if streams:
        print_streams(streams, args.stream_chunks, args.stream_connections)
    print_summary(results, streams, args.workers)
    return 0


def stream_figures(run: dict, chunks: int) -> dict:
    """A streaming wrk run in chunks: wrk counts answers, each of which delivered `chunks` chunks."""
    cpu = run["cpu_us_per_request"]
    return {
        **run,
        "chunks_per_answer": chunks,
        "chunks_per_s": run["rps"] * chunks,
        "cpu_us_per_chunk": None if cpu is None else cpu / chunks,
    }


def cpu(figure: float | None) -> str:
    return "-" if figure is None else f"{figure:.0f}"


def print_requests(results: dict) -> None:
    rows = []
    for (latency, c, name), r in results.items():
        stock = results[latency, c, "stock"]
        rows.append(
            [
                f"{latency} ms",
                c,
                name,
                f"{r['rps']:.0f}",
                f"{r['rps'] / stock['rps']:.2f}x",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                cpu(r["cpu_us_per_request"]),
                r["errors"],
            ]
        )
    header = ["upstream", "c", "target", "requests/s", "vs stock", "p50 ms", "p99 ms", "CPU µs/request", "errors"]
    print(markdown_table(header, rows))
    print()


def print_streams(streams: dict, chunks: int, connections: int) -> None:
    stock = streams.get("stock")
    rows = [
        [
            name,
            f"{r['rps']:.0f}",
            r["chunks_per_answer"],
            f"{r['chunks_per_s']:.0f}",
            f"{r['chunks_per_s'] / stock['chunks_per_s']:.2f}x" if stock else "-",
            "-" if r["cpu_us_per_chunk"] is None else f"{r['cpu_us_per_chunk']:.1f}",
            f"{r['p50_ms']:.1f}",
            r["errors"],
        ]
        for name, r in streams.items()
    ]
    print(
        f"Streams: {chunks} content chunks per answer, {connections} at once, 0 ms upstream "
        "(chunks per answer: the JSON events a target's stream delivered, counted before the run)\n"
    )
    header = ["target", "answers/s", "chunks/answer", "chunks/s", "vs stock", "CPU µs/chunk", "p50 ms", "errors"]
    print(markdown_table(header, rows))
    print()


def print_summary(results: dict, streams: dict, workers: int) -> None:
    cells = sorted({(lat, c) for lat, c, _ in results})
    # Where the kit comes within 20% of connections / latency (Little's law), the upstream's latency, not the
    # gateway, sets its pace: no gateway could do better there, so such cells say nothing about the goals.
    bound = [(lat, c) for lat, c in cells if lat and results[lat, c, "kit"]["rps"] >= 0.8 * c * 1000 / lat]
    free = [(lat, c) for lat, c in cells if (lat, c) not in bound]
    goals = {"stock": " (goal >= 1.5x)", "litellm": " (goal >= 8x)"}
    for other in ("stock", "mlflow-server", "litellm", "portkey"):
        rps = [
            results[lat, c, "kit"]["rps"] / results[lat, c, other]["rps"]
            for lat, c in free
            if (lat, c, other) in results
        ]
        if not rps:
            continue
        processes = f", {workers} process{'es' * (workers > 1)} each" if other == "portkey" else ""
        print(
            f"kit / {other} requests/s where the gateway is the limit{processes}: min {min(rps):.2f}x, "
            f"median {statistics.median(rps):.2f}x{goals.get(other, '')}"
        )
        used = [
            results[lat, c, other]["cpu_us_per_request"] / results[lat, c, "kit"]["cpu_us_per_request"]
            for lat, c in free
            if (lat, c, other) in results
            and results[lat, c, other]["cpu_us_per_request"]
            and results[lat, c, "kit"]["cpu_us_per_request"]
        ]
        if used:
            print(f"  {other} / kit CPU µs per request: median {statistics.median(used):.2f}x")
    if bound:
        print(f"left out, the kit bound by connections / latency: {', '.join(f'{lat} ms c={c}' for lat, c in bound)}")
    kit = streams.get("kit")
    for other, r in streams.items():
        if kit and other not in ("kit", "fake") and r["cpu_us_per_chunk"] and kit["cpu_us_per_chunk"]:
            print(
                f"streams, kit / {other}: chunks/s {kit['chunks_per_s'] / r['chunks_per_s']:.2f}x, "
                f"{other} / kit CPU µs per chunk {r['cpu_us_per_chunk'] / kit['cpu_us_per_chunk']:.2f}x"
            )


if __name__ == "__main__":
    raise SystemExit(main())
