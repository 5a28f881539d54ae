"""What the benchmarks share: servers started and stopped by process group, wrk, and the targets.

Every server runs on loopback from this repository's files: the fake upstream, the kit (entrypoint.sh,
exactly as a replica starts), stock MLflow under gunicorn, and LiteLLM's proxy from its own venv.
"""

from __future__ import annotations

import http.client
import os
import re
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from gateway_kit.procs import clean_env, free_port, stat_fields, stop_group, wait_http

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "scripts" / "local_stack.sh"


class Servers:
    """Starts servers in their own process groups; stops every group on exit (stock MLflow's `gateway start`
    and LiteLLM leave children behind on a plain SIGTERM)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen] = []
        self.groups: dict[str, int] = {}  # a target's URL -> its process group, whose CPU time wrk() can count

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen:
        with (self.work / f"{name}.log").open("w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True, cwd=cwd)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        stop_group(proc.pid)
        proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def __enter__(self) -> "Servers":
        return self

    def __exit__(self, *exc) -> None:
        for proc in list(self.procs):
            self.stop(proc)

    def ready(self, proc: subprocess.Popen, port: int) -> str:
        """The URL of a server started on `port` once its /health answers; its process group is kept in `groups`."""
        url = f"http://127.0.0.1:{port}"
        self.wait(f"{url}/health", proc)
        self.groups[url] = proc.pid
        return url

    def wait(
        self, url: str, proc: subprocess.Popen | None = None, timeout: float = 90, headers: dict[str, str] | None = None
    ) -> None:
        """wait_http(url), or the benchmark stops with one line: what did not answer, and where the logs are."""
        try:
            wait_http(url, timeout=timeout, proc=proc, headers=headers)
        except (TimeoutError, RuntimeError) as e:
            raise SystemExit(f"bench: error: {e} (the servers' logs: {self.work})") from None

    # ------------------------------------------------------------------ the targets
    def fake(self, port: int, *args: str) -> str:
        proc = self.start(
            f"fake-{port}", [sys.executable, "-m", "gateway_kit.fake_upstream", "--port", str(port), *args], clean_env()
        )
        return self.ready(proc, port)

    def kit(self, port: int, upstream: str, workers: int, checkout: Path = REPO, **settings: str) -> str:
        """One kit replica, started by entrypoint.sh (of `checkout`: this one, or another version of the kit) in
        demo mode against `upstream`."""
        runtime = self.work / f"kit-{port}"
        proc = self.start(
            f"kit-{port}",
            [str(checkout / "entrypoint.sh")],
            clean_env(
                GATEWAY_HOST="127.0.0.1",
                GATEWAY_PORT=str(port),
                GATEWAY_WORKERS=str(workers),
                GATEWAY_DEMO_UPSTREAM=upstream,
                GATEWAY_RUNTIME_DIR=str(runtime),
                GATEWAY_LEDGER_DIR=str(self.work / "ledger"),
                GATEWAY_REPLICA_ID=f"bench-{port}",
                **settings,
            ),
            # gunicorn puts its working directory first on the import path, before entrypoint.sh's PYTHONPATH: started
            # from another checkout, the replica would import that checkout's gateway_kit.
            cwd=checkout,
        )
        return self.ready(proc, port)

    def stock(self, port: int, config: Path, workers: int, **env: str) -> str:
        """Stock MLflow: `gunicorn mlflow.gateway.app:create_app_from_env()` with the same worker class."""
        proc = self.start(
            f"stock-{port}",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-k",
                "uvicorn_worker.UvicornWorker",
                "-w",
                str(workers),
                "-b",
                f"127.0.0.1:{port}",
                "mlflow.gateway.app:create_app_from_env()",
            ],
            clean_env(MLFLOW_GATEWAY_CONFIG=str(config), **env),
        )
        return self.ready(proc, port)


@contextmanager
def local_stack(work: Path, replicas: int, workers: int):
    """scripts/local_stack.sh (nginx :5000, replicas, Redis, dnsmasq, the fake upstream :9000), then down."""
    cmd = [str(STACK), "--state-dir", str(work / "stack")]
    env = clean_env()
    try:
        subprocess.run(
            [cmd[0], "up", "--replicas", str(replicas), "--workers", str(workers), *cmd[1:]],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        yield lambda n: subprocess.run(
            [cmd[0], "scale", str(n), *cmd[1:]], env=env, check=True, stdout=subprocess.DEVNULL
        )
    finally:
        subprocess.run([cmd[0], "down", *cmd[1:]], env=env, capture_output=True)


# ---------------------------------------------------------------------- wrk
def wrk_script(path: Path, body: str, headers: dict[str, str] | None = None) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = [=[{body}]=]", 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes of a process group (a server and its workers), from /proc."""
    return sum(int(f[11]) + int(f[12]) for f in stat_fields(pgid, group=True)) / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str,
    duration: int,
    connections: int,
    script: Path,
    threads: int = 2,
    pgid: int | None = None,
    cpus: str | None = None,
) -> dict:
    """requests/s, p50 and p99 in ms, and errors (non-2xx answers and socket errors) of one wrk run; with `pgid`
    (the server's process group), also its CPU µs per request: far steadier than requests/s on a shared machine.
    `cpus`: wrk runs on these CPUs only (taskset's list, e.g. "0")."""
    cpu_before = group_cpu_seconds(pgid) if pgid else 0.0
    out = subprocess.run(
        [
            *(["taskset", "-c", cpus] if cpus else []),
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency_ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = (group_cpu_seconds(pgid) - cpu_before) * 1e6 / max(requests, 1) if pgid else None
    return {
        "cpu_us_per_request": cpu_us,
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency_ms("50%"),
        "p99_ms": latency_ms("99%"),
        "errors": (int(errors.group(1)) if errors else 0)
        + (sum(map(int, socket_errors.groups())) if socket_errors else 0),
    }


def pin_group(pgid: int, cpus: str) -> None:
    """Every process of a process group (a server, its master and workers) runs on these CPUs only."""
    for pid in subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split():
        subprocess.run(["taskset", "-p", "-c", cpus, pid], capture_output=True, check=False)


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def chat_body(prompt: str, model: str | None = None, stream: bool = False) -> str:
    import json

    body: dict = {"messages": [{"role": "user", "content": prompt}]}
    if model:
        body["model"] = model
    if stream:
        body["stream"] = True
    return json.dumps(body)


def stream_chunks(url: str, body: str, headers: dict[str, str] | None = None) -> int:
    """The chunks one streamed answer delivers: its SSE `data:` events that carry a JSON object (not `[DONE]`).
    0 when the answer is not a 200 stream, so a target that fails to stream shows as 0, not as a figure."""
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json", **(headers or {})}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return sum(line.startswith(b"data: {") or line.startswith(b"data:{") for line in response)
    except (OSError, http.client.HTTPException):  # an error status (HTTPError is an OSError), a broken stream
        return 0


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(map(str, line)) + " |" for line in lines)


def baseline_revision(rev: str | None, script: str, log_args: tuple[str, ...] = (), what: str = "") -> tuple[str, str]:
    """(the revision to compare with, its short name): `rev`, or else the parent of the oldest commit `git log
    log_args` finds (the one that added `what`: found by content, so rebases keep it)."""
    if rev is None:
        found = subprocess.run(
            ["git", "-C", str(REPO), "log", "--format=%H", *log_args], capture_output=True, text=True
        )
        commits = found.stdout.split()
        if found.returncode != 0 or not commits:
            raise SystemExit(
                f"{script}: error: cannot find the commit that added {what} in git history — name a baseline "
                "revision with --baseline REV"
            )
        rev = f"{commits[-1]}^"
    short = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True)
    return rev, short.stdout.strip() or rev


def baseline_module(name: str, rev: str):
    """gateway_kit/<name>.py as it was at `rev`, imported under another name."""
    import importlib.util

    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:gateway_kit/{name}.py"], check=True, capture_output=True, text=True
    ).stdout
    spec = importlib.util.spec_from_loader(f"baseline_{name}", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:gateway_kit/{name}.py", "exec"), module.__dict__)
    return module


def redis_server(servers: Servers, timeout: float = 10) -> str:
    """A redis-server of the bench's own (no persistence) on a free port; its URL once it listens."""
    import socket
    import time

    port = free_port()
    servers.start(
        "redis",
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        clean_env(),
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: error: redis-server did not listen on :{port} within {timeout:.0f}s")
            time.sleep(0.1)
