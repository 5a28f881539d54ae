"""analyze_costs.py as a user runs it: a subprocess, its exit code, stdout and stderr.

Fixtures are usage records written the way the gateway writes them (UsageRecord.to_json()), laid out as a
ledger, as `docker logs --timestamps` output, and as `docker compose logs` output with and without timestamps.
Expected costs are recomputed here with genai-prices directly, not through gateway_kit.pricing. Docker is a
fake `docker` script on PATH: one that fails like a CLI without an engine (as on this machine), one that
prints fixture logs.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import conftest
import genai_prices
import pytest

from gateway_kit.cli import costs
from gateway_kit.usage import UsageRecord, ledger_file_name

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "analyze_costs.py"
SCHEMA = json.loads((REPO / "schemas" / "gateway_results.schema.json").read_text())


def genai_usd(
    model: str, provider: str | None, prompt: int, completion: int, cached: int = 0, reasoning: int = 0
) -> float:
    """The independent price: genai-prices' calc_price, no kit code."""
    usage = genai_prices.Usage(
        input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion, output_reasoning_tokens=reasoning
    )
    return float(genai_prices.calc_price(usage, model, provider_id=provider).total_price)


def make_records() -> list[UsageRecord]:
    """A day and a half of traffic: four providers, an unknown self-hosted model, a failure, a cut stream.
    Half the records carry their cost (as the gateway writes it), half do not (analyze_costs prices them)."""
    specs = [
        # (ts, endpoint, provider, model, status, prompt, completion, cached, reasoning, client, stream, partial)
        (
            "2026-11-21T09:15:00.000Z",
            "chat",
            "openai",
            "gpt-4o-mini-2024-07-18",
            200,
            1200,
            300,
            1024,
            0,
            "team-a",
            False,
            False,
        ),
        (
            "2026-11-21T09:45:10.250Z",
            "chat",
            "openai",
            "gpt-4o-mini-2024-07-18",
            200,
            800,
            150,
            0,
            0,
            "team-b",
            True,
            False,
        ),
        (
            "2026-11-21T10:05:00.000Z",
            "anthropic-chat",
            "anthropic",
            "claude-3-5-haiku-latest",
            200,
            3000,
            500,
            2000,
            0,
            "team-a",
            False,
            False,
        ),
        ("2026-11-21T10:30:00.000Z", "azure-chat", "azure", "gpt-4o-mini", 200, 640, 64, 0, 0, None, False, False),
        (
            "2026-11-21T23:59:59.999Z",
            "embeddings",
            "openai",
            "text-embedding-3-small",
            200,
            9000,
            0,
            0,
            0,
            "search",
            False,
            False,
        ),
        (
            "2026-11-22T00:00:00.000Z",
            "completions",
            "openai",
            "gpt-3.5-turbo-instruct",
            200,
            400,
            120,
            0,
            0,
            "team-b",
            False,
            False,
        ),
        ("2026-11-22T08:00:00.000Z", "chat", "openai", "o3-mini", 200, 2000, 3000, 0, 2500, "team-a", False, False),
        (
            "2026-11-22T08:30:00.000Z",
            "chat",
            "openai",
            "gpt-4o-mini-2024-07-18",
            500,
            0,
            0,
            0,
            0,
            "team-a",
            False,
            False,
        ),
        (
            "2026-11-22T09:00:00.000Z",
            "chat",
            "openai",
            "gpt-4o-mini-2024-07-18",
            200,
            900,
            40,
            0,
            0,
            "team-b",
            True,
            True,
        ),
        ("2026-11-22T09:30:00.000Z", "local", "ollama", "house-llm", 200, 5000, 1000, 0, 0, "team-a", False, False),
        ("2026-11-22T10:00:00.000Z", "local", "ollama", "house-llm", 200, 100, 100, 0, 0, "team-b", False, False),
    ]
    records = []
    for n, (ts, endpoint, provider, model, status, p, c, cached, r, client, stream, partial) in enumerate(specs):
        known = model != "house-llm"
        cost = genai_usd(model, provider, p, c, cached, r) if known and n % 2 == 0 else None
        records.append(
            UsageRecord(
                ts=ts,
                request_id=f"req-{n:03d}",
                route=f"/gateway/{endpoint}/invocations",
                endpoint=endpoint,
                provider=provider,
                model=model,
                status=status,
                latency_ms=100.0 + n,
                ttft_ms=50.0 if stream else None,
                stream=stream,
                partial=partial,
                prompt_tokens=p,
                completion_tokens=c,
                total_tokens=p + c,
                cached_tokens=cached,
                reasoning_tokens=r,
                client=client,
                replica=f"mlflow-gateway-{1 + n % 2}",
                cost_usd=cost,
                price_source="genai-prices 0.2.3" if cost is not None else "unknown",
                error="upstream_5xx" if status >= 400 else ("client_disconnected" if partial else None),
            )
        )
    return records


