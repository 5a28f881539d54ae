"""evaluate_gateway.py as a user runs it: a subprocess against a real gateway and the fake upstream.

What a user sees is what is asserted: the exit code, stderr, stdout and the results file (validated
against schemas/gateway_results.schema.json). Faults are injected with the fake upstream's prompt
markers ([[fault:429]], [[ttft:300]], ...), so they travel through the gateway unchanged.

The gateway under test is the local stack (tests/conftest.py): nginx, 2 gateway_kit replicas, fake upstream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import requests

from conftest import SENTINEL_SECRETS, free_port, write_secret

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "evaluate_gateway.py"
SCHEMA = json.loads((REPO / "schemas" / "gateway_results.schema.json").read_text())
PYTHON = sys.executable


@pytest.fixture(scope="session")
def gateway(stack):
    """The kit as deployed: nginx in front of 2 gateway_kit replicas and the fake upstream (tests/conftest.py)."""
    return stack


def fake_stats(gw) -> dict:
    return requests.get(gw.fake_url + "/_fake/stats", timeout=5).json()


def fake_reset(gw) -> None:
    requests.post(gw.fake_url + "/_fake/reset", timeout=5).raise_for_status()


# ---------------------------------------------------------------- running the CLI


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    output: Path

    @property
    def doc(self) -> dict:
        doc = json.loads(self.output.read_text())
        jsonschema.Draft202012Validator(SCHEMA).validate(doc)  # every results file must match its schema
        return doc

    def records(self, case: str | None = None) -> list[dict]:
        return [r for r in self.doc["requests"] if case is None or r["case"] == case]

    def record(self, case: str) -> dict:
        (only,) = self.records(case)
        return only


def run_cli(
    tmp_path: Path, *args: str, env: dict | None = None, output: str = "results.json", timeout: float = 60
) -> Run:
    clean = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_URL", "GATEWAY_API_KEY")}
    proc = subprocess.run(
        [PYTHON, str(CLI), *args] + (["--output", output] if output else []),
        cwd=tmp_path,
        env={**clean, **(env or {})},
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, tmp_path / (output or "gateway_results.json"))


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- functional mode


@pytest.mark.integration
def test_default_run_uses_GATEWAY_URL_and_writes_gateway_results_json(gateway, tmp_path):
    run = run_cli(tmp_path, env={"GATEWAY_URL": gateway.url}, output="")
    assert run.code == 0, run.stdout + run.stderr
    assert run.output.name == "gateway_results.json"
    doc = run.doc
    assert doc["run"]["url"] == gateway.url and doc["run"]["mode"] == "functional"
    assert [r["case"] for r in doc["requests"]] == ["simple-question", "multi-turn-context", "embeddings"]
    assert all(r["outcome"] == "pass" for r in doc["requests"])
    assert "PASS" in run.stdout and "the gateway works" in run.stdout


@pytest.mark.parametrize("example", ["test_cases.yaml", "test_cases.json"])
@pytest.mark.integration
def test_example_cases_all_pass(gateway, tmp_path, example):
    run = run_cli(tmp_path, "--url", gateway.url, "--test-file", str(REPO / "examples" / example))
    assert run.code == 0, run.stdout + run.stderr
    records = run.doc["requests"]
    assert {r["outcome"] for r in records} == {"pass"}
    assert any(r["stream"] for r in records) and any(r["route"].startswith("/v1/") for r in records)
    chat = run.record("greeting")
    assert chat["prompt_tokens"] > 0 and chat["completion_tokens"] > 0 and chat["cost_usd"] is not None
    assert chat["model"] == "gpt-4o-mini" and chat["provider"] == "openai"


# Each expectation kind once passing and once failing; [[reply:TEXT]] makes the fake answer exactly TEXT.
EXPECTATION_PAIRS = {
    "status": ("hi", {"status": 200}, {"status": 201}),
    "contains": ("[[reply:The answer is Paris.]]", {"contains": ["paris", "answer"]}, {"contains": "zebra"}),
    "not_contains": ("[[reply:an ERROR happened]]", {"not_contains": "zebra"}, {"not_contains": "error"}),
    "regex": ("[[reply:order 12345 shipped]]", {"regex": r"order \d{5}"}, {"regex": r"order \d{6}"}),
    "json": ('[[reply:{"ok": true}]]', {"json": True}, None),
    "max_latency_ms": ("hi [[latency:300]]", {"max_latency_ms": 60000}, {"max_latency_ms": 100}),
    "min_completion_tokens": ("hi", {"min_completion_tokens": 1}, {"min_completion_tokens": 10000}),
    "max_completion_tokens": (
        "[[reply:one two three four five six seven eight]]",
        {"max_completion_tokens": 10000},
        {"max_completion_tokens": 2},
    ),
}


def expectation_cases() -> str:
    cases = []
    for kind, (prompt, passing, failing) in EXPECTATION_PAIRS.items():
        fail_prompt = "[[reply:ok: true, not JSON]]" if failing is None else prompt
        for suffix, text, expect in (("pass", prompt, passing), ("fail", fail_prompt, failing or passing)):
            cases.append(
                {
                    "name": f"{kind}-{suffix}",
                    "endpoint": "chat",
                    "messages": [{"role": "user", "content": text}],
                    "expect": expect,
                }
            )
    return json.dumps({"cases": cases}, indent=1)


KINDS = list(EXPECTATION_PAIRS)


@pytest.mark.integration
def test_every_expectation_kind_passes_and_fails_with_an_explanation(gateway, tmp_path):
    cases = write(tmp_path, "cases.json", expectation_cases())
    run = run_cli(tmp_path, "--url", gateway.url, "--test-file", cases)
    assert run.code == 1  # some cases fail on purpose
    for kind in KINDS:
        passing, failing = run.record(f"{kind}-pass"), run.record(f"{kind}-fail")
        assert passing["outcome"] == "pass", passing
        assert failing["outcome"] == "fail", failing
        assert len(failing["failures"]) == 1 and failing["failures"][0].startswith(kind), failing["failures"]
        assert f"{kind}-fail #" in run.stdout  # explained under "Why they failed"
    assert "Why they failed" in run.stdout
    summary = run.doc["summary"]
    assert summary["failed"] == len(KINDS) and summary["errors"] == 0
    assert "the gateway works" in summary["verdict"]


@pytest.mark.integration
def test_an_earlier_kit_style_file_without_endpoints_goes_to_the_chat_endpoint(gateway, tmp_path):
    cases = write(
        tmp_path,
        "test_cases.json",
        json.dumps(
            [
                {
                    "name": "Simple question",
                    "description": "no endpoint: chat",
                    "messages": [{"role": "user", "content": "What is AI?"}],
                },
                {
                    "name": "Raw payload",
                    "payload": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 150},
                },
            ]
        ),
    )
    run = run_cli(tmp_path, "--url", gateway.url, "--test-file", cases, output="results.json")
    assert run.code == 0, run.stdout + run.stderr
    assert {r["route"] for r in run.records()} == {"/gateway/chat/invocations"}


@pytest.mark.integration
def test_repeat_sends_every_case_n_times(gateway, tmp_path):
    run = run_cli(tmp_path, "--url", gateway.url, "--repeat", "2")
    assert run.code == 0
    assert [r["case"] for r in run.records()] == ["simple-question", "multi-turn-context", "embeddings"] * 2


# ---------------------------------------------------------------- error classes

FAULTS = """\
cases:
  - {name: f429, endpoint: chat, messages: [{role: user, content: "hi [[fault:429]]"}]}
  - {name: quota, endpoint: chat, messages: [{role: user, content: "hi [[fault:quota]]"}]}
  - {name: f500, endpoint: chat, messages: [{role: user, content: "hi [[fault:500]]"}]}
  - {name: f401, endpoint: chat, messages: [{role: user, content: "hi [[fault:401]]"}]}
  - {name: drop, endpoint: chat, messages: [{role: user, content: "hi [[fault:drop]]"}]}
  - {name: malformed, endpoint: chat, messages: [{role: user, content: "hi [[fault:malformed]]"}]}
  - {name: slow, endpoint: chat, messages: [{role: user, content: "hi [[fault:slow]]"}]}
  - {name: stream-500, endpoint: chat, params: {stream: true},
     messages: [{role: user, content: "hi [[fault:500]]"}]}
  - {name: no-such-endpoint, endpoint: nope, messages: [{role: user, content: hi}]}
  - {name: ok, endpoint: chat, messages: [{role: user, content: hi}]}
