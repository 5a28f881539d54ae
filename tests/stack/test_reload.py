"""Config changes without a restart: scripts/reload.sh on a stack of its own (nginx, 2 replicas x 2 workers).

A changed config.yaml is checked first (a typo is refused with its line, and nothing changes), then rolled to
every replica by SIGHUP, one at a time: under an open-loop load through nginx no request fails and no stream is
cut, the new limit is enforced without a restart, and every replica reports the new config's hash in /ready,
in its usage records and to check_gateway.sh (docs/architecture.md, "Reloading config.yaml").
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import requests
import yaml

from conftest import REPO, clean_env, own_stack

pytestmark = [pytest.mark.integration, pytest.mark.stack]

REPLICAS = ("http://127.0.10.1:8000", "http://127.0.10.2:8000")
CHAT = {"messages": [{"role": "user", "content": "hello"}]}
WORDS = " ".join(f"w{i}" for i in range(50))
# 50 chunks 500 ms apart: a stream is in flight for about 25 s, longer than a replica takes to check the file
# and start its new workers, so streams are still running on the old workers when those are told to stop.
LOAD_CASES = [
    {"name": "chat", "endpoint": "chat", "messages": [{"role": "user", "content": "[[latency:100]] hello"}]},
    {
        "name": "stream",
        "endpoint": "chat",
        "params": {"stream": True},
        "messages": [{"role": "user", "content": f"[[chunk_delay:500]] [[reply:{WORDS}]]"}],
        "expect": {"contains": "w49"},
    },
]


@pytest.fixture(scope="module")
def reloadable(tmp_path_factory):
    """The local stack serving a config.yaml of the test's own, which the tests change and reload."""
    work = tmp_path_factory.mktemp("reload")
    config = work / "config.yaml"
    config.write_text((REPO / "config.yaml").read_text())
    with own_stack(work / "state", "--replicas", "2", "--config", str(config)) as stack:
        yield stack, config


