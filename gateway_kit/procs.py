"""The kit's processes on this machine, for the tests (tests/conftest.py) and the benchmarks (bench/): an
environment no provider key or gateway setting leaks into, a free loopback port, a wait for an HTTP answer, a
process group stopped, and what /proc says of a process. The gateway never imports this module. The environment
is gateway_kit.settings' (environment_without_settings), the one module that reads the process's settings.

    from gateway_kit.procs import clean_env, free_port, stop_group, wait_http

    port = free_port()
    proc = subprocess.Popen(["./entrypoint.sh"], env=clean_env(GATEWAY_PORT=str(port)), start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        ...
    finally:
        stop_group(proc.pid)
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gateway_kit.settings import environment_without_settings


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any provider key or URL and without any GATEWAY_* setting
    (settings.environment_without_settings), so nothing can reach a real provider and only the settings in
    `extra` apply. PYTHON is this interpreter, so entrypoint.sh and scripts/local_stack.sh run the replicas and
    the fake upstream with the same venv."""
    env = environment_without_settings()
    env["PYTHON"] = sys.executable
    env.update(extra)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick), for a server about to start."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http(
    url: str, timeout: float = 30, proc: subprocess.Popen | None = None, headers: dict[str, str] | None = None
) -> None:
    """Back once `url` answers below 400. TimeoutError after `timeout` seconds; RuntimeError as soon as `proc`
    (the server's process, if given) has exited. urllib, not requests: it trusts SSL_CERT_FILE (bench/tls_rtt.py)."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers=headers or {})
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=1):
                return
        except (OSError, http.client.HTTPException):  # not listening yet, still booting, an error status
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def children(pid: int) -> list[int]:
    """The child processes of `pid` (a gunicorn master's workers), from /proc; none once it is gone."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def stat_fields(pid: int, group: bool = False) -> list[list[str]]:
    """/proc/PID/stat of the process `pid`, or of every process in the process group `pid`: for each, the fields
    after "pid (comm)", from 0: state (R, S, Z...), ppid, pgrp, ..., utime 11, stime 12 (clock ticks)."""
    stats = Path("/proc").glob("[0-9]*/stat") if group else [Path(f"/proc/{pid}/stat")]
    found = []
    for stat_file in stats:
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if not group or int(fields[2]) == pid:
            found.append(fields)
    return found


def gone(pid: int, timeout: float, group: bool = False) -> bool:
    """Wait up to `timeout` seconds for a process (or every process of its group) to have exited. A zombie has: a
    process this one started stays one until it is waited for, and a signal still reaches it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0) if group else os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if all(fields[0] == "Z" for fields in stat_fields(pid, group)):
            return True
        time.sleep(0.1)
    return False


def stop_group(pid: int, timeout: float = 15) -> None:
    """SIGTERM a process group started with start_new_session, then SIGKILL what is left after `timeout` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not gone(pid, timeout, group=True):
        os.killpg(pid, signal.SIGKILL)