"""


@pytest.mark.integration
def test_injected_faults_are_classified_and_blamed_on_the_right_side(gateway, tmp_path):
    run = run_cli(
        tmp_path,
        "--url",
        gateway.url,
        "--timeout",
        "3",  # above the gateway's one retry of the 429 after its Retry-After: 1
        "--test-file",
        write(tmp_path, "faults.yaml", FAULTS),
    )
    assert run.code == 1
    # Stock MLflow 3.17.2 answers a dropped or garbled provider with a bare 500 it also uses for its own
    # failures; gateway_kit.app turns those into 502 {"error": {"type": "upstream_..."}}.
    unreadable_provider = "upstream_5xx"
    expected = {
        "f429": ("rate_limited", 429),
        "quota": ("quota", 429),
        "f500": ("upstream_5xx", 500),
        "f401": ("auth", 401),
        "drop": (unreadable_provider, None),
        "malformed": (unreadable_provider, None),
        "slow": ("timeout", None),
        "stream-500": ("upstream_5xx", 500),  # the kit holds a stream's 200 until its first event
        "no-such-endpoint": ("bad_request", 404),
    }
    for case, (cls, status) in expected.items():
        record = run.record(case)
        assert record["outcome"] == "error" and record["error_class"] == cls, record
        if status is not None:
            assert record["status"] == status, record
    assert run.record("quota")["error_side"] == "provider"
    assert "quota" in run.record("quota")["error"]  # the provider's message, passed on
    assert run.record("slow")["status"] is None and run.record("slow")["latency_ms"] < 10_000
    assert run.record("ok")["outcome"] == "pass"
    summary = run.doc["summary"]
    assert summary["errors"] == len(expected)
    assert summary["errors_by_class"]["rate_limited"] == 1
    assert "the provider refused" in summary["verdict"]
    assert "Errors:" in run.stdout and "Verdict:" in run.stdout


@pytest.mark.integration
def test_quota_alone_says_the_gateway_works_and_the_provider_refused(gateway, tmp_path):
    cases = write(
        tmp_path,
        "q.yaml",
        """\
