"""Every request through the gateway leaves exactly one usage record, on stdout and in the ledger."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
import requests

from conftest import free_port, start_replica, stop_group

pytestmark = [pytest.mark.integration]


def ledger_records(stack) -> list[dict]:
    lines = []
    for path in sorted((stack.state_dir / "ledger").glob("usage-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def records_of(stack, request_id: str, expect: int = 1, timeout: float = 5) -> list[dict]:
    """The ledger's records of one request, waiting briefly for a stream's record to be written."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in ledger_records(stack) if r["request_id"] == request_id]
        if len(found) >= expect or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def post(stack, content: str, endpoint: str = "chat", stream: bool = False, **kwargs) -> tuple[str, requests.Response]:
    request_id = f"usage-{uuid.uuid4().hex[:12]}"
    body = {"messages": [{"role": "user", "content": content}], "stream": stream}
    r = requests.post(
        f"{stack.url}/gateway/{endpoint}/invocations",
        json=body,
        stream=stream,
        timeout=30,
        headers={"X-Request-ID": request_id},
        **kwargs,
    )
    return request_id, r


@pytest.mark.stack
def test_a_plain_answer_leaves_one_record_with_its_tokens_and_cost(stack):
    request_id, r = post(stack, "What does a gateway cost?")
    (record,) = records_of(stack, request_id)
    usage = r.json()["usage"]
    assert (record["prompt_tokens"], record["completion_tokens"], record["total_tokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["total_tokens"],
    )
    assert record["endpoint"] == "chat" and record["provider"] == "openai" and record["model"] == "gpt-4o-mini"
    assert record["status"] == 200 and record["replica"] == r.headers["X-Gateway-Replica"]
    assert record["cost_usd"] > 0 and record["price_source"].startswith("genai-prices")
    assert record["stream"] is False and record["partial"] is False
    # The same line went to the replica's stdout, which `docker logs` carries.
    replica_log = stack.log("replica-" + record["replica"].split("-")[1])
    assert any(json.loads(line) == record for line in replica_log.splitlines() if request_id in line)


@pytest.mark.stack
def test_v1_routes_are_recorded_under_the_endpoint_named_by_model(stack):
    request_id = f"usage-{uuid.uuid4().hex[:12]}"
    r = requests.post(
        f"{stack.url}/v1/embeddings",
        json={"model": "embeddings", "input": ["a", "b c"]},
        headers={"X-Request-ID": request_id},
        timeout=30,
    )
    (record,) = records_of(stack, request_id)
    assert record["route"] == "/v1/embeddings" and record["endpoint"] == "embeddings"
    assert record["prompt_tokens"] == r.json()["usage"]["prompt_tokens"] > 0


@pytest.mark.stack
def test_a_stream_leaves_one_record_with_its_final_usage(stack):
    request_id, r = post(stack, "[[chunk_delay:50]] stream this please", endpoint="anthropic-chat", stream=True)
    events = [line for line in r.iter_lines() if line.startswith(b"data:")]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(line[5:]) for line in events[:-1]]
    (record,) = records_of(stack, request_id)
    assert record["stream"] is True and record["partial"] is False and record["error"] is None
    assert record["completion_tokens"] == chunks[-1]["usage"]["completion_tokens"] > 0
    assert record["model"] == "claude-3-5-haiku-latest" and record["provider"] == "anthropic"
    assert 0 < record["ttft_ms"] < record["latency_ms"]


@pytest.mark.stack
def test_a_stream_cut_by_the_upstream_is_recorded_as_partial(stack):
    request_id, r = post(stack, "[[fault:truncate]] one two three four five six", stream=True)
    events = [line for line in r.iter_lines() if line.startswith(b"data:")]
    assert b'"error"' in events[-1]  # the gateway ends a broken stream with an error event (docs/resilience.md)
    (record,) = records_of(stack, request_id)
    assert record["partial"] is True and record["error"] == "stream_cut"


@pytest.mark.stack
def test_a_stream_the_client_walks_away_from_is_recorded_as_partial(stack):
    request_id, r = post(stack, "[[chunk_delay:200]] a b c d e f g h i j", stream=True)
    next(line for line in r.iter_lines() if line.startswith(b"data:"))
    r.close()
    (record,) = records_of(stack, request_id, timeout=10)
    assert record["partial"] is True and record["error"] == "client_disconnected"


@pytest.mark.stack
def test_an_upstream_error_leaves_one_record_with_its_status(stack):
    request_id, r = post(stack, "[[fault:500]]")
    assert r.status_code == 500
    (record,) = records_of(stack, request_id)
    assert record["status"] == 500 and record["error"] == "http_500" and record["total_tokens"] == 0
    assert record["cost_usd"] == 0


@pytest.mark.stack
def test_ledger_keeps_every_record_once_across_a_replica_restart(stack):
    before = [post(stack, f"before restart {i}")[0] for i in range(10)]
    stack.run("scale", "1")
    stack.scale(2)  # replica 2 is a new process appending to the same day's file
    after = [post(stack, f"after restart {i}")[0] for i in range(10)]
    time.sleep(0.5)
    ids = [r["request_id"] for r in ledger_records(stack)]
    assert all(ids.count(i) == 1 for i in before + after)


def test_an_unwritable_ledger_never_fails_a_request_and_is_reported_once(tmp_path, fake_upstream):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the ledger directory should be")
    port = free_port()
    log = tmp_path / "gateway.log"
    proc = start_replica(
        tmp_path,
        port,
        log=log,
        timeout=60,
        GATEWAY_LEDGER_DIR=str(blocked / "ledger"),
        GATEWAY_DEMO_UPSTREAM=fake_upstream,
    )
    try:
        body = {"messages": [{"role": "user", "content": "hi"}]}
        statuses = [
            requests.post(f"http://127.0.0.1:{port}/gateway/chat/invocations", json=body, timeout=10).status_code
            for _ in range(5)
        ]
    finally:
        stop_group(proc.pid)
    assert statuses == [200] * 5
    text = log.read_text()
    assert text.count("usage ledger: cannot write") == 1
    assert text.count('"type":"usage"') == 5  # still on stdout
    assert not os.path.exists(blocked / "ledger")