def write_config(path: Path, change) -> None:
    """The repository's config.yaml, changed by `change(config)`, written to `path`."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def endpoint(config: dict, name: str) -> dict:
    return next(e for e in config["endpoints"] if e["name"] == name)


def reload(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "scripts/reload.sh"), "--state-dir", str(stack.state_dir), *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def served(url: str) -> str:
    return requests.get(f"{url}/ready", timeout=10).json()["config_hash"]


def checked_hash(output: str) -> str:
    """The hash reload.sh checked the file to: `config 3b9f0c2a7e41 checked`."""
    return re.search(r"config ([0-9a-f]{12}) checked", output).group(1)


def records(stack) -> list[dict]:
    lines = [line for f in sorted((stack.state_dir / "ledger").glob("usage-*.jsonl")) for line in f.open()]
    return [json.loads(line) for line in lines if line.strip()]


def test_a_typo_is_refused_with_its_line_and_the_running_config_keeps_serving(reloadable):
    stack, config = reloadable
    before = [served(url) for url in REPLICAS]
    write_config(config, lambda c: endpoint(c, "chat").update(limt={"calls": 1, "renewal_period": "minute"}))
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if text.strip().startswith("limt:"))

    result = reload(stack)

    assert result.returncode == 78, result.stdout + result.stderr
    assert f"{config}:{line}: endpoint 'chat': unknown key `limt` (did you mean `limit`?)" in result.stderr
    assert "nothing reloaded, every replica keeps its config" in result.stderr
    assert "SIGHUP" not in result.stdout
    assert [served(url) for url in REPLICAS] == before
    answers = [requests.post(f"{stack.url}/gateway/chat/invocations", json=CHAT, timeout=30) for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4


def test_a_changed_limit_is_enforced_after_a_reload_and_every_replica_reports_the_new_config(reloadable):
    stack, config = reloadable
    write_config(config, lambda c: None)
    assert reload(stack).returncode == 0
    old = served(REPLICAS[0])
    url = f"{stack.url}/gateway/completions/invocations"
    body = {"prompt": "hello"}
    assert [requests.post(url, json=body, timeout=30).status_code for _ in range(5)] == [200] * 5

    write_config(config, lambda c: endpoint(c, "completions").update(limit={"calls": 3, "renewal_period": "minute"}))
    result = reload(stack)

    assert result.returncode == 0, result.stdout + result.stderr
    new = checked_hash(result.stdout)
    assert new != old
    assert [served(url) for url in REPLICAS] == [new, new]
    ids = [f"after-reload-{n}" for n in range(5)]
    statuses = [requests.post(url, json=body, headers={"X-Request-ID": i}, timeout=30).status_code for i in ids]
    assert statuses == [200, 200, 200, 429, 429]
    for _ in range(20):  # a record is written once its answer has gone out: give the last one a moment
        written = {r["request_id"]: (r["status"], r["config_hash"]) for r in records(stack)}
        if set(ids) <= set(written):
            break
        time.sleep(0.5)
    assert [written.get(i) for i in ids] == [(s, new) for s in statuses]
    check = subprocess.run(
        [str(REPO / "check_gateway.sh"), "--url", stack.url, "--no-chat"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"ok    config: every replica that answered (2) serves config {new}" in check.stdout


def test_a_reload_under_load_fails_no_request_and_cuts_no_stream(reloadable, tmp_path):
    stack, config = reloadable
    (tmp_path / "cases.json").write_text(json.dumps({"cases": LOAD_CASES}))
    load = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "evaluate_gateway.py"),
            "--url",
            stack.url,
            "--test-file",
            str(tmp_path / "cases.json"),
            "--rate",
            "4",
            "--duration",
            "600",
            "--timeout",
            "120",
            "--no-progress",
            "--output",
            str(tmp_path / "load.json"),
        ],
        env=clean_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(8)  # streams in flight on every replica
        write_config(
            config, lambda c: endpoint(c, "embeddings").update(limit={"calls": 1000, "renewal_period": "minute"})
        )
        reloading, lines = time.time(), []
        with subprocess.Popen(
            [str(REPO / "scripts/reload.sh"), "--state-dir", str(stack.state_dir)],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as rolling:
            for line in rolling.stdout:  # reload.sh's lines as they come, timed: when each replica got SIGHUP
                lines.append((time.time(), line.rstrip()))
        reloaded = time.time()
        assert rolling.returncode == 0, "\n".join(text for _, text in lines)
        time.sleep(2)
    finally:
        load.send_signal(signal.SIGINT)  # evaluate_gateway.py saves what finished
        out, err = load.communicate(timeout=300)
    assert (tmp_path / "load.json").is_file(), out + err
    results = json.loads((tmp_path / "load.json").read_text())["requests"]

    hups = {m.group(1): at for at, text in lines if (m := re.search(r"(gateway-\d+): SIGHUP sent", text))}
    serving = {m.group(1): at for at, text in lines if (m := re.search(r"(gateway-\d+) serves config", text))}
    assert set(hups) == set(serving) == {"gateway-1", "gateway-2"}, lines

    def start(r: dict) -> float:
        return datetime.fromisoformat(r["started_at"]).timestamp()

    # Sent before the replica's SIGHUP (so on an old worker) and still streaming once the replica served the new
    # config (so its old workers had been told to stop): the streams a reload could have cut.
    drained = [
        r
        for r in results
        if r["stream"] and start(r) < hups[r["replica"]] and start(r) + r["latency_ms"] / 1000 > serving[r["replica"]]
    ]
    during = [r for r in results if start(r) + r["latency_ms"] / 1000 >= reloading and start(r) <= reloaded]
    failed = [r for r in results if r["outcome"] != "pass"]
    cut = [r for r in results if r["stream"] and (r["partial"] or (r["chunks"] or 0) < 50)]
    figures = {
        "requests": len(results),
        "requests in flight during the reload": len(during),
        "streams": sum(r["stream"] for r in results),
        "streams on old workers when they were told to stop": len(drained),
        "failed requests": len(failed),
        "cut streams": len(cut),
        "reload.sh seconds": round(reloaded - reloading, 1),
        "SIGHUP to new config served, seconds": {k: round(serving[k] - hups[k], 1) for k in sorted(hups)},
    }
    report = Path(tmp_path) / "reload-under-load.json"
    report.write_text(json.dumps(figures, indent=2))
    print(f"reload under load (4/s, half of them 25 s streams, nginx + 2 replicas x 2 workers): {figures}")
    print(f"(also in {report})")
    assert not failed, [(r["seq"], r["started_at"], r.get("error")) for r in failed[:5]]
    assert not cut, [(r["seq"], r["chunks"], r["partial"]) for r in cut[:5]]
    assert drained, f"no stream was in flight on an old worker when it was told to stop: nothing proven ({figures})"
