"""Shared fixtures: real processes on loopback, started the way a user starts them.

Secrets: every key a test uses comes from SENTINEL_SECRETS. When the session ends, everything the run wrote
under pytest's basetemp and every test's captured output is searched for each of them (tests/secret_scan.py);
a hit fails the run, naming the file and line. A file that hands a key to the gateway on purpose is written
with write_secret(), which the search skips.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from secret_scan import Finding, find_in_text, find_in_tree

# The process helpers tests/ and bench/ share; test files import them from here with the fixtures.
from gateway_kit.procs import clean_env, free_port, stop_group, wait_http
from gateway_kit.procs import gone as gone

REPO = Path(__file__).resolve().parent.parent
# Every provider or client key used anywhere in the suite: none may appear in anything the run wrote.
SENTINEL_SECRETS = {
    "openai": "sk-proj-Zq8TestKeyThatMustNeverBePrinted",
    "anthropic": "sk-ant-api03-Sentinel7AnthropicKeyNeverLogged",
    # Azure keys are 32 hex digits: nothing marks them as keys, only the gateway's knowing the value does.
    "azure": "5e7a1c9b3d2f4e6a8b0c1d2e3f4a5b6c",
    "bad-openai": "sk-abc123",
    "gateway-client": "sk-edge-secret-never-shown-123",
    "dotenv-openai": "sk-not-for-us",
    "fake-openai-client": "sk-test-secret",
    "fake-anthropic-client": "sk-ant-secret",
    "fake-azure-client": "az-secret",
    # The admin page's password (tests/stack/test_admin_page.py): never in a page, a log or the audit log.
    "admin-password": "Admin-Sentinel-Password-4f9c2e",
}
_secret_inputs: set[Path] = set()
_leaks: list[Finding] = []
# Request bodies the fuzz tests tried, by kind: reported at the end of the run (pytest_terminal_summary).
FUZZ_CASES: Counter[str] = Counter()
# What the Helm chart tests ran (renders, lints, schema validations), reported the same way.
CHART_FIGURES: Counter[str] = Counter()


def write_secret(path: Path, value: str) -> Path:
    """Write a key into a file (mode 600) for the gateway to read; the end-of-run secret search skips it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value)
    path.chmod(0o600)
    _secret_inputs.add(path.resolve())
    return path


def kept_secret(path: Path) -> Path:
    """A file the kit writes on purpose to keep a key (scripts/local_stack.sh's replica.env): it must be mode 600,
    and the end-of-run secret search skips it."""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} holds a key and is not mode 600"
    _secret_inputs.add(path.resolve())
    return path


def start_replica(
    work: Path, port: int, *, log: Path | None = None, timeout: float = 90, **env: str
) -> subprocess.Popen:
    """One replica as entrypoint.sh starts it, on 127.0.0.1:`port` with 1 worker and its runtime in work/run
    (`env` adds or overrides settings), its output in `log` (work/gateway.log); back once /health answers.
    Stop it with stop_group(proc.pid)."""
    work.mkdir(parents=True, exist_ok=True)
    environment = clean_env(
        **{
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_WORKERS": "1",
            "GATEWAY_RUNTIME_DIR": str(work / "run"),
            **env,
        }
    )
    with (log or work / "gateway.log").open("a") as out:
        proc = subprocess.Popen(
            [str(REPO / "entrypoint.sh")], env=environment, stdout=out, stderr=out, start_new_session=True
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=timeout, proc=proc)
    except BaseException:
        stop_group(proc.pid)
        raise
    return proc


