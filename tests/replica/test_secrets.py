"""Provider keys from secret files reach the provider and nothing else: no log line, error body, usage record,
results file or report holds one. The end-of-run search (conftest.py) then checks every file the whole run wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import requests
import yaml
from conftest import REPO, SENTINEL_SECRETS, clean_env, free_port, start_replica, stop_group, write_secret
from secret_scan import find_in_text, find_in_tree

from gateway_kit.fake_upstream import key_fingerprint
from gateway_kit.keys import add as add_client_key

PROVIDER_KEYS = {name: SENTINEL_SECRETS[name] for name in ("openai", "anthropic", "azure")}
HI = [{"role": "user", "content": "hi"}]


class KeyedGateway:
    def __init__(self, url: str, fake_url: str, workdir: Path, client_key: str) -> None:
        self.url, self.fake_url, self.workdir = url, fake_url, workdir
        self.client_key = client_key  # real provider keys: a gateway key is required (docs/limits-and-keys.md)
        self.headers = {"Authorization": f"Bearer {client_key}"}
        self.log = workdir / "replica.log"
        self.ledger = workdir / "ledger"

    def chat(self, endpoint: str, content: str, **extra) -> requests.Response:
        body = {"messages": [{"role": "user", "content": content}], **extra}
        return requests.post(f"{self.url}/gateway/{endpoint}/invocations", json=body, timeout=30, headers=self.headers)

    def fingerprints(self) -> dict[str, int]:
        return requests.get(f"{self.fake_url}/_fake/stats", timeout=5).json()["key_fingerprints"]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, fake_upstream):
    """One replica (entrypoint.sh, 1 worker) with a real-looking key per provider, each from another source:
    OPENAI_API_KEY_FILE, a Docker-style secrets directory, and the environment; every provider is the fake."""
    work = tmp_path_factory.mktemp("keyed-gateway")
    openai_file = write_secret(work / "keys" / "openai", PROVIDER_KEYS["openai"] + "\n")
    write_secret(work / "run-secrets" / "anthropic_api_key", PROVIDER_KEYS["anthropic"] + "\n")
    client_key = add_client_key(work / "gateway-keys.json", "secrets-tests")
    port = free_port()
    gateway = KeyedGateway(f"http://127.0.0.1:{port}", fake_upstream, work, client_key)
    proc = start_replica(
        work,
        port,
        log=gateway.log,
        GATEWAY_KEYS_FILE=str(work / "gateway-keys.json"),
        OPENAI_API_KEY_FILE=str(openai_file),
        GATEWAY_SECRETS_DIR=str(work / "run-secrets"),
        AZURE_OPENAI_API_KEY=PROVIDER_KEYS["azure"],
        AZURE_OPENAI_API_BASE=fake_upstream,
        OPENAI_API_BASE=f"{fake_upstream}/v1",
        ANTHROPIC_API_BASE=f"{fake_upstream}/v1",
        GATEWAY_REPLICA_ID="keyed-1",
        GATEWAY_LEDGER_DIR=str(work / "ledger"),
    )
    try:
        yield gateway
    finally:
        stop_group(proc.pid)


def assert_no_key(text: str, where: str) -> None:
    found = find_in_text(text, where, PROVIDER_KEYS)
    assert not found, [str(f) for f in found]


@pytest.mark.integration
def test_keys_from_a_key_file_a_secrets_dir_and_the_environment_reach_their_provider(keyed):
    before = keyed.fingerprints()
    for endpoint in ("chat", "completions", "embeddings", "anthropic-chat", "azure-chat"):
        body = (
            {"prompt": "hi"}
            if endpoint == "completions"
            else {"input": "hi"}
            if endpoint == "embeddings"
            else {"messages": HI}
        )
        r = requests.post(f"{keyed.url}/gateway/{endpoint}/invocations", json=body, timeout=30, headers=keyed.headers)
        assert r.status_code == 200, (endpoint, r.text)
    r = requests.post(
        f"{keyed.url}/v1/chat/completions", json={"model": "chat", "messages": HI}, timeout=30, headers=keyed.headers
    )
    assert r.status_code == 200, r.text
    stream = keyed.chat("chat", "stream me", stream=True)
    assert stream.status_code == 200 and "data: " in stream.text
    after = keyed.fingerprints()

    def sent(name: str) -> int:
        fp = key_fingerprint(PROVIDER_KEYS[name])
        return after.get(fp, 0) - before.get(fp, 0)

    assert sent("openai") == 5  # chat, completions, embeddings, /v1 chat, the stream
    assert sent("anthropic") == 1 and sent("azure") == 1
    assert "endpoints ready: chat, completions, embeddings, anthropic-chat, azure-chat" in keyed.log.read_text()


@pytest.mark.integration
@pytest.mark.parametrize("endpoint", ["chat", "anthropic-chat", "azure-chat"])
def test_a_provider_401_naming_the_key_reaches_the_client_redacted(keyed, endpoint):
    # The fake answers 401 naming the key it got, in full, as a careless provider would.
    direct = requests.post(
        f"{keyed.fake_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "[[fault:401]]"}]},
        headers={"Authorization": "Bearer sk-probe-1234567"},
        timeout=10,
    )
    assert "sk-probe-1234567" in direct.json()["error"]["message"]

    r = keyed.chat(endpoint, "[[fault:401]]")
    assert r.status_code == 401, r.text
    assert "Incorrect API key provided: [redacted key]" in r.json()["detail"], r.text
    assert_no_key(r.text, f"401 body from {endpoint}")


@pytest.mark.integration
@pytest.mark.parametrize(("fault", "status"), [("429", 429), ("quota", 429), ("500", 500), ("malformed", 502)])
def test_provider_failures_answer_without_a_key(keyed, fault, status):
    for endpoint in ("chat", "anthropic-chat"):
        r = keyed.chat(endpoint, f"[[fault:{fault}]]")
        assert r.status_code == status, (endpoint, r.text)
        assert_no_key(r.text, f"{fault} body from {endpoint}")


@pytest.mark.integration
def test_a_401_to_a_stream_leaves_no_key_in_the_answer_or_the_replica_log(keyed):
    """A stream whose provider answers 401 before its first byte gets the 401 as JSON (the kit holds a stream's
    start until its first bytes, docs/resilience.md), the key redacted; nothing in the log names it."""
    r = keyed.chat("chat", "[[fault:401]]", stream=True)
    assert r.status_code == 401 and "[redacted key]" in r.text, r.text
    assert_no_key(r.text, "the stream's 401 answer")
    assert keyed.chat("chat", "still serving").status_code == 200
    assert_no_key(keyed.log.read_text(), str(keyed.log))


@pytest.mark.integration
def test_results_file_usage_records_and_cost_report_hold_no_key(keyed, tmp_path):
    cases = {
        "cases": [
            {"name": "ok", "endpoint": "chat", "messages": HI},
            {"name": "ok-anthropic", "endpoint": "anthropic-chat", "messages": HI},
            {
                "name": "auth",
                "endpoint": "chat",
                "messages": [{"role": "user", "content": "[[fault:401]]"}],
                "expect": {"status": 401},
            },
            {
                "name": "auth-azure",
                "endpoint": "azure-chat",
                "messages": [{"role": "user", "content": "[[fault:401]]"}],
                "expect": {"status": 401},
            },
            {
                "name": "limited",
                "endpoint": "chat",
                "messages": [{"role": "user", "content": "[[fault:429]]"}],
                "expect": {"status": 429},
            },
            {
                "name": "broken",
                "endpoint": "chat",
                "messages": [{"role": "user", "content": "[[fault:500]]"}],
                "expect": {"status": 500},
            },
            {
                "name": "garbled",
                "endpoint": "chat",
                "messages": [{"role": "user", "content": "[[fault:malformed]]"}],
                "expect": {"status": 502},
            },
        ]
    }
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump(cases))
    results = tmp_path / "results.json"
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "evaluate_gateway.py"),
            "--url",
            keyed.url,
            "--test-file",
            "cases.yaml",
            "--output",
            str(results),
            "--store-content",
            "--no-progress",
        ],
        cwd=tmp_path,
        env=clean_env(GATEWAY_API_KEY=keyed.client_key),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (tmp_path / "evaluate.out").write_text(run.stdout + run.stderr)  # for the end-of-run search too
    recorded = {r["case"]: r for r in json.loads(results.read_text())["requests"]}
    assert recorded["auth"]["status"] == 401 and "[redacted key]" in recorded["auth"]["error"]
    assert_no_key(results.read_text(), str(results))
    assert_no_key(run.stdout + run.stderr, "evaluate_gateway.py output")

    report = subprocess.run(
        [sys.executable, str(REPO / "analyze_costs.py"), "--ledger", str(keyed.ledger), "--json", "--details"],
        cwd=tmp_path,
        env=clean_env(GATEWAY_API_KEY=keyed.client_key),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    (tmp_path / "costs.json").write_text(report.stdout)
    assert json.loads(report.stdout)["requests_detail"]
    assert_no_key(report.stdout + report.stderr, "analyze_costs.py output")
    ledger_text = "".join(p.read_text() for p in keyed.ledger.glob("*.jsonl"))
    assert '"status":401' in ledger_text.replace(" ", "")
    assert_no_key(ledger_text, str(keyed.ledger))


# ------------------------------------------------------------------------------- the search itself


def test_the_search_reports_a_planted_sentinel_with_its_file_and_line():
    secrets = {"openai": SENTINEL_SECRETS["openai"]}
    with tempfile.TemporaryDirectory(prefix="planted-") as folder:  # outside basetemp: the real search must not see it
        root = Path(folder)
        (root / "logs").mkdir()
        (root / "logs" / "replica.log").write_text(f"line one\nAuthorization: Bearer {secrets['openai']}\n")
        (root / "ledger.jsonl").write_bytes(b"\x00\xffbinary\n" + secrets["openai"].encode() + b"\n")
        (root / "clean.txt").write_text("nothing here\n")
        (root / "link").symlink_to(root / "logs")  # not followed: each file is reported once
        handed = write_secret(root / "keys" / "openai", secrets["openai"])
        found = sorted(str(f) for f in find_in_tree(root, secrets, skip={handed}))
        assert found == [
            f"{root}/ledger.jsonl:2: the openai sentinel key",
            f"{root}/logs/replica.log:2: the openai sentinel key",
        ]
        assert find_in_tree(root, {"other": "sk-never-written-anywhere"}) == []
    text = [str(f) for f in find_in_text(f"ok\nkey={secrets['openai']}\n", "captured stdout of t", secrets)]
    assert text == ["captured stdout of t:2: the openai sentinel key"]


def test_a_run_that_leaks_a_sentinel_fails_naming_the_file_and_line(tmp_path_factory):
    """The real hook, in a pytest run of its own: a test that writes a key into a log file, one that prints it."""
    with tempfile.TemporaryDirectory(prefix="leaky-run-") as folder:  # outside this run's basetemp
        root = Path(folder)
        for name in ("conftest.py", "secret_scan.py"):
            (root / name).write_text((REPO / "tests" / name).read_text())
        (root / "test_leaky.py").write_text(
            textwrap.dedent("""
            from conftest import SENTINEL_SECRETS

            def test_writes_a_key_into_a_log(tmp_path):
                (tmp_path / "app.log").write_text("started\\nusing key " + SENTINEL_SECRETS["anthropic"] + "\\n")

            def test_prints_a_key():
                print("debug:", SENTINEL_SECRETS["azure"])
        """)
        )
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-o",
                f"pythonpath={REPO}",  # conftest.py imports gateway_kit: this checkout's, as pyproject.toml says
                "test_leaky.py",
                "--basetemp",
                str(root / "basetemp"),
            ],
            cwd=root,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 passed" in run.stdout and "SECRET LEAK" in run.stdout
    assert f"{root}/basetemp/test_writes_a_key_into_a_log0/app.log:2: the anthropic sentinel key" in run.stdout
    assert "Captured stdout call of test_leaky.py::test_prints_a_key:1: the azure sentinel key" in run.stdout
    assert SENTINEL_SECRETS["anthropic"] not in run.stdout and SENTINEL_SECRETS["azure"] not in run.stdout