- {name: quota, endpoint: chat, messages: [{role: user, content: "hi [[fault:quota]]"}]}
- {name: ok, endpoint: chat, messages: [{role: user, content: hi}]}
""",
    )
    run = run_cli(tmp_path, "--url", gateway.url, "--test-file", cases)
    assert run.code == 1
    assert run.doc["summary"]["verdict"] == "the gateway works; the provider refused: quota (1)"
    assert run.doc["summary"]["failing_side"] == "provider"
    assert "the gateway works; the provider refused: quota (1)" in run.stdout


@pytest.mark.integration
def test_an_expected_error_status_passes_and_is_not_counted_as_an_error(gateway, tmp_path):
    cases = write(
        tmp_path,
        "e.yaml",
        """\
- name: quota-expected
  endpoint: chat
  messages: [{role: user, content: "hi [[fault:quota]]"}]
  expect: {status: 429, contains: quota}
""",
    )
    run = run_cli(tmp_path, "--url", gateway.url, "--test-file", cases)
    assert run.code == 0, run.stdout
    record = run.record("quota-expected")
    assert record["outcome"] == "pass" and record["error_class"] == "quota"
    assert run.doc["summary"]["errors"] == 0


@pytest.mark.integration
def test_max_error_rate_gate(gateway, tmp_path):
    cases = write(
        tmp_path,
        "g.yaml",
        """\
- {name: broken, endpoint: chat, messages: [{role: user, content: "hi [[fault:500]]"}]}
- {name: fine-1, endpoint: chat, messages: [{role: user, content: hi}]}
- {name: fine-2, endpoint: chat, messages: [{role: user, content: hi}]}
""",
    )
    strict = run_cli(tmp_path, "--url", gateway.url, "--test-file", cases)
    assert strict.code == 1 and "Gate failed: max_error_rate" in strict.stdout
    lenient = run_cli(tmp_path, "--url", gateway.url, "--test-file", cases, "--max-error-rate", "50%")
    assert lenient.code == 0, lenient.stdout
    assert lenient.doc["summary"]["error_rate"] == pytest.approx(1 / 3, abs=1e-3)


@pytest.mark.integration
def test_max_p95_gate(gateway, tmp_path):
    run = run_cli(tmp_path, "--url", gateway.url, "--max-p95-ms", "0.001")
    assert run.code == 1
    gate = next(g for g in run.doc["summary"]["gates"] if g["name"] == "max_p95_ms")
    assert gate["passed"] is False and gate["value"] > gate["limit"]
    assert "Gate failed: max_p95_ms" in run.stdout


# ---------------------------------------------------------------- streaming


@pytest.mark.integration
def test_streaming_measures_time_to_first_token_and_chunk_gaps(gateway, tmp_path):
    cases = write(
        tmp_path,
        "s.yaml",
        """\