RECORDS = make_records()
PRICED = [r for r in RECORDS if r.model != "house-llm"]
EXPECTED_COST = sum(
    genai_usd(r.model, r.provider, r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.reasoning_tokens)
    for r in PRICED
)
FOREIGN_LINES = [
    "[2026-11-22 10:00:00 +0000] [7] [INFO] Booting worker with pid: 7",
    'INFO:     127.0.0.1:52110 - "POST /gateway/chat/invocations HTTP/1.1" 200 OK',
    '{"level": "info", "msg": "a JSON log line from something else"}',
]


def write_ledger(directory: Path, records: list[UsageRecord] = RECORDS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for r in records:
        path = directory / ledger_file_name(r.replica or "r", r.ts[:10])
        with open(path, "a") as f:
            f.write(r.to_json() + "\n")
    return directory


def docker_logs(records: list[UsageRecord]) -> str:
    """`docker logs --timestamps`: RFC 3339 nano timestamps, gateway log lines in between."""
    out = []
    for n, r in enumerate(records):
        out.append(f"{r.ts[:-1]}000000Z {FOREIGN_LINES[n % 3]}")
        out.append(f"{r.ts[:-1]}123456Z {r.to_json()}")
    return "\n".join(out) + "\n"


def compose_logs(records: list[UsageRecord], timestamps: bool) -> str:
    """`docker compose logs [--timestamps]`: a "service-N  | " prefix per replica."""
    out = []
    for n, r in enumerate(records):
        name = f"mlflow-gateway-{1 + n % 2}"
        stamp = f"{r.ts[:-1]}123456789Z " if timestamps else ""
        out.append(f"{name}  | {stamp}{FOREIGN_LINES[n % 3]}")
        out.append(f"{name}  | {stamp}{r.to_json()}")
    return "\n".join(out) + "\n"


def clean_env(**extra: str) -> dict[str, str]:
    # no pricing.yaml: genai-prices alone, unless a test says otherwise
    return conftest.clean_env(**{"GATEWAY_PRICING_FILE": os.devnull, **extra})


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CLI), *args],
        cwd=cwd,
        env=env or clean_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def report(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None) -> dict:
    result = run(*args, "--json", cwd=cwd, env=env, stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def by_key(rows: list[dict]) -> dict[str, dict]:
    return {row["key"]: row for row in rows}


@pytest.fixture
def ledger(tmp_path) -> Path:
    return write_ledger(tmp_path / "ledger")


# -- the report ---------------------------------------------------------------------------------------------


def refusal_records() -> list[UsageRecord]:
    """Records of requests the gateway refused itself, as gateway_kit.recording.Refusals writes them."""
    from datetime import UTC, datetime

    from gateway_kit.events import Events, Listener
    from gateway_kit.recording import Refusals

    written: list[UsageRecord] = []

    class Written(Listener):
        def refusal_recorded(self, record: UsageRecord) -> None:
            written.append(record)

    refuse = Refusals("mlflow-gateway-1", Events([Written()]))
    at = datetime(2026, 11, 22, 11, tzinfo=UTC).timestamp()
    refuse({"path": "/gateway/chat/invocations", "state": {"request_id": "no-key"}}, 401, "gateway_key_required", at)
    refuse({"path": "/v1/chat/completions", "state": {"request_id": "bad-key"}}, 401, "invalid_gateway_key", at)
    refuse(
        {"path": "/v1/chat/completions", "state": {"request_id": "over", "kit_endpoint": "chat"}},
        429,
        "rate_limit_exceeded:client_calls",
        at,
        client="team-a",
    )
    refuse(
        {"path": "/gateway/chat/invocations", "state": {"request_id": "no-redis"}},
        503,
        "limits_unavailable",
        at,
        client="team-b",
    )
    return written


def test_refused_requests_are_counted_apart_without_changing_tokens_or_cost(tmp_path):
    refused = refusal_records()
    ledger = write_ledger(tmp_path / "ledger", RECORDS + refused[:-1])
    with open(next(ledger.glob("usage-*2026-11-22.jsonl")), "a") as f:  # another writer's spacing: the slow reader
        f.write(json.dumps(refused[-1].to_dict()) + "\n")
    rep = report("--ledger", str(ledger), cwd=tmp_path)
    assert rep["requests"] == {"total": 15, "ok": 10, "failed": 5, "partial": 1, "refused": 4}
    assert rep["tokens"]["total"] == sum(r.total_tokens for r in RECORDS)
    assert rep["cost"]["total_usd"] == pytest.approx(EXPECTED_COST, rel=1e-9)
    assert rep["cost"]["unpriced_requests"] == 2  # the two house-llm requests, not the refusals
    assert all(s["malformed"] == 0 for s in rep["sources"])
    assert by_key(rep["by_client"])["team-a"]["failed"] == 2  # its 500 and its 429
    text = run("--ledger", str(ledger), cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "Failed: 5" in text.stdout and "refused by the gateway (no or bad key, over a limit): 4" in text.stdout


def test_ledger_totals_equal_an_independent_genai_prices_recomputation(ledger, tmp_path):
    rep = report("--ledger", str(ledger), cwd=tmp_path)
    assert rep["requests"] == {"total": 11, "ok": 10, "failed": 1, "partial": 1, "refused": 0}
    assert rep["tokens"] == {
        "prompt": sum(r.prompt_tokens for r in RECORDS),
        "completion": sum(r.completion_tokens for r in RECORDS),
        "cached": sum(r.cached_tokens for r in RECORDS),
        "reasoning": sum(r.reasoning_tokens for r in RECORDS),
        "total": sum(r.total_tokens for r in RECORDS),
    }
    assert rep["cost"]["total_usd"] == pytest.approx(EXPECTED_COST, rel=1e-9)
    assert rep["cost"]["average_usd_per_successful_request"] == pytest.approx(EXPECTED_COST / 10, rel=1e-9)
    assert rep["cost"]["unpriced_requests"] == 2
    models = by_key(rep["by_model"])
    assert models["o3-mini"]["cost_usd"] == pytest.approx(genai_usd("o3-mini", "openai", 2000, 3000, 0, 2500))
    assert models["house-llm"]["unpriced_requests"] == 2 and models["house-llm"]["cost_usd"] == 0
    assert rep["unknown_prices"] == [{"model": "house-llm", "provider": "ollama", "requests": 2, "tokens": 6200}]
    assert by_key(rep["by_day"])["2026-11-21"]["requests"] == 5
    assert by_key(rep["by_endpoint"])["chat"]["failed"] == 1
    assert by_key(rep["by_client"])["(none)"]["requests"] == 1
    assert rep["period"]["first"] == "2026-11-21T09:15:00.000Z" and rep["period"]["last"] == "2026-11-22T10:00:00.000Z"
    assert [t["request_id"] for t in rep["top_requests"]][0] == "req-006"  # o3-mini, the most expensive
    assert len(rep["requests_detail"]) == 11  # 20 or fewer: listed


def test_the_table_keeps_the_earlier_kits_labels_and_lists_unknown_models_with_how_to_price_them(ledger, tmp_path):
    result = run("--ledger", str(ledger), cwd=tmp_path)
    assert result.returncode == 0
    out = result.stdout
    for label in (
        "Total Requests: 11",
        "Successful: 10",
        "Failed: 1",
        "Total Prompt Tokens:",
        "Total Cost: $",
        "Average Cost per Request: $",
        "By model",
        "By endpoint",
        "By client",
        "By day",
        "Most expensive requests",
        "Requests",
        "Unknown prices",
    ):
        assert label in out
    assert "house-llm (provider ollama): 2 request(s), 6,200 tokens" in out
    assert "input_mtok:" in out and "output_mtok:" in out
    assert "no price for house-llm" in result.stderr


def test_json_has_sorted_keys_and_two_space_indent(ledger, tmp_path):
    out = run("--ledger", str(ledger), "--json", cwd=tmp_path).stdout
    assert out == json.dumps(json.loads(out), sort_keys=True, indent=2) + "\n"


def test_csv_has_a_row_per_group_or_per_request_with_details(ledger, tmp_path):
    groups = list(csv.DictReader(io.StringIO(run("--ledger", str(ledger), "--csv", cwd=tmp_path).stdout)))
    total = next(row for row in groups if row["group"] == "total")
    assert int(total["requests"]) == 11 and float(total["cost_usd"]) == pytest.approx(EXPECTED_COST, rel=1e-9)
    assert {row["group"] for row in groups} == {"total", "model", "endpoint", "client", "day"}
    rows = list(csv.DictReader(io.StringIO(run("--ledger", str(ledger), "--csv", "--details", cwd=tmp_path).stdout)))
    assert [row["request_id"] for row in rows] == [r.request_id for r in RECORDS]
    assert rows[0]["model"] == "gpt-4o-mini-2024-07-18"


def test_by_hour_buckets_by_hour(ledger, tmp_path):
    rep = report("--ledger", str(ledger), "--by", "hour", cwd=tmp_path)
    assert "by_day" not in rep
    assert by_key(rep["by_hour"])["2026-11-21 09:00"]["requests"] == 2


@pytest.mark.parametrize(
    "flags, expected_ids",
    [
        (["--since", "2026-11-22"], range(5, 11)),
        (["--until", "2026-11-21"], range(0, 5)),  # a date alone: up to the end of that day
        (["--since", "2026-11-21T10:00", "--until", "2026-11-22T00:00:00Z"], range(2, 5)),
        (["--since", "2026-11-22T09:00:00+09:00"], range(5, 11)),  # 09:00 at UTC+9 is midnight UTC
        (["--only-model", "claude-3-5-haiku-latest", "--only-model", "o3-mini"], [2, 6]),
        (["--endpoint", "azure-chat"], [3]),
        (["--client", "search"], [4]),
    ],
)
def test_filters_keep_only_the_requests_asked_for(ledger, tmp_path, flags, expected_ids):
    rep = report("--ledger", str(ledger), "--details", *flags, cwd=tmp_path)
    assert [row["request_id"] for row in rep["requests_detail"]] == [f"req-{n:03d}" for n in expected_ids]


def test_what_if_prices_every_request_as_another_model(ledger, tmp_path):
    rep = report("--ledger", str(ledger), "--model", "gpt-4", cwd=tmp_path)
    expected = sum(
        genai_usd("gpt-4", None, r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.reasoning_tokens)
        for r in RECORDS
    )
    assert rep["cost"]["total_usd"] == pytest.approx(expected, rel=1e-9)
    assert rep["cost"]["priced_as"] == "gpt-4" and rep["unknown_prices"] == []


def test_what_if_with_a_model_nobody_prices_is_a_usage_error(ledger, tmp_path):
    result = run("--ledger", str(ledger), "--model", "gpt-99-imaginary", cwd=tmp_path)
    assert result.returncode == 2
    assert "analyze_costs.py: error: --model gpt-99-imaginary: no price known" in result.stderr


def test_budget_exceeded_exits_1_for_a_cron_alert(ledger, tmp_path):
    over = run("--ledger", str(ledger), "--budget", "0.001", cwd=tmp_path)
    assert over.returncode == 1
    assert "analyze_costs.py: budget exceeded: $" in over.stderr and "> $0.001000" in over.stderr
    assert "Budget: $0.001000 — EXCEEDED" in over.stdout
    under = run("--ledger", str(ledger), "--budget", "100", cwd=tmp_path)
    assert under.returncode == 0
    assert run("--ledger", str(ledger), "--budget", "0.001", "--since", "2030-01-01", cwd=tmp_path).returncode == 0


def test_adding_the_unknown_model_to_pricing_yaml_prices_its_records(ledger, tmp_path):
    prices = tmp_path / "pricing.yaml"
    prices.write_text("models:\n  ollama/house-llm: {input_mtok: 1.0, output_mtok: 2.0}\n")
    rep = report("--ledger", str(ledger), "--pricing", str(prices), cwd=tmp_path)
    assert rep["unknown_prices"] == []
    assert rep["cost"]["total_usd"] == pytest.approx(EXPECTED_COST + (5100 * 1.0 + 1100 * 2.0) / 1e6, rel=1e-9)


def test_pricing_yaml_in_the_working_directory_is_found(ledger, tmp_path):
    (tmp_path / "pricing.yaml").write_text("models:\n  house-llm: {input_mtok: 1.0, output_mtok: 1.0}\n")
    env = clean_env()
    del env["GATEWAY_PRICING_FILE"]
    assert report("--ledger", str(ledger), cwd=tmp_path, env=env)["unknown_prices"] == []


def test_a_gzipped_ledger_day_is_read_like_the_others(ledger, tmp_path):
    for path in list(ledger.glob("*2026-11-21.jsonl")):
        with open(path, "rb") as src, gzip.open(str(path) + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        path.unlink()
    assert report("--ledger", str(ledger), cwd=tmp_path)["requests"]["total"] == 11


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX system")
def test_several_processes_give_the_same_report_as_one(tmp_path):
    ledger = write_ledger(tmp_path / "ledger")
    one = report("--ledger", str(ledger), "--workers", "1", cwd=tmp_path)
    two = report("--ledger", str(ledger), "--workers", "2", cwd=tmp_path)
    assert two == one
    # the same requests in two files read by different processes: still counted once
    write_ledger(tmp_path / "ledger" / "copy", RECORDS[:4])
    three = report("--ledger", str(ledger), "--workers", "2", cwd=tmp_path)
    assert three["requests"] == one["requests"] and three["cost"] == one["cost"]
    assert three["sources"][0]["duplicates"] == 4


# -- sources ------------------------------------------------------------------------------------------------


def test_docker_logs_with_timestamps_and_gateway_log_lines(tmp_path):
    log = tmp_path / "gateway.log"
    log.write_text(docker_logs(RECORDS))
    result = run("--log-file", str(log), "--json", cwd=tmp_path)
    rep = json.loads(result.stdout)
    assert rep["requests"]["total"] == 11
    assert rep["cost"]["total_usd"] == pytest.approx(EXPECTED_COST, rel=1e-9)
    assert rep["sources"][0]["foreign"] == 11 and rep["sources"][0]["malformed"] == 0
    assert "malformed" not in result.stderr
    assert (
        f"note: log-file {log}: skipped 11 line(s) that are not usage records (other log output): "
        f"{log}:1, {log}:3, {log}:5, {log}:7, {log}:9 ..."
    ) in result.stderr


@pytest.mark.parametrize("timestamps", [True, False])
def test_compose_logs_name_the_replica_in_their_prefix(tmp_path, timestamps):
    no_replica = [replace(r, replica=None) for r in RECORDS]
    log = tmp_path / "compose.log"
    log.write_text(compose_logs(no_replica, timestamps))
    rep = report("--log-file", str(log), "--details", cwd=tmp_path)
    assert rep["requests"]["total"] == 11
    assert [row["replica"] for row in rep["requests_detail"][:2]] == ["mlflow-gateway-1", "mlflow-gateway-2"]


def test_stdin_is_a_source(tmp_path):
    rep = report("-", cwd=tmp_path, stdin=compose_logs(RECORDS, timestamps=True))
    assert rep["requests"]["total"] == 11
    assert rep["sources"][0]["source"] == "stdin"


def test_the_same_request_in_several_sources_counts_once(ledger, tmp_path):
    docker = tmp_path / "docker.log"
    docker.write_text(docker_logs(RECORDS[:6]))
    compose = tmp_path / "compose.log"
    compose.write_text(compose_logs(RECORDS[4:], timestamps=False))
    rep = report("--ledger", str(ledger), "--log-file", str(docker), "--log-file", str(compose), cwd=tmp_path)
    assert rep["requests"]["total"] == 11
    assert rep["cost"]["total_usd"] == pytest.approx(EXPECTED_COST, rel=1e-9)
    assert [(s["records"], s["duplicates"]) for s in rep["sources"]] == [(11, 0), (0, 6), (0, 7)]


def test_malformed_lines_are_skipped_and_reported_with_their_line_numbers(tmp_path):
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    good = [r.to_json() for r in RECORDS[:3]]
    path = ledger / "usage-r1-2026-11-21.jsonl"
    path.write_text(
        "\n".join(
            [
                good[0],
                good[1][:57],
                "garbage \x00 line",
                good[2],
                '{"type":"usage","v":1,"ts":"2026-11-21T10:00:00Z","request_id":"bad","prompt_tokens":"many"}',
                "",
            ]
        )
        + "\n"
    )
    result = run("--ledger", str(ledger), cwd=tmp_path)
    assert result.returncode == 0
    assert "Traceback" not in result.stderr
    assert (
        f"analyze_costs.py: warning: ledger {ledger}: skipped 3 malformed line(s): {path}:2, {path}:3, {path}:5"
        in result.stderr
    )
    assert "Total Requests: 2" in result.stdout


def test_a_record_glued_to_a_killed_writers_fragment_is_read_and_the_fragment_reported(tmp_path):
    # A worker SIGKILLed mid-write leaves part of a line; another worker of the replica appends right after it.
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    good = [r.to_json() for r in RECORDS[:4]]
    path = ledger / "usage-r1-2026-11-21.jsonl"
    path.write_text(good[0] + "\n" + good[1][:300] + good[2][:41] + good[3] + "\n")
    rep = report("--ledger", str(ledger), "--details", cwd=tmp_path)
    assert [row["request_id"] for row in rep["requests_detail"]] == [RECORDS[0].request_id, RECORDS[3].request_id]
    assert rep["sources"][0]["malformed"] == 2
    result = run("--ledger", str(ledger), cwd=tmp_path)
    assert f"skipped 2 malformed line(s): {path}:2, {path}:2" in result.stderr


def test_no_usage_data_says_so_and_how_to_produce_some(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("--ledger", str(tmp_path / "empty"), cwd=tmp_path)
    assert result.returncode == 0
    assert "no usage data found" in result.stderr and "evaluate_gateway.py" in result.stderr
    assert "Total Requests: 0" in result.stdout


def results_request(n: int, **fields) -> dict:
    """One request as evaluate_gateway.py writes it (checked against schemas/gateway_results.schema.json)."""
    item = {
        "seq": n,
        "case": f"case-{n}",
        "kind": "chat",
        "endpoint": "chat",
        "route": "/gateway/chat/invocations",
        "path": "/gateway/chat/invocations",
        "stream": False,
        "started_at": f"2026-11-22T10:00:0{n}.000Z",
        "latency_ms": 120.0,
        "status": 200,
        "outcome": "pass",
        "error_class": None,
        "error_side": None,
        "error": None,
        "retry_after": None,
        "failures": [],
        "model": "gpt-4o-mini-2024-07-18",
        "provider": "openai",
        "queue_ms": None,
        "ttft_ms": None,
        "chunks": None,
        "inter_chunk_ms": None,
        "partial": False,
        "prompt_tokens": 100 * (n + 1),
        "completion_tokens": 10 * (n + 1),
        "total_tokens": 110 * (n + 1),
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": None,
        "price_source": None,
        "replica": "mlflow-gateway-1",
        "upstream_addr": "172.18.0.3:8000",
        "request_id": f"eval-run1-{n}",
        "embedding_dims": None,
    }
    item.update(fields)
    for key in list(item):  # follow the schema as it is today: drop what it no longer has
        if key not in SCHEMA["$defs"]["request"]["properties"]:
            del item[key]
    return item


def test_evaluate_gateway_results_file(tmp_path):
    import jsonschema

    requests = [results_request(n) for n in range(3)]
    requests.append(
        results_request(
            3,
            status=None,
            outcome="error",
            error_class="connection_error",
            error_side="network",
            error="refused",
            prompt_tokens=None,
            completion_tokens=None,
            total_tokens=None,
            cached_tokens=None,
            reasoning_tokens=None,
            replica=None,
            upstream_addr=None,
        )
    )
    for item in requests:
        jsonschema.validate(item, {"$ref": "#/$defs/request", "$defs": SCHEMA["$defs"]})
    (tmp_path / "gateway_results.json").write_text(json.dumps({"schema_version": 1, "requests": requests}))
    rep = report("--response-file", "gateway_results.json", cwd=tmp_path)
    assert rep["requests"] == {"total": 4, "ok": 3, "failed": 1, "partial": 0, "refused": 0}
    expected = sum(genai_usd("gpt-4o-mini", "openai", 100 * (n + 1), 10 * (n + 1)) for n in range(3))
    assert rep["cost"]["total_usd"] == pytest.approx(expected, rel=1e-9)
    assert [row["case"] for row in rep["requests_detail"]] == ["case-0", "case-1", "case-2", "case-3"]


SEED_RESULTS = [  # the earlier kit's gateway_results.json: a list of results with the provider's response
    {
        "test_name": "Simple Question",
        "success": True,
        "timestamp": "2026-11-20T08:00:00",
        "response": {
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
        },
        "cost": 0.0001,
    },
    {
        "test_name": "Multi-turn Conversation",
        "success": True,
        "timestamp": "2026-11-20T08:00:05",
        "response": {
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [],
            "usage": {"prompt_tokens": 33, "completion_tokens": 49, "total_tokens": 82},
        },
    },
]


def test_the_earlier_kits_results_file_and_its_model_what_if_still_work(tmp_path):
    (tmp_path / "gateway_results.json").write_text(json.dumps(SEED_RESULTS))
    rep = report("--response-file", "gateway_results.json", cwd=tmp_path)
    assert rep["requests"]["total"] == 2 and rep["tokens"]["total"] == 134
    assert rep["cost"]["total_usd"] == pytest.approx(genai_usd("gpt-4o-mini", "openai", 45, 89), rel=1e-9)
    what_if = report("--response-file", "gateway_results.json", "--model", "gpt-4", cwd=tmp_path)
    assert what_if["cost"]["total_usd"] == pytest.approx(genai_usd("gpt-4", None, 45, 89), rel=1e-9)


# -- docker -------------------------------------------------------------------------------------------------


FAKE_DOCKER = """#!{python}
import os, sys
with open(os.environ["FAKE_DOCKER_ARGV"], "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
mode = os.environ["FAKE_DOCKER_MODE"]
if mode == "no-engine":
    sys.stderr.write("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                     "Is the docker daemon running?\\n")
    sys.exit(1)
if mode == "no-container":
    sys.stderr.write("Error response from daemon: No such container: " + sys.argv[-1] + "\\n")
    sys.exit(1)
if mode == "no-compose" and sys.argv[1] == "compose":
    sys.stderr.write("docker: unknown command: docker compose\\n\\nRun 'docker --help' for more information\\n")
    sys.exit(1)
sys.stdout.write(open(os.environ["FAKE_DOCKER_LOGS"]).read())
sys.stderr.write("[2026-11-22 10:00:00 +0000] [1] [INFO] Listening at: http://0.0.0.0:8000\\n")
"""


@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` on an otherwise empty PATH. Returns (env for a mode, file of the argv it was called with)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker"
    script.write_text(FAKE_DOCKER.format(python=sys.executable))
    script.chmod(0o755)
    argv = tmp_path / "docker-argv.txt"
    logs = tmp_path / "docker-output.txt"

    def env(mode: str, output: str = "") -> dict[str, str]:
        logs.write_text(output)
        return clean_env(
            PATH=str(bin_dir), FAKE_DOCKER_MODE=mode, FAKE_DOCKER_ARGV=str(argv), FAKE_DOCKER_LOGS=str(logs)
        )

    return env, argv


def test_container_logs_are_read_through_docker(tmp_path, fake_docker):
    env, argv = fake_docker
    rep = report("--container", "mlflow-gateway", cwd=tmp_path, env=env("logs", docker_logs(RECORDS)))
    assert rep["requests"]["total"] == 11
    assert rep["cost"]["total_usd"] == pytest.approx(EXPECTED_COST, rel=1e-9)
    assert argv.read_text() == "logs mlflow-gateway\n"


def test_docker_without_an_engine_says_so_and_suggests_the_ledger(tmp_path, fake_docker):
    env, _ = fake_docker
    result = run("--container", "mlflow-gateway", cwd=tmp_path, env=env("no-engine"))
    assert result.returncode == 2
    assert result.stderr.startswith("analyze_costs.py: error: cannot reach the Docker engine (Cannot connect")
    assert "--ledger DIR" in result.stderr and "--log-file FILE" in result.stderr
    assert "Traceback" not in result.stderr


def test_docker_not_installed_says_so(tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = run("--container", "mlflow-gateway", cwd=tmp_path, env=clean_env(PATH=str(empty)))
    assert result.returncode == 2
    assert "analyze_costs.py: error: docker is not installed (no `docker` on PATH) — read the ledger" in result.stderr


def test_a_container_that_does_not_exist_says_so(tmp_path, fake_docker):
    env, _ = fake_docker
    result = run("--container", "nope", cwd=tmp_path, env=env("no-container"))
    assert result.returncode == 2
    assert "container 'nope' does not exist — list them with `docker ps -a`" in result.stderr
    assert "--compose" in result.stderr


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI here")
def test_the_real_docker_cli_failing_gives_the_same_clear_error(tmp_path):
    result = run("--container", f"no-such-container-{uuid.uuid4().hex[:8]}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("analyze_costs.py: error: ")
    assert "--ledger DIR" in result.stderr and "Traceback" not in result.stderr


def test_container_with_no_data_falls_back_to_gateway_results_json_like_the_earlier_kit(tmp_path, fake_docker):
    env, _ = fake_docker
    (tmp_path / "gateway_results.json").write_text(json.dumps(SEED_RESULTS))
    for mode, output in (("no-engine", ""), ("logs", "\n".join(FOREIGN_LINES) + "\n")):
        result = run("--container", "mlflow-gateway", "--json", cwd=tmp_path, env=env(mode, output))
        assert result.returncode == 0, result.stderr
        assert "reading ./gateway_results.json instead" in result.stderr
        assert json.loads(result.stdout)["requests"]["total"] == 2


def test_compose_reads_every_replica_of_the_service(tmp_path, fake_docker):
    env, argv = fake_docker
    (tmp_path / "docker-compose.prod.yml").write_text("services: {}\n")
    rep = report("--compose", cwd=tmp_path, env=env("logs", compose_logs(RECORDS, timestamps=True)))
    assert rep["requests"]["total"] == 11
    assert argv.read_text() == "compose -f docker-compose.prod.yml logs --no-color --timestamps mlflow-gateway\n"


def test_compose_without_the_compose_plugin_says_so(tmp_path, fake_docker):
    env, _ = fake_docker
    result = run("--compose", cwd=tmp_path, env=env("no-compose"))
    assert result.returncode == 2
    assert "`docker compose` is not available" in result.stderr and "--ledger DIR" in result.stderr


# -- plot ---------------------------------------------------------------------------------------------------


def test_plot_draws_cost_over_time_when_matplotlib_is_installed(ledger, tmp_path):
    pytest.importorskip("matplotlib")
    result = run("--ledger", str(ledger), "--plot", "cost.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_install_it(ledger, tmp_path):
    shadow = tmp_path / "shadow"
    (shadow / "matplotlib").mkdir(parents=True)
    (shadow / "matplotlib" / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    result = run("--ledger", str(ledger), "--plot", "cost.png", cwd=tmp_path, env=clean_env(PYTHONPATH=str(shadow)))
    assert result.returncode == 2
    assert (
        "analyze_costs.py: error: --plot needs matplotlib, which is not installed — pip install matplotlib"
        in result.stderr
    )
    assert not (tmp_path / "cost.png").exists()


# -- usage errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no source given — read the gateway's records with --ledger DIR"),
        (["--ledger", "missing-dir"], "ledger directory missing-dir does not exist"),
        (["--response-file", "gateway_results.json"], "run `python3 evaluate_gateway.py` first"),
        (["--log-file", "nope.log"], "log file nope.log does not exist"),
        (["--ledger", ".", "--since", "last tuesday"], "argument --since: 'last tuesday' is not a time"),
        (["--ledger", ".", "--json", "--csv"], "not allowed with argument"),
        (["--ledger", ".", "--budget", "-5"], "must be 0 or more"),
        (["--ledger", ".", "--pricing", "nope.yaml"], "nope.yaml: no such file"),
    ],
)
def test_usage_errors_exit_2_with_one_clear_line(tmp_path, args, message):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "analyze_costs.py: error:" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_pricing_yaml_is_a_usage_error(ledger, tmp_path):
    bad = tmp_path / "pricing.yaml"
    bad.write_text("models:\n  m: {input_mtok: cheap, output_mtok: 1}\n")
    result = run("--ledger", str(ledger), "--pricing", str(bad), cwd=tmp_path)
    assert result.returncode == 2
    assert f"{bad}: models.m.input_mtok: expected a number" in result.stderr


def test_a_json_file_that_is_not_results_is_a_usage_error(tmp_path):
    (tmp_path / "other.json").write_text('{"hello": "world"}')
    result = run("--response-file", "other.json", cwd=tmp_path)
    assert result.returncode == 2 and "is JSON but not a results file" in result.stderr


def test_help_shows_examples_and_exit_codes(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Exit codes: 0 report written, 1 total cost above --budget, 2 usage error" in " ".join(result.stdout.split())


def test_no_source_reads_the_ledger_named_by_the_environment(ledger, tmp_path):
    result = run("--json", cwd=tmp_path, env=clean_env(GATEWAY_LEDGER_DIR=str(ledger)))
    assert result.returncode == 0
    assert "no source given; reading the ledger at" in result.stderr
    assert json.loads(result.stdout)["requests"]["total"] == 11


def test_the_module_docstring_examples_name_every_source():
    doc = costs.__doc__
    for flag in (
        "--ledger",
        "--compose",
        "--container",
        "--response-file",
        "--log-file",
        "--budget",
        "--model",
        "--plot",
        "--json",
    ):
        assert flag in doc


def cache_records() -> list[UsageRecord]:
    """A stored miss and three hits of the response cache (gateway_kit.cache), two clients, two endpoints; the
    last hit as an older writer might leave it, without saved_usd (priced now)."""
    model, p, c = "gpt-4o-mini-2024-07-18", 1000, 200
    usd = genai_usd(model, "openai", p, c)
    base = dict(route="/gateway/chat/invocations", provider="openai", model=model, status=200, prompt_tokens=p)
    base.update(completion_tokens=c, total_tokens=p + c, replica="r", price_source="genai-prices")
    return [
        UsageRecord(
            "2026-11-22T10:00:00.000Z", "m1", endpoint="chat", client="team-a", cost_usd=usd, cache="miss", **base
        ),
        UsageRecord(
            "2026-11-22T10:00:01.000Z",
            "h1",
            endpoint="chat",
            client="team-a",
            cost_usd=0.0,
            cache="hit",
            saved_usd=usd,
            **base,
        ),
        UsageRecord(
            "2026-11-22T10:00:02.000Z",
            "h2",
            endpoint="chat",
            client="team-b",
            cost_usd=0.0,
            cache="hit",
            saved_usd=usd,
            **base,
        ),
        UsageRecord(
            "2026-11-22T10:00:03.000Z", "h3", endpoint="faq", client="team-b", cost_usd=0.0, cache="hit", **base
        ),
    ]


def test_cache_hits_cost_nothing_and_the_savings_are_shown_by_endpoint_and_client(tmp_path):
    records = cache_records()
    usd = records[0].cost_usd
    ledger = write_ledger(tmp_path / "ledger", records)
    report = json.loads(run("--ledger", str(ledger), "--json", cwd=tmp_path).stdout)
    assert report["cost"]["total_usd"] == pytest.approx(usd)
    assert report["cache"] == {"hits": 3, "saved_usd": pytest.approx(3 * usd)}
    endpoints = {r["key"]: (r["cache_hits"], r["saved_usd"]) for r in report["by_endpoint"]}
    assert endpoints == {"chat": (2, pytest.approx(2 * usd)), "faq": (1, pytest.approx(usd))}
    clients = {r["key"]: (r["cache_hits"], r["saved_usd"]) for r in report["by_client"]}
    assert clients == {"team-a": (1, pytest.approx(usd)), "team-b": (2, pytest.approx(2 * usd))}

    what_if = json.loads(run("--ledger", str(ledger), "--json", "--model", "gpt-4o", cwd=tmp_path).stdout)
    assert what_if["cost"]["total_usd"] == pytest.approx(genai_usd("gpt-4o", None, 1000, 200))  # hits stay $0
    assert what_if["cache"]["saved_usd"] == pytest.approx(3 * genai_usd("gpt-4o", None, 1000, 200))

    text = run("--ledger", str(ledger), cwd=tmp_path).stdout
    section = text.split("Response cache", 1)[1]
    assert f"Hits: 3 of 4 requests, saved {costs.usd(3 * usd)}" in section
    assert "Saved by endpoint" in section and "Saved by client" in section
    assert "Response cache" not in run("--ledger", str(write_ledger(tmp_path / "plain")), cwd=tmp_path).stdout
