"""W3C trace context through nginx to the provider and the usage record's trace_id, with 2 replicas behind nginx (the
OTLP export: test_trace_export.py)."""

from __future__ import annotations

import json
import time
import uuid

import anthropic
import openai
import pytest
import requests

from conftest import free_port, start_replica, stop_group

pytestmark = [pytest.mark.integration]

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
SECRET_WORDS = "purple-elephant-umbrella"  # in every prompt, and so in every answer: never in a span


def records_of(stack, request_id: str, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [
            record
            for path in sorted((stack.state_dir / "ledger").glob("usage-*.jsonl"))
            for record in map(json.loads, path.read_text().splitlines())
            if record["request_id"] == request_id
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def chat(url: str, headers: dict[str, str] | None = None, stream: bool = False) -> requests.Response:
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    body = {"messages": [{"role": "user", "content": f"say {SECRET_WORDS}"}], "stream": stream}
    r = requests.post(
        f"{url}/gateway/chat/invocations",
        json=body,
        headers={"X-Request-ID": request_id, **(headers or {})},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r


def arrived(fake_url: str, trace_id: str) -> list[dict]:
    """The trace headers of the provider calls of `trace_id` (the fake upstream keeps the last 100)."""
    headers = requests.get(f"{fake_url}/_fake/stats", timeout=5).json()["trace_headers"]
    return [h for h in headers if h["traceparent"].split("-")[1] == trace_id]


# ------------------------------------------------------------------------------------------- export off
@pytest.mark.stack
def test_the_callers_traceparent_reaches_the_provider_and_the_record(stack):
    r = chat(stack.url, {"traceparent": CALLER, "tracestate": "vendor=abc"})
    (record,) = records_of(stack, r.headers["X-Request-ID"])
    assert record["trace_id"] == CALLER_TRACE
    # No export: the caller's span is the provider call's parent, as the caller sent it.
    assert arrived(stack.fake_url, CALLER_TRACE)[-1] == {"traceparent": CALLER, "tracestate": "vendor=abc"}


@pytest.mark.stack
def test_without_a_traceparent_the_gateway_starts_a_trace_and_records_it(stack):
    r = chat(stack.url)
    (record,) = records_of(stack, r.headers["X-Request-ID"])
    trace_id = record["trace_id"]
    assert len(trace_id) == 32 and trace_id != CALLER_TRACE
    (provider_call,) = arrived(stack.fake_url, trace_id)
    assert provider_call["tracestate"] is None


@pytest.mark.stack
def test_the_official_sdks_traceparent_reaches_the_provider_on_every_route(stack):
    """An instrumented client (the openai and anthropic SDKs, a traceparent per call) is linked on each of the
    /v1 routes: chat, Responses and Messages (served as chat)."""
    gpt = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
    claude = anthropic.Anthropic(base_url=stack.url, api_key="unused", max_retries=0)
    calls = {
        "chat": lambda h: gpt.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}], extra_headers=h
        ),
        "responses": lambda h: gpt.responses.with_raw_response.create(model="chat", input="hi", extra_headers=h),
        "messages": lambda h: claude.messages.with_raw_response.create(
            model="chat", max_tokens=32, messages=[{"role": "user", "content": "hi"}], extra_headers=h
        ),
    }
    for name, call in calls.items():
        trace = uuid.uuid4().hex
        raw = call({"traceparent": f"00-{trace}-{CALLER_SPAN}-01"})
        (record,) = records_of(stack, raw.headers["x-request-id"])
        assert record["trace_id"] == trace, name
        assert [h["traceparent"] for h in arrived(stack.fake_url, trace)] == [f"00-{trace}-{CALLER_SPAN}-01"], name


@pytest.mark.integration
def test_mlflows_own_client_sends_the_trace_headers_too(fake_upstream, tmp_path):
    """GATEWAY_SHARED_UPSTREAM_CLIENT=off: MLflow's per-call client, wrapped to send them."""
    port = free_port()
    gateway = start_replica(
        tmp_path,
        port,
        GATEWAY_DEMO_UPSTREAM=fake_upstream,
        GATEWAY_SHARED_UPSTREAM_CLIENT="off",
        GATEWAY_LEDGER_DIR="off",
    )
    try:
        chat(f"http://127.0.0.1:{port}", {"traceparent": CALLER})
        assert arrived(fake_upstream, CALLER_TRACE)[-1]["traceparent"] == CALLER
    finally:
        stop_group(gateway.pid)
