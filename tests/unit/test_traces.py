"""W3C trace context (gateway_kit.traces, app.RequestContext) and the OTLP span export, against a real
OTLP/HTTP receiver on loopback (gateway_kit/otlp_receiver.py)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import pytest
from gateway_kit.otlp_receiver import attributes, running_receiver

from gateway_kit import traces, upstream
from gateway_kit.app import RequestContext
from gateway_kit.request import TRACE
from gateway_kit.settings import Settings, SettingsError, TraceExport
from gateway_kit.usage import UsageRecord

from .asgi import Echo, request

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
CONFIG = {
    "endpoints": [
        {"name": "chat", "endpoint_type": "llm/v1/chat", "model": {"provider": "openai", "name": "gpt-4o-mini"}},
        {"name": "embed", "endpoint_type": "llm/v1/embeddings", "model": {"provider": "openai", "name": "te-3"}},
    ]
}


# ------------------------------------------------------------------------------------------- traceparent
@pytest.mark.parametrize(
    "value",
    [
        CALLER,
        f"00-{CALLER_TRACE}-{CALLER_SPAN}-00",  # not sampled: still a valid context
        f"01-{CALLER_TRACE}-{CALLER_SPAN}-01-what-a-later-version-adds",
        f"cc-{CALLER_TRACE}-{CALLER_SPAN}-01",  # a later version without more fields
    ],
)
def test_a_valid_traceparent_is_read(value):
    trace_id, parent, flags = traces.parse_traceparent(value.encode())
    assert (trace_id, parent) == (CALLER_TRACE.encode(), CALLER_SPAN.encode())
    assert flags in (0, 1)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        CALLER.upper(),  # hex must be lower case
        f"00-{'0' * 32}-{CALLER_SPAN}-01",  # an all-zero trace id
        f"00-{CALLER_TRACE}-{'0' * 16}-01",  # an all-zero parent
        f"ff-{CALLER_TRACE}-{CALLER_SPAN}-01",  # version ff is invalid
        f"00-{CALLER_TRACE}-{CALLER_SPAN}-01-more",  # version 00 has exactly four fields
        f"00-{CALLER_TRACE[:-1]}-{CALLER_SPAN}-01",
        f"00-{CALLER_TRACE}-{CALLER_SPAN}-1",
    ],
)
def test_an_invalid_traceparent_is_ignored(value):
    assert traces.parse_traceparent(value.encode()) is None


def test_without_export_the_callers_traceparent_and_tracestate_go_on_unchanged():
    trace = traces.start(CALLER.encode(), b"vendor=abc,other=1", exporting=False)
    assert (trace.trace_id, trace.parent_id, trace.exported) == (CALLER_TRACE, CALLER_SPAN, False)
    assert trace.headers() == {"traceparent": CALLER, "tracestate": "vendor=abc,other=1"}


def test_with_export_the_gateways_span_is_the_providers_parent():
    trace = traces.start(CALLER.encode(), b"", exporting=True)
    assert trace.exported and trace.parent_id == CALLER_SPAN
    assert len(trace.span_id) == 16 and trace.span_id != CALLER_SPAN
    assert trace.headers() == {"traceparent": f"00-{CALLER_TRACE}-{trace.span_id}-01"}


def test_a_trace_the_caller_did_not_sample_is_not_exported():
    not_sampled = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
    trace = traces.start(not_sampled.encode(), b"", exporting=True)
    assert not trace.exported
    assert trace.headers() == {"traceparent": not_sampled}


@pytest.mark.parametrize("exporting", [False, True])
def test_without_a_valid_traceparent_the_gateway_starts_a_trace_and_drops_tracestate(exporting):
    one = traces.start(b"not-a-traceparent", b"vendor=abc", exporting=exporting)
    two = traces.start(b"", b"", exporting=exporting)
    assert one.trace_id != two.trace_id and len(one.trace_id) == 32 and one.parent_id is None
    assert one.headers() == {"traceparent": f"00-{one.trace_id}-{one.span_id}-{'01' if exporting else '00'}"}
    assert one.exported is exporting


def test_the_request_id_middleware_puts_the_trace_in_the_state_and_the_context():
    seen = []

    async def app(scope, receive, send):
        seen.append((scope["state"][TRACE], traces.CURRENT.get()))
        await Echo()(scope, receive, send)

    answer = request(RequestContext(app, "r1"), "/v1/chat/completions", headers={"traceparent": CALLER})
    assert answer.status == 200
    ((in_state, in_context),) = seen
    assert in_state is in_context and in_state.trace_id == CALLER_TRACE


def test_both_provider_clients_send_the_trace_headers(monkeypatch):
    """MLflow's own client (GATEWAY_SHARED_UPSTREAM_CLIENT=off) is wrapped; the shared one adds them itself
    (tests/stack/test_traces.py sees them arrive)."""
    from mlflow.gateway.providers import utils

    sent = []

    @asynccontextmanager
    async def mlflows_post(headers, base_url, path, payload, *, ssrf_protect=True):
        sent.append(headers)
        yield type("Response", (), {"status": 200})()

    monkeypatch.setattr(utils, "_aiohttp_post", mlflows_post)
    assert upstream.time_calls(upstream.NOBODY)

    async def call():
        traces.CURRENT.set(traces.start(CALLER.encode(), b"k=v", exporting=False))
        async with utils._aiohttp_post({"Authorization": "Bearer x"}, "http://p", "/chat", {}):
            pass

    asyncio.run(call())
    assert sent == [{"Authorization": "Bearer x", "traceparent": CALLER, "tracestate": "k=v"}]


# ------------------------------------------------------------------------------------------- settings
def test_export_is_off_unless_an_endpoint_is_set():
    assert Settings.from_env({}).trace_export is None
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    assert Settings.from_env(on).trace_export.url == "http://collector:4318/v1/traces"
    assert Settings.from_env({**on, "OTEL_TRACES_EXPORTER": "none"}).trace_export is None
    assert Settings.from_env({**on, "OTEL_SDK_DISABLED": "true"}).trace_export is None


def test_the_traces_variables_win_over_the_general_ones():
    export = Settings.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://all:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/otlp/spans",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-all=1",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "api-key=a%20b, x-team=ml",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_SERVICE_NAME": "gw",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=ignored",
        }
    ).trace_export
    assert export == TraceExport(
        url="https://traces.example/otlp/spans",  # as given: no path added
        headers=(("api-key", "a b"), ("x-team", "ml")),
        timeout=2.5,
        gzip=True,
        resource=(("service.name", "gw"), ("deployment.environment", "prod")),
    )


@pytest.mark.parametrize(
    "variables",
    [
        {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "soon"},
        {"OTEL_EXPORTER_OTLP_COMPRESSION": "br"},
        {"OTEL_EXPORTER_OTLP_HEADERS": "no-equals-sign"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
    ],
)
def test_a_value_the_export_cannot_use_is_an_error_naming_the_variable(variables):
    with pytest.raises(SettingsError) as error:
        Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", **variables})
    assert error.value.name == next(iter(variables))


# ------------------------------------------------------------------------------------------- the export
def record(**fields) -> UsageRecord:
    values = dict(
        ts="2026-11-22T10:00:00.000Z",
        request_id="req-1",
        route="/gateway/chat/invocations",
        endpoint="chat",
        provider="openai",
        model="gpt-4o-mini-2024-07-18",
        status=200,
        latency_ms=120.0,
        prompt_tokens=12,
        completion_tokens=7,
        total_tokens=19,
        client="team-a",
        replica="r1",
        cost_usd=0.0000123,
        price_source="genai-prices",
        trace_id=CALLER_TRACE,
        content={"prompt": "SECRET PROMPT", "answer": "SECRET ANSWER"},  # never exported
    )
    values.update(fields)
    return UsageRecord(**values)


def export_in_request(exporter: traces.Exporter, traceparent: str, *records: UsageRecord) -> traces.Trace:
    """What a request does: its trace in the context, then its record to the listener."""
    trace = traces.start(traceparent.encode(), b"", exporting=True)
    token = traces.CURRENT.set(trace)
    try:
        for r in records:
            exporter.usage_recorded(r)
    finally:
        traces.CURRENT.reset(token)
    return trace


def test_a_span_per_record_with_the_genai_attributes_and_no_content():
    with running_receiver() as receiver:
        export = TraceExport(receiver.url, headers=(("x-api-key", "k"),), resource=(("service.name", "gw"),))
        exporter = traces.Exporter(export, CONFIG, "r1")
        trace = export_in_request(exporter, CALLER, record())
        exporter.flush()
        (span,) = receiver.spans()
        assert receiver.headers[-1]["x-api-key"] == "k"
    assert span.trace_id.hex() == CALLER_TRACE
    assert span.parent_span_id.hex() == CALLER_SPAN
    assert span.span_id.hex() == trace.span_id
    assert span.name == "chat chat" and span.kind == 2  # SERVER
    assert span.end_time_unix_nano - span.start_time_unix_nano == 120_000_000
    assert attributes(span) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 7,
        "http.response.status_code": 200,
        "url.path": "/gateway/chat/invocations",
        "gateway.endpoint": "chat",
        "gateway.client": "team-a",
        "gateway.request_id": "req-1",
        "gateway.cost_usd": 0.0000123,
    }
    assert b"SECRET" not in receiver.bodies[-1]
    assert attributes(receiver.resources()[-1]) == {"service.name": "gw", "service.instance.id": "r1"}


def test_the_operation_comes_from_the_route_or_the_endpoints_type():
    with running_receiver() as receiver:
        exporter = traces.Exporter(TraceExport(receiver.url, gzip=True), CONFIG, "r1")
        export_in_request(
            exporter,
            CALLER,
            record(route="/v1/embeddings", endpoint="embed"),
            record(route="/gateway/embed/invocations", endpoint="embed"),
            record(route="/v1/completions", endpoint=None, status=401, error="refused:gateway_key_required"),
            record(status=502, error="upstream_unreachable"),
            record(stream=True, partial=True, error="stream_cut", ttft_ms=80.0, cached_tokens=4),
        )
        exporter.flush()
        spans = receiver.spans()
    assert [s.name for s in spans] == [
        "embeddings embed",
        "embeddings embed",
        "text_completion",
        "chat chat",
        "chat chat",
    ]
    assert [s.status.code for s in spans] == [0, 0, 0, 2, 2]  # a 5xx or a cut stream is an error; a 4xx is not
    assert attributes(spans[2])["error.type"] == "refused:gateway_key_required"
    cut = attributes(spans[4])
    assert (cut["gateway.stream"], cut["gateway.partial"], cut["gateway.ttft_ms"]) == (True, True, 80.0)
    assert cut["gateway.cached_tokens"] == 4 and "gateway.reasoning_tokens" not in cut


def test_spans_of_one_endpoint_share_a_template_and_keep_their_own_values():
    with running_receiver() as receiver:
        exporter = traces.Exporter(TraceExport(receiver.url), CONFIG, "r1")
        one = export_in_request(exporter, CALLER, record(request_id="a", prompt_tokens=1))
        two = export_in_request(exporter, "", record(request_id="b", prompt_tokens=2))
        exporter.flush()
        first, second = receiver.spans()
    assert len(exporter.templates) == 1
    assert (first.span_id.hex(), second.span_id.hex()) == (one.span_id, two.span_id)
    assert second.parent_span_id == b"" and second.trace_id.hex() == two.trace_id
    assert [attributes(s)["gateway.request_id"] for s in (first, second)] == ["a", "b"]
    assert [attributes(s)["gen_ai.usage.input_tokens"] for s in (first, second)] == [1, 2]
    assert attributes(first).keys() == attributes(second).keys()


def test_a_full_queue_drops_spans_and_counts_them(monkeypatch):
    monkeypatch.setattr(traces, "QUEUE", 3)
    exporter = traces.Exporter(TraceExport("http://127.0.0.1:9/v1/traces"), CONFIG, "r1")
    monkeypatch.setattr(exporter, "start", lambda: None)  # no thread: the queue only fills
    export_in_request(exporter, CALLER, *[record()] * 5)
    assert (len(exporter.queue), exporter.dropped) == (3, 2)


def test_a_collector_that_is_down_is_logged_once_and_its_spans_counted(caplog):
    from conftest import free_port

    exporter = traces.Exporter(TraceExport(f"http://127.0.0.1:{free_port()}/v1/traces", timeout=2), CONFIG, "r1")
    with caplog.at_level(logging.WARNING, logger="gateway_kit.traces"):
        for _ in range(3):
            export_in_request(exporter, CALLER, record())
            exporter.flush()
    assert exporter.failed == 3
    assert len(caplog.records) == 1 and "did not take" in caplog.text


def test_a_stopping_worker_gives_up_on_a_collector_that_is_down_after_one_batch(monkeypatch):
    from conftest import free_port

    monkeypatch.setattr(traces, "BATCH", 2)
    exporter = traces.Exporter(TraceExport(f"http://127.0.0.1:{free_port()}/v1/traces", timeout=2), CONFIG, "r1")
    monkeypatch.setattr(exporter, "start", lambda: None)
    export_in_request(exporter, CALLER, *[record()] * 5)
    sent = []
    monkeypatch.setattr(exporter, "send", lambda batch: sent.append(len(batch)) and False)
    exporter.flush(at_exit=True)
    assert sent == [2] and exporter.failed == 3 and not exporter.queue  # one try; the 3 left counted as failed


def test_a_cache_hit_says_so_and_what_it_saved_and_a_translated_request_its_api():
    with running_receiver() as receiver:
        exporter = traces.Exporter(TraceExport(receiver.url), CONFIG, "r1")
        export_in_request(
            exporter,
            CALLER,
            record(route="/v1/chat/completions", cost_usd=0.0, cache="hit", saved_usd=1e-5, api="messages"),
        )
        exporter.flush()
        (span,) = receiver.spans()
    hit = attributes(span)
    assert (hit["gateway.cache"], hit["gateway.saved_usd"], hit["gateway.cost_usd"]) == ("hit", 1e-5, 0.0)
    assert hit["gateway.api"] == "messages" and hit["gen_ai.operation.name"] == "chat"


def test_nothing_is_queued_for_a_trace_the_caller_did_not_sample():
    exporter = traces.Exporter(TraceExport("http://127.0.0.1:9/v1/traces"), CONFIG, "r1")
    export_in_request(exporter, f"00-{CALLER_TRACE}-{CALLER_SPAN}-00", record())
    assert not exporter.queue


def test_metrics_count_the_spans_not_exported():
    from gateway_kit.metrics import Metrics

    exporter = traces.Exporter(TraceExport("http://127.0.0.1:9/v1/traces"), CONFIG, "r1")
    metrics = Metrics(CONFIG, "r1", spans=exporter)
    exporter.dropped, exporter.failed = 2, 5
    metrics.batch.write()
    exporter.failed = 7
    metrics.batch.write()

    def dropped(reason: str) -> float:
        return metrics.registry.get_sample_value("gateway_trace_spans_dropped_total", {"reason": reason})

    assert (dropped("queue_full"), dropped("export_failed")) == (2, 7)
