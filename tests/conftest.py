"""Shared fixtures: real processes on loopback, started the way a user starts them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
PROVIDER_VARS = [
    f"{p}_{s}"
    for p in ("OPENAI", "ANTHROPIC", "AZURE_OPENAI")
    for s in ("API_KEY", "API_KEY_FILE", "API_BASE", "DEPLOYMENT", "API_VERSION")
]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any provider key or URL, so nothing can reach a real provider."""
    env = {k: v for k, v in os.environ.items() if k not in PROVIDER_VARS and not k.startswith("GATEWAY_")}
    env["PYTHON"] = sys.executable
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def gone(pid: int, timeout: float, group: bool = False) -> bool:
    """Wait up to `timeout` seconds for a process (or its whole group) to be gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0) if group else os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def stop_group(pid: int, timeout: float = 15) -> None:
    """SIGTERM a process group started with start_new_session, then SIGKILL what is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not gone(pid, timeout, group=True):
        os.killpg(pid, signal.SIGKILL)


@dataclass
class Stack:
    """The local stack from scripts/local_stack.sh, as a user runs it."""

    state_dir: Path
    url: str = "http://127.0.0.1:5000"
    fake_url: str = "http://127.0.0.1:9000"
    env: dict[str, str] = field(default_factory=dict)  # settings for the replicas (GATEWAY_...)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(REPO / "scripts/local_stack.sh"), *args, "--state-dir", str(self.state_dir)],
            env=clean_env(**self.env), capture_output=True, text=True, timeout=180,
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


_shared: list[Stack] = []  # the session's `stack` while it is up


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


@pytest.fixture(scope="session")
def fake_upstream() -> str:
    """The kit's fake provider on a free port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway_kit.fake_upstream", "--host", "127.0.0.1", "--port", str(port)],
        env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc=proc)
        yield url
    finally:
        stop_group(proc.pid)
