"""The container tests' engine and stacks: the kit's own compose files, run by a real Docker Engine.

`engine` (session): scripts/docker_engine.sh up. Where `docker info` answers, that engine is used. Elsewhere the
script provisions Docker Engine 26 + compose in a network namespace of its own (base images: stand-ins when no
registry answers), and the fixture stops it at the end of the session, on failure too.

Ports that containers publish are in that namespace: `engine.run_in_net(...)` runs a command there (netclient.py
for HTTP). Figures (times, sizes, counts) go to FIGURES, printed in the terminal summary and written to
<basetemp>/containers-report.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINE_SCRIPT = REPO / "scripts" / "docker_engine.sh"
NETCLIENT = Path(__file__).with_name("netclient.py")
PROJECT = "mlflow-gateway"  # `name:` of both compose files
# name -> value: every figure a container test measured, printed at the end of the run.
FIGURES: dict[str, str] = {}
# Files the compose files use from the project directory (each test runs them from a copy: nothing is written
# into the repository, e.g. the ./keys folder docker creates for the bind mount).
PROJECT_FILES = [
    "docker-compose.yml",
    "docker-compose.prod.yml",
    "docker-stack.yml",
    "nginx.conf",
    "check_gateway.sh",
    "scripts",
    "monitoring",
    "config.yaml",
    "pricing.yaml",
    "analyze_costs.py",
    "gateway_kit",
    "env.template",
    # the build context, for `docker compose build` and scripts/deploy.sh
    "Dockerfile",
    ".dockerignore",
    "requirements.lock",
    "requirements-slim.lock",
    "entrypoint.sh",
]
REPLICAS = 3  # the shared prod stack's size, restored before every test that uses it
GATEWAY = "http://127.0.0.1:5000"  # nginx, published in the engine's namespace


def figure(name: str, value: str) -> None:
    FIGURES[name] = value


@dataclass
class Engine:
    env: dict[str, str]
    netns: str | None  # the provisioned engine's namespace; None for the machine's own engine
    standins: list[str] = field(default_factory=list)
    host_before: dict[str, str] = field(default_factory=dict)  # host_network() before the engine came up

    def docker(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 300,
        cwd: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["docker", *args],
            env={**self.env, **(extra_env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def run_in_net(
        self, *args: str, timeout: float = 300, cwd: Path | None = None, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """A command where the published ports are: inside the engine's namespace when it has one."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.run(
            [*prefix, *args],
            env={**self.env, **(extra_env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen_in_net(self, *args: str, cwd: Path | None = None) -> subprocess.Popen:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return subprocess.Popen(
            [*prefix, *args], env=self.env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def net_json(self, *args: str, timeout: float = 300):
        result = self.run_in_net(sys.executable, str(NETCLIENT), *args, timeout=timeout)
        if result.returncode != 0:
            pytest.fail(f"netclient {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return json.loads(result.stdout)


def host_network() -> dict[str, str]:
    """What a provisioned engine must leave alone on the host: interfaces, routes, firewall rules, ip_forward."""

    def out(*cmd: str) -> str:
        result = subprocess.run(cmd, capture_output=True, text=True)
        return "\n".join(line for line in result.stdout.splitlines() if not line.startswith(("#", ":")))

    return {
        "interfaces": out("sh", "-c", "ip -o link | awk '{print $2}'"),
        "routes": out("ip", "route") + out("ip", "-6", "route"),
        "iptables": out("iptables-save") + out("ip6tables-save"),
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
    }


def _engine_env(netns_env: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "AZURE_", "GATEWAY_"))}
    for line in netns_env.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value.strip("'\"")
    env["PYTHON"] = sys.executable
    return env


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    if shutil.which("docker") is None:
        pytest.fail("the docker CLI is missing: install it (apt-get install docker.io, or Docker's docker-ce-cli)")
    was_running = subprocess.run([str(ENGINE_SCRIPT), "status"], capture_output=True, text=True).returncode == 0
    host_before = host_network()
    start = time.monotonic()
    up = subprocess.run([str(ENGINE_SCRIPT), "up"], capture_output=True, text=True, timeout=1500)
    if up.returncode != 0:
        pytest.fail(f"scripts/docker_engine.sh up exited {up.returncode}:\n{up.stdout}\n{up.stderr}")
    figure(
        "engine up (scripts/docker_engine.sh up, image build included when needed)", f"{time.monotonic() - start:.0f} s"
    )
    env_lines = subprocess.run([str(ENGINE_SCRIPT), "env"], capture_output=True, text=True, check=True).stdout
    env = _engine_env(env_lines)
    status = subprocess.run([str(ENGINE_SCRIPT), "status"], capture_output=True, text=True, env=env).stdout
    standins = []
    for line in status.splitlines():
        if line.startswith("stand-in base images:") and "none" not in line:
            standins = line.split(":", 1)[1].split()
    figure("engine", status.splitlines()[0] if status else "?")
    figure(
        "base images",
        "STAND-INS (Debian bookworm trees tagged with the official names; they prove the kit's "
        f"files, not the official images): {' '.join(standins)}"
        if standins
        else "the official images",
    )
    eng = Engine(env=env, netns=env.get("KIT_DOCKER_NETNS"), standins=standins, host_before=host_before)
    size = eng.docker("image", "inspect", "--format", "{{.Size}}", "mlflow-gateway:local").stdout.strip()
    figure("image mlflow-gateway:local", f"{int(size) / 1e6:.0f} MB")
    try:
        yield eng
    finally:
        # Whatever a test left (a failed test's stack): the project's containers and volumes go.
        for file in ("docker-compose.prod.yml", "docker-compose.yml"):
            Project(eng, REPO, file).down()
        if not was_running and env.get("KIT_DOCKER_NETNS"):
            stop = subprocess.run([str(ENGINE_SCRIPT), "stop"], capture_output=True, text=True, timeout=300)
            assert stop.returncode == 0, stop.stdout + stop.stderr
            left = {k: v for k, v in host_network().items() if v != host_before[k]}
            figure("host network after scripts/docker_engine.sh stop", "as before" if not left else f"CHANGED: {left}")
            assert not left, f"the engine left changes in the host's network: {left}"


@dataclass
class Project:
    """A copy of the kit's files where a test runs docker compose as a user does."""

    engine: Engine
    root: Path
    file: str
    name: str = PROJECT  # the compose project (`-p`); the files' own `name:` unless a test needs another

    def compose(
        self, *args: str, check: bool = True, timeout: float = 600, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return self.engine.docker(
            "compose",
            "-p",
            self.name,
            "-f",
            self.file,
            *args,
            check=check,
            timeout=timeout,
            cwd=self.root,
            extra_env=extra_env,
        )

    def script(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """A kit script run where the published ports are (check_gateway.sh curls localhost:5000)."""
        return self.engine.run_in_net(*args, timeout=timeout, cwd=self.root)

    def containers(self, service: str) -> list[str]:
        out = self.engine.docker(
            "ps",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={self.name}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ).stdout
        return out.split()

    def inspect(self, container: str) -> dict:
        return json.loads(self.engine.docker("inspect", container).stdout)[0]

    def down(self) -> None:
        self.compose(
            "--profile",
            "demo",
            "--profile",
            "monitoring",
            "--profile",
            "admin",
            "down",
            "-v",
            "--remove-orphans",
            "--timeout",
            "10",
            check=False,
        )

    def up(self, *files: str, replicas: int = REPLICAS, extra_env: dict[str, str] | None = None) -> float:
        """`up -d --wait` of the demo stack with `replicas` gateways (and the compose files `files` over the
        project's file); returns the seconds it took. Recreates only what differs."""
        start = time.monotonic()
        overrides = [arg for f in files for arg in ("-f", f)]
        self.compose(
            *overrides,
            "--profile",
            "demo",
            "up",
            "-d",
            "--no-build",
            "--remove-orphans",
            "--scale",
            f"mlflow-gateway={replicas}",
            "--wait",
            "--wait-timeout",
            "600",
            timeout=700,
            extra_env=extra_env,
        )
        return time.monotonic() - start

    def hostnames(self) -> set[str]:
        """The running replicas' hostnames: what they put in X-Gateway-Replica and their ledger file names."""
        return {self.inspect(c)["Config"]["Hostname"] for c in self.containers("mlflow-gateway")}


def ledger_records(engine: Engine) -> list[dict]:
    """Every usage record in the gateway-ledger volume, read by a throwaway container of the kit image."""
    out = engine.docker(
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        "-v",
        "mlflow-gateway_gateway-ledger:/ledger:ro",
        "mlflow-gateway:local",
        "-c",
        "find /ledger -type f -exec cat {} +",
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@dataclass
class Load:
    """evaluate_gateway.py's open-loop load mode (--rate, --duration), run where the published ports are."""

    proc: subprocess.Popen
    output: Path

    def result(self, timeout: float = 300) -> dict:
        out, err = self.proc.communicate(timeout=timeout)
        if not self.output.is_file():
            pytest.fail(f"evaluate_gateway.py exited {self.proc.returncode} without a results file:\n{out}\n{err}")
        return json.loads(self.output.read_text())

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, after: float) -> dict:
        """Ctrl-C `after` seconds from now (evaluate_gateway.py then saves what finished; the few requests still in
        flight are left out), and the results. The test's operation is over by then: no need to wait out --duration."""
        time.sleep(after)
        if not self.running():
            out, err = self.proc.communicate()
            pytest.fail(
                f"the load ended (evaluate_gateway.py exited {self.proc.returncode}) before the test's operation "
                f"did; its output:\n{out}\n{err}"
            )
        self.proc.send_signal(signal.SIGINT)
        return self.result()


# The loads' cases (evaluate_gateway.py test cases): a 100 ms chat, and a stream.
WORDS = " ".join(f"w{i}" for i in range(30))
CHAT = {"name": "chat", "endpoint": "chat", "messages": [{"role": "user", "content": "[[latency:100]] hello"}]}
# 30 chunks 100 ms apart: a stream is in flight for about 3 s, long enough to be cut by a stop if draining failed.
STREAM = {
    "name": "stream",
    "endpoint": "chat",
    "params": {"stream": True},
    "messages": [{"role": "user", "content": f"[[chunk_delay:100]] [[reply:{WORDS}]]"}],
    "expect": {"contains": "w29"},
}


def start_load(engine: Engine, tmp: Path, cases: list[dict], rate: float, duration: float) -> Load:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "cases.json").write_text(json.dumps({"cases": cases}))
    output = tmp / "load.json"
    proc = engine.popen_in_net(
        sys.executable,
        str(REPO / "evaluate_gateway.py"),
        "--url",
        GATEWAY,
        "--test-file",
        str(tmp / "cases.json"),
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        "--timeout",
        "60",
        "--wait",  # a replica the test before restarted may still be on its way back: wait for /health
        "30",
        "--no-progress",
        "--output",
        str(output),
        cwd=tmp,
    )
    return Load(proc, output)


def start_time(request: dict) -> float:
    """A request's start (unix time) in evaluate_gateway.py's results."""
    from datetime import datetime

    return datetime.fromisoformat(request["started_at"]).timestamp()


def in_flight(request: dict, at: float) -> bool:
    """Whether a request of evaluate_gateway.py's results was in flight at unix time `at` (to the millisecond its
    start time is written with)."""
    start = start_time(request)
    return start - 0.001 <= at <= start + request["latency_ms"] / 1000 + 0.001


@pytest.fixture(scope="session")
def prod_stack(engine: Engine, tmp_path_factory) -> Iterator[Project]:
    """The prod file's demo stack, shared by the tests that use `prod` (one `up` for all of them)."""
    project = make_project(engine, tmp_path_factory.mktemp("prod"), "docker-compose.prod.yml")
    try:
        took = project.up()
        figure(f"prod file: up -d --scale mlflow-gateway={REPLICAS} --wait (demo)", f"{took:.0f} s")
        starts = [seconds_to_healthy(project.inspect(c)) for c in project.containers("mlflow-gateway")]
        figure(
            f"replica start to healthy (docker inspect), median of {len(starts)}",
            f"{statistics.median(s for s in starts if s is not None):.1f} s",
        )
        yield project
    finally:
        project.down()


@pytest.fixture
def prod(prod_stack: Project) -> Project:
    """The shared prod stack as every test expects it: the prod file alone, REPLICAS healthy replicas, Redis and
    fake-llm healthy. Whatever an earlier test changed (scale, an override file, a killed replica) is put back."""
    prod_stack.up()
    return prod_stack


def make_project(engine: Engine, tmp: Path, file: str) -> Project:
    root = tmp / "kit"
    root.mkdir()
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    (root / "keys").mkdir()
    return Project(engine=engine, root=root, file=file)


def seconds_to_healthy(info: dict) -> float | None:
    """Container start to its first passing health check, from docker inspect."""
    from datetime import datetime

    def parse(ts: str) -> datetime:
        return datetime.fromisoformat(ts[:26].rstrip("Z") + "+00:00" if "." in ts else ts.replace("Z", "+00:00"))

    started = parse(info["State"]["StartedAt"])
    passed = [
        parse(entry["End"]) for entry in (info["State"].get("Health") or {}).get("Log", []) if entry["ExitCode"] == 0
    ]
    return (min(passed) - started).total_seconds() if passed else None


def pytest_terminal_summary(terminalreporter, config):
    if not FIGURES:
        return
    terminalreporter.write_sep("-", "container tests: figures")
    for name, value in FIGURES.items():
        terminalreporter.write_line(f"{name}: {value}")
    report = Path(str(config._tmp_path_factory.getbasetemp())) / "containers-report.json"
    report.write_text(json.dumps(FIGURES, indent=2, sort_keys=True))
    terminalreporter.write_line(f"(also in {report})")