- name: stream
  endpoint: chat
  messages: [{role: user, content: "tell me about load balancers [[ttft:300]]"}]
  params: {stream: true}
  expect: {contains: load balancers, min_completion_tokens: 1}
- name: stream-v1
  model: chat
  messages: [{role: user, content: "and about nginx [[ttft:300]]"}]
  params: {stream: true}
""",
    )
    run = run_cli(tmp_path, "--url", gateway.url, "--test-file", cases)
    assert run.code == 0, run.stdout + run.stderr
    for name in ("stream", "stream-v1"):
        record = run.record(name)
        assert record["stream"] is True and record["outcome"] == "pass"
        assert 300 <= record["ttft_ms"] < record["latency_ms"]  # the fake waits 300 ms before the first token
        assert record["chunks"] > 2 and record["inter_chunk_ms"]["count"] >= 1
        assert record["completion_tokens"] > 0  # from the stream's final usage chunk
    summary = run.doc["summary"]
    assert summary["ttft_ms"]["count"] == 2 and summary["inter_chunk_ms"]["count"] >= 2
    assert "TTFT:" in run.stdout


# ---------------------------------------------------------------- load mode


@pytest.mark.integration
def test_closed_loop_load_sends_exactly_n_and_records_exactly_n(gateway, tmp_path):
    fake_reset(gateway)
    run = run_cli(tmp_path, "--url", gateway.url, "--concurrency", "4", "--requests", "40")
    assert run.code == 0, run.stdout + run.stderr
    doc = run.doc
    assert doc["run"]["mode"] == "load"
    assert sorted(r["seq"] for r in doc["requests"]) == list(range(40))
    assert doc["summary"]["requests"] == 40 and doc["summary"]["throughput_rps"] > 0
    assert fake_stats(gateway)["requests"] == 40
    latency = doc["summary"]["latency_ms"]
    assert latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    generator = doc["summary"]["generator"]
    assert generator["workers"] == 4 and generator["cpu_per_request_ms"] > 0 and generator["note"]
    assert "REQ/S" in run.stdout and "Generator:" in run.stdout


@pytest.mark.integration
def test_open_loop_rate_sends_by_the_clock_and_reports_the_achieved_rate(gateway, tmp_path):
    fake_reset(gateway)
    run = run_cli(tmp_path, "--url", gateway.url, "--rate", "40", "--requests", "30")
    assert run.code == 0, run.stdout + run.stderr
    doc = run.doc
    assert len(doc["requests"]) == 30 and fake_stats(gateway)["requests"] == 30
    assert all(r["queue_ms"] is not None for r in doc["requests"])
    generator = doc["summary"]["generator"]
    assert generator["target_rate"] == 40 and generator["achieved_rate"] > 0
    assert isinstance(generator["bound"], bool) and generator["start_lag_ms"]["count"] == 30


@pytest.mark.integration
def test_duration_mode_counts_every_request_it_sent(gateway, tmp_path):
    fake_reset(gateway)
    run = run_cli(tmp_path, "--url", gateway.url, "--concurrency", "2", "--duration", "1")
    assert run.code == 0, run.stdout + run.stderr
    sent = fake_stats(gateway)["requests"]
    assert sent > 0 and run.doc["summary"]["requests"] == len(run.records()) == sent


@pytest.mark.integration
def test_ctrl_c_saves_the_finished_requests_and_exits_130(gateway, tmp_path):
    cases = write(
        tmp_path,
        "slowish.yaml",
        "- {name: slowish, endpoint: chat, messages: [{role: user, content: 'hi [[latency:200]]'}]}\n",
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_URL", "GATEWAY_API_KEY")}
    proc = subprocess.Popen(
        [
            PYTHON,
            str(CLI),
            "--url",
            gateway.url,
            "--test-file",
            cases,
            "--concurrency",
            "2",
            "--duration",
            "60",
            "--output",
            "results.json",
        ],
        cwd=tmp_path,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    run = Run(proc.returncode, stdout, stderr, tmp_path / "results.json")
    doc = run.doc
    assert doc["run"]["interrupted"] is True and doc["summary"]["exit_code"] == 130
    assert len(doc["requests"]) == doc["summary"]["requests"] >= 2
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no half-written file left


# ---------------------------------------------------------------- output and secrets


@pytest.mark.integration
def test_json_flag_prints_the_results_document_on_stdout(gateway, tmp_path):
    run = run_cli(tmp_path, "--url", gateway.url, "--json")
    assert run.code == 0
    printed = json.loads(run.stdout)
    assert printed == run.doc and printed["schema_version"] == 1
    assert "Verdict:" in run.stderr  # the human summary moves to stderr


@pytest.mark.integration
def test_content_is_stored_only_with_store_content(gateway, tmp_path):
    plain = run_cli(tmp_path, "--url", gateway.url, output="plain.json")
    assert "favourite colour" not in plain.output.read_text()
    assert all("prompt" not in r and "answer" not in r for r in plain.records())
    stored = run_cli(tmp_path, "--url", gateway.url, "--store-content", output="stored.json")
    record = stored.record("multi-turn-context")
    assert record["prompt"][0]["content"].startswith("My favourite colour") and "teal" in record["answer"]


@pytest.mark.integration
def test_gateway_api_key_is_sent_as_bearer_but_never_printed_or_stored(gateway, tmp_path):
    # Pointed at the fake upstream itself, whose stats show which auth headers arrived.
    secret = SENTINEL_SECRETS["gateway-client"]
    cases = write(tmp_path, "v1.yaml", "- {name: v1, model: gpt-4o-mini, messages: [{role: user, content: hi}]}\n")
    fake_reset(gateway)
    run = run_cli(tmp_path, "--url", gateway.fake_url, "--test-file", cases, "--json", env={"GATEWAY_API_KEY": secret})
    assert run.code == 0, run.stderr
    assert fake_stats(gateway)["auth_headers"].get("authorization") == 1
    assert secret not in run.stdout + run.stderr + run.output.read_text()
    assert run.doc["run"]["options"]["auth"] == "bearer"
    fake_reset(gateway)
    run_cli(tmp_path, "--url", gateway.fake_url, "--test-file", cases)
    assert fake_stats(gateway)["auth_headers"] == {"none": 1}


@pytest.mark.integration
def test_with_a_broken_pricing_file_it_records_tokens_and_leaves_cost_null(gateway, tmp_path):
    broken = write(tmp_path, "pricing.yaml", "models: [not, a, mapping\n")
    run = run_cli(tmp_path, "--url", gateway.url, env={"GATEWAY_PRICING_FILE": broken})
    assert run.code == 0, run.stdout + run.stderr
    record = run.record("simple-question")
    assert record["completion_tokens"] > 0 and record["model"] and record["provider"]
    assert record["cost_usd"] is None and "gateway_kit.pricing unavailable (PricingFileError" in record["price_source"]
    assert run.doc["summary"]["cost"]["usd"] is None and "unknown" in run.stdout


@pytest.mark.integration
def test_gateway_url_is_read_from_dotenv(gateway, tmp_path):
    write_secret(tmp_path / ".env", f"GATEWAY_URL={gateway.url}\nOPENAI_API_KEY={SENTINEL_SECRETS['dotenv-openai']}\n")
    run = run_cli(tmp_path)
    assert run.code == 0 and run.doc["run"]["url"] == gateway.url


# ---------------------------------------------------------------- usage errors and an unreachable gateway

CLOSED = f"http://127.0.0.1:{free_port()}"  # nothing listens here


def test_json_syntax_error_is_rejected_with_its_line_before_anything_is_sent(tmp_path):
    bad = write(tmp_path, "bad.json", '{"cases": [\n  {"name": "a", "endpoint": "chat"\n   "prompt": "hi"}\n]}\n')
    run = run_cli(tmp_path, "--url", CLOSED, "--test-file", bad)
    assert run.code == 2  # not 3: the file is checked before the gateway is
    assert "bad.json:3" in run.stderr and "invalid JSON at line 3" in run.stderr
    assert not run.output.exists()


def test_yaml_wrong_type_names_the_case_the_field_and_the_line(tmp_path):
    bad = write(
        tmp_path,
        "bad.yaml",
        """\
