"""The OTLP export of one span per request to a real OTLP/HTTP receiver (gateway_kit/otlp_receiver.py), from a
stack of its own with 2 replicas behind nginx.

A module of its own, apart from test_traces.py: its stack takes the shared stack's ports while this module runs
(own_stack), so no test of the shared stack may run in between, in any order.
"""

from __future__ import annotations

import time

import pytest
from gateway_kit.otlp_receiver import attributes, running_receiver

from conftest import own_stack

from .test_traces import CALLER, CALLER_SPAN, CALLER_TRACE, SECRET_WORDS, arrived, chat, records_of

pytestmark = [pytest.mark.integration]


# ------------------------------------------------------------------------------------------- export on
@pytest.fixture(scope="module")
def exporting(tmp_path_factory):
    """A stack of its own (2 replicas) exporting to a receiver: (stack, receiver)."""
    with running_receiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base_url, "OTEL_SERVICE_NAME": "gateway-under-test"}
        with own_stack(tmp_path_factory.mktemp("traces"), "--replicas", "2", "--workers", "1", env=env) as stack:
            yield stack, receiver


def spans_of(receiver, trace_id: str, count: int = 1) -> list:
    deadline = time.monotonic() + 30
    while True:
        found = [s for s in receiver.spans() if s.trace_id.hex() == trace_id]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.stack
def test_a_request_with_a_traceparent_is_exported_as_a_child_span_of_the_callers(exporting):
    stack, receiver = exporting
    r = chat(stack.url, {"traceparent": CALLER, "tracestate": "vendor=abc"})
    (span,) = spans_of(receiver, CALLER_TRACE)
    assert span.parent_span_id.hex() == CALLER_SPAN and span.trace_state == "vendor=abc"
    # The provider's parent is the gateway's span: the three make one tree.
    assert arrived(stack.fake_url, CALLER_TRACE)[-1] == {
        "traceparent": f"00-{CALLER_TRACE}-{span.span_id.hex()}-01",
        "tracestate": "vendor=abc",
    }
    (record,) = records_of(stack, r.headers["X-Request-ID"])
    assert record["trace_id"] == CALLER_TRACE
    span_attributes = attributes(span)
    assert span.name == "chat chat"
    assert {k: v for k, v in span_attributes.items() if k.startswith("gen_ai.")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": record["model"],
        "gen_ai.usage.input_tokens": record["prompt_tokens"],
        "gen_ai.usage.output_tokens": record["completion_tokens"],
    }
    assert span_attributes["gateway.endpoint"] == "chat"
    assert span_attributes["gateway.cost_usd"] == record["cost_usd"]
    assert span_attributes["gateway.request_id"] == record["request_id"]
    assert span_attributes["http.response.status_code"] == 200


@pytest.mark.stack
def test_without_a_traceparent_the_exported_span_is_the_traces_root(exporting):
    stack, receiver = exporting
    r = chat(stack.url, stream=True)
    (record,) = records_of(stack, r.headers["X-Request-ID"])
    (span,) = spans_of(receiver, record["trace_id"])
    assert span.parent_span_id == b""
    assert attributes(span)["gateway.stream"] is True
    (provider_call,) = arrived(stack.fake_url, record["trace_id"])
    assert provider_call["traceparent"] == f"00-{record['trace_id']}-{span.span_id.hex()}-01"


@pytest.mark.stack
def test_every_replica_exports_and_no_prompt_or_answer_is_in_a_span(exporting):
    stack, receiver = exporting
    trace_ids = [records_of(stack, chat(stack.url).headers["X-Request-ID"])[0]["trace_id"] for _ in range(6)]
    for trace_id in trace_ids:
        assert spans_of(receiver, trace_id)
    replicas = {attributes(resource)["service.instance.id"] for resource in receiver.resources()}
    assert replicas == {"gateway-1", "gateway-2"}
    assert {attributes(resource)["service.name"] for resource in receiver.resources()} == {"gateway-under-test"}
    assert not any(SECRET_WORDS.encode() in body for body in receiver.bodies)