@dataclass
class Stack:
    """The local stack from scripts/local_stack.sh, as a user runs it."""

    state_dir: Path
    url: str = "http://127.0.0.1:5000"
    fake_url: str = "http://127.0.0.1:9000"
    env: dict[str, str] = field(default_factory=dict)  # settings for the replicas (GATEWAY_...)
    redis_url: str = "redis://127.0.0.1:6379/0"
    replica_count: int = 2  # what the last `up` started, and reset() restores

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        if args[:1] == ("up",):  # what reset() puts back: the replicas this `up` starts (local_stack.sh: 2)
            self.replica_count = int(args[args.index("--replicas") + 1]) if "--replicas" in args else 2
        result = subprocess.run(
            [str(REPO / "scripts/local_stack.sh"), *args, "--state-dir", str(self.state_dir)],
            env=clean_env(**self.env),
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and result.returncode != 0:
            pytest.fail(f"local_stack.sh {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def pid(self, name: str) -> int:
        return int((self.state_dir / "pids" / f"{name}.pid").read_text())

    @property
    def replicas(self) -> list[str]:
        return sorted(f"gateway-{p.stem.split('-')[1]}" for p in (self.state_dir / "pids").glob("replica-*.pid"))

    def log(self, name: str) -> str:
        return (self.state_dir / "logs" / f"{name}.log").read_text(errors="replace")

    def scale(self, n: int) -> None:
        self.run("scale", str(n))
        time.sleep(6)  # nginx re-resolves the replicas every 5 s (resolver valid=5s in nginx.conf)

    def fake_stats(self) -> dict:
        return requests.get(f"{self.fake_url}/_fake/stats", timeout=5).json()

    def reset(self) -> None:
        """Forget what earlier tests left in this stack's shared state, so no test depends on their order:
        circuit breakers and limit counters (in Redis, shared by every worker) and a replica count other than
        the last `up`'s. Costs a Redis SCAN when there is nothing to forget."""
        import redis

        if not (self.state_dir / "pids" / "nginx.pid").exists():
            return  # down (a test paused it for a stack of its own): nothing to forget
        if len(self.replicas) != self.replica_count:
            self.scale(self.replica_count)
        with redis.Redis.from_url(self.redis_url, socket_timeout=2) as client:
            try:
                circuits = list(client.scan_iter(match=CIRCUIT_KEYS, count=1000))
                counters = list(client.scan_iter(match=LIMIT_KEYS, count=1000))
                if circuits or counters:
                    client.delete(*circuits, *counters)
            except redis.RedisError:
                return  # a test stopped Redis and did not start it again: it starts empty when it does
        if circuits:
            time.sleep(CIRCUIT_SYNC_S)  # workers act on a breaker state they read at most this long ago


_shared: list[Stack] = []  # the session's `stack` while it is up
# Redis keys of the shared state a test can leave behind (gateway_kit.resilience and gateway_kit.limits), and
# how long a worker may act on a circuit state it read before (docs/resilience.md).
CIRCUIT_KEYS, LIMIT_KEYS, CIRCUIT_SYNC_S = "gateway:circuit:*", "gateway:limits:*", 1.5


@pytest.fixture(autouse=True)
def _fresh_shared_stack(request):
    """Every test that uses the session's stack starts from a stack in its initial state (Stack.reset)."""
    if "stack" in request.fixturenames and _shared:
        _shared[-1].reset()


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    """nginx on :5000 in front of 2 replicas (2 workers each), Redis, dnsmasq, the fake upstream."""
    s = Stack(state_dir=tmp_path_factory.mktemp("stack"))
    up = s.run("up", "--replicas", "2", check=False)
    if up.returncode != 0:
        s.run("down", check=False)
        pytest.fail(f"scripts/local_stack.sh up failed:\n{up.stdout}\n{up.stderr}")
    _shared.append(s)
    yield s
    _shared.remove(s)
    s.run("down", check=False)


@contextmanager
def own_stack(state_dir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Stack]:
    """A stack of one's own (another --config, other settings) on the same fixed ports: the shared
    `stack`, if up, is stopped meanwhile and started again afterwards with its state (logs, ledger) kept."""
    paused = list(_shared)
    for s in paused:
        s.run("down", check=False)
    own = Stack(state_dir=state_dir, env=env or {})
    try:
        up = own.run("up", *args, check=False)
        if up.returncode != 0:
            pytest.fail(f"scripts/local_stack.sh up {' '.join(args)} failed:\n{up.stdout}\n{up.stderr}")
        yield own
    finally:
        own.run("down", check=False)
        for s in paused:
            s.run("up", "--replicas", "2")


@contextmanager
def running_fake(hosts: str, port: int) -> Iterator[str]:
    """The kit's fake provider on `hosts` (comma-separated addresses) and `port`; yields the first one's URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway_kit.fake_upstream", "--host", hosts, "--port", str(port)],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://{hosts.split(',')[0]}:{port}"
    try:
        wait_http(f"{url}/health", proc=proc)
        yield url
    finally:
        stop_group(proc.pid)


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[str]:
    """The kit's fake provider on a free port; yields its base URL."""
    with running_fake("127.0.0.1", free_port()) as url:
        yield url


# ------------------------------------------------------------------------------------ the secrets search
# Why a session hook and not a test module named to run last: the hook runs after every test AND after the
# session fixtures' teardown (the stack's shutdown lines are in its logs by then), whatever -k, -m, -x or
# plugin reorders the tests, and it cannot be deselected. pytest itself sets session.exitstatus in
# pytest_sessionfinish the same way (--max-warnings).
_basetemp: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def _remember_basetemp(tmp_path_factory):
    _basetemp.append(tmp_path_factory.getbasetemp())


def pytest_runtest_logreport(report):
    """Captured stdout, stderr and log of every test phase, and a failure's report, searched as they come."""
    texts = [(f"{name} of {report.nodeid}", content) for name, content in report.sections]
    if report.failed:
        texts.append((f"failure report of {report.nodeid}", report.longreprtext))
    for where, text in texts:
        _leaks.extend(find_in_text(text, where, SENTINEL_SECRETS))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    for root in _basetemp:
        _leaks.extend(find_in_tree(root, SENTINEL_SECRETS, skip=_secret_inputs))
    if _leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if FUZZ_CASES:
        by_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(FUZZ_CASES.items()))
        terminalreporter.write_line(f"fuzzing: {sum(FUZZ_CASES.values())} request bodies tried ({by_kind})")
    if CHART_FIGURES:
        figures = ", ".join(f"{what} {n}" for what, n in sorted(CHART_FIGURES.items()))
        terminalreporter.write_line(f"helm chart: {figures}")
    if _leaks:
        terminalreporter.write_sep("=", "SECRET LEAK: a sentinel key was found where no key may be", red=True)
        for finding in _leaks[:50]:
            terminalreporter.write_line(str(finding), red=True)
        terminalreporter.write_line(
            "Find what wrote it (a log line, an error body, a results file) and redact "
            "it there; the run fails until then.",
            red=True,
        )
    else:
        searched = ", ".join(str(p) for p in _basetemp) or "nothing"
        terminalreporter.write_line(
            f"secrets search: no sentinel key in the files under {searched} or in captured output"
        )