cases:
  - name: fine
    endpoint: chat
    messages: [{role: user, content: hi}]
  - name: multi-turn
    endpoint: chat
    messages:
      - {role: user, content: hi}
    params:
      temperature: 0
      max_tokens: lots
    expect:
      contain: x
""",
    )
    run = run_cli(tmp_path, "--url", CLOSED, "--test-file", bad)
    assert run.code == 2
    assert "bad.yaml:11: case 'multi-turn' (cases[1]): params.max_tokens: expected an integer" in run.stderr
    assert (
        "bad.yaml:13: case 'multi-turn' (cases[1]): expect.contain: unknown expectation; did you mean"
        " 'contains'?" in run.stderr
    )
    assert "nothing was sent" in run.stderr and "Traceback" not in run.stderr


def test_validate_checks_a_file_without_sending(tmp_path):
    run = run_cli(tmp_path, "--url", CLOSED, "--validate", "--test-file", str(REPO / "examples" / "test_cases.yaml"))
    assert run.code == 0 and "8 valid cases" in run.stdout


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--concurrency", "4"], "--concurrency is for load mode"),
        (["--rate", "5"], "--rate needs --requests N or --duration S"),
        (["--requests", "0"], "--requests: expected a positive whole number"),
        (["--max-error-rate", "150%"], "--max-error-rate: expected a fraction"),
        (["--repeat", "2", "--requests", "5"], "--repeat is for functional mode"),
        (["--url", "localhost:5000"], "--url must look like http://host:port"),
        (["--output", "/no/such/dir/out.json"], "does not exist"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_flags_are_rejected_with_exit_2(tmp_path, flags, says):
    run = run_cli(tmp_path, "--url", CLOSED, *flags, output="")
    assert run.code == 2
    assert says in run.stderr and "error:" in run.stderr


def test_help_documents_every_flag_and_the_exit_codes(tmp_path):
    run = run_cli(tmp_path, "--help", output="")
    assert run.code == 0
    for flag in (
        "--url",
        "--wait",
        "--timeout",
        "--test-file",
        "--repeat",
        "--requests",
        "--duration",
        "--concurrency",
        "--rate",
        "--max-error-rate",
        "--max-p95-ms",
        "--output",
        "--json",
        "--store-content",
    ):
        assert flag in run.stdout
    assert "exit codes:" in run.stdout and "GATEWAY_API_KEY" in run.stdout


def test_unreachable_gateway_exits_3_with_what_failed_and_what_to_do(tmp_path):
    run = run_cli(tmp_path, "--url", CLOSED)
    assert run.code == 3
    assert CLOSED in run.stderr and "connection refused" in run.stderr
    assert "scripts/check_gateway.sh" in run.stderr and "Traceback" not in run.stderr
    assert not run.output.exists()


def test_unknown_host_is_reported_as_dns(tmp_path):
    run = run_cli(tmp_path, "--url", "http://no-such-host.invalid:5000")
    assert run.code == 3 and "DNS lookup failed" in run.stderr


@pytest.mark.integration
def test_health_that_is_not_200_is_reported_with_its_status(gateway, tmp_path):
    run = run_cli(tmp_path, "--url", gateway.fake_url + "/nothing-here", "--wait", "1")
    assert run.code == 3 and "answered HTTP 404" in run.stderr
    assert "after" in run.stderr  # it kept trying for --wait seconds


# ---------------------------------------------------------------- the multi-replica stack


@pytest.mark.integration
@pytest.mark.stack
def test_load_spreads_over_the_replicas(stack, tmp_path):
    run = run_cli(tmp_path, "--url", stack.url, "--concurrency", "4", "--requests", "40")
    assert run.code == 0, run.stdout + run.stderr
    summary = run.doc["summary"]
    assert summary["replica_source"] == "X-Gateway-Replica"
    assert sum(summary["replicas"].values()) == 40
    assert set(summary["replicas"]) == set(stack.replicas) and len(stack.replicas) >= 2
    assert all(r["upstream_addr"] for r in run.records())  # nginx's X-Upstream-Addr is recorded too
