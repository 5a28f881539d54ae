"""Traces: W3C trace context on every request, and optional OTLP export of one span per request.

Trace context (always on)
    The request id middleware (gateway_kit.app.RequestContext) starts each request's `Trace` (`start`): with a
    valid `traceparent` from the client, its trace id and span as parent (its `tracestate` kept); without one,
    or with an invalid one (W3C: then `tracestate` is dropped too), a new trace id. The trace is in the scope
    state (request.TRACE: the usage record's `trace_id`) and in the contextvar CURRENT, where the provider
    client (gateway_kit.upstream, both the shared client and MLflow's own) finds the headers to send on.

    What the provider gets: with export off, the client's traceparent as it came (its span is the provider
    call's parent), or for a trace the gateway started `00-<new trace id>-<new span id>-00`. With export on and
    the trace sampled, the gateway's own span (the one it exports) is the parent: `00-<trace id>-<gateway span
    id>-<flags>`. `tracestate` is passed on unchanged.

OTLP export (off unless an OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set: settings.trace_export_from)
    `Exporter` is a listener of the worker's events (gateway_kit.events): from each usage record (refusals'
    too) it makes one span, SERVER kind, named `<gen_ai.operation.name> <endpoint>`, with the OpenTelemetry
    GenAI attributes and the kit's own (SPAN_ATTRIBUTES in docs/observability.md). Never prompt or answer text:
    the record has none. Spans of traces the client marked not sampled (flags 00) are not exported.

    On the request's path a span costs a deque append: a thread of the worker encodes the spans as OTLP protobuf
    (opentelemetry-proto) and POSTs them in batches of up to BATCH spans, every DELAY seconds or sooner when a
    batch is full. The queue holds at most QUEUE spans: past that a span is dropped and counted (`dropped`); a
    batch the collector did not take is dropped and counted (`failed`), never retried; metrics show both
    (gateway_trace_spans_dropped_total). A collector that cannot be reached is logged once, and once again
    when it answers again. Export never slows or fails a request.
"""

from __future__ import annotations

import atexit
import contextvars
import gzip
import logging
import random
import re
import threading
import time
import urllib.request
from collections import deque
from dataclasses import dataclass

from gateway_kit import __version__
from gateway_kit.events import Listener
from gateway_kit.request import V1_ENDPOINT_TYPES
from gateway_kit.settings import TraceExport

log = logging.getLogger("gateway_kit.traces")

# version-traceid-parentid-flags, lower-case hex (W3C Trace Context level 1). A later version may add fields
# after a dash: its first four are read as version 00's.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = b"0" * 32, b"0" * 16
# Ids as OpenTelemetry's SDK makes them (RandomIdGenerator): random, not secret; the random module is seeded
# again in each forked worker. An all-zero id, which is invalid, has a chance of 2**-128 (2**-64 for a span).
_random_bits = random.getrandbits
SAMPLED = 0x01


@dataclass(slots=True)
class Trace:
    """One request's place in a trace."""

    trace_id: str  # 32 hex digits: the caller's, or new
    span_id: str  # 16 hex digits: the gateway's span (exported when `exported`)
    parent_id: str | None  # the caller's span, None when the gateway started the trace
    flags: int  # the caller's trace flags (SAMPLED), or the gateway's own
    tracestate: str | None  # passed on as it came
    traceparent: str  # what the provider call carries
    exported: bool  # a span of this request goes to the collector

    def headers(self) -> dict[str, str]:
        """The trace headers of the provider call."""
        if self.tracestate is None:
            return {"traceparent": self.traceparent}
        return {"traceparent": self.traceparent, "tracestate": self.tracestate}


CURRENT: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("gateway_kit_trace", default=None)


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, int] | None:
    """(trace id, parent span id, flags) of a valid traceparent header, else None."""
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        return None
    version, trace_id, parent_id, flags, more = m.groups()
    if version == b"ff" or (version == b"00" and more) or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, int(flags, 16)


def start(traceparent: bytes, tracestate: bytes, exporting: bool) -> Trace:
    """This request's Trace from its traceparent and tracestate headers (b"" when absent); `exporting`: spans
    are exported (the gateway's span is then the provider call's parent)."""
    parsed = parse_traceparent(traceparent) if traceparent else None
    if parsed is None:  # the gateway starts the trace
        ids = "%048x" % _random_bits(192)  # noqa: UP031 - as OpenTelemetry's SDK makes ids; faster than f-strings
        trace_id, span_id = ids[:32], ids[32:]
        flags = SAMPLED if exporting else 0
        return Trace(trace_id, span_id, None, flags, None, f"00-{trace_id}-{span_id}-{flags:02x}", exporting)
    trace_id, parent_id, flags = parsed[0].decode(), parsed[1].decode(), parsed[2]
    state = tracestate.decode("latin-1").strip() or None if tracestate else None
    if exporting and flags & SAMPLED:
        span_id = "%016x" % _random_bits(64)  # noqa: UP031
        return Trace(trace_id, span_id, parent_id, flags, state, f"00-{trace_id}-{span_id}-{flags:02x}", True)
    return Trace(trace_id, "", parent_id, flags, state, f"00-{trace_id}-{parent_id}-{flags:02x}", False)


def trace_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` with this request's trace headers added (a new dict), or `headers` itself outside a request."""
    trace = CURRENT.get()
    return headers if trace is None else {**headers, **trace.headers()}


# ------------------------------------------------------------------------------------------- the export
QUEUE = 2048  # spans waiting for the thread, at most (OpenTelemetry's BatchSpanProcessor default)
BATCH = 512  # spans per export, at most
DELAY = 2.0  # seconds between exports while spans trickle in

# gen_ai.operation.name by endpoint type (OpenTelemetry GenAI semantic conventions)
OPERATIONS = {"llm/v1/chat": "chat", "llm/v1/completions": "text_completion", "llm/v1/embeddings": "embeddings"}
_SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER
_STATUS_ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR
_LOCAL_PARENT, _REMOTE_PARENT = 0x100, 0x300  # SpanFlags: whether the parent is remote is known (0x100); it is (0x200)
TEMPLATES = 1000  # span templates kept per worker (span_template); past that, a span's is made each time


class Exporter(Listener):
    """Spans from usage records, exported to an OTLP/HTTP collector by a thread of the worker."""

    def __init__(self, export: TraceExport, config: dict, replica: str) -> None:
        from gateway_kit.recording import endpoint_infos

        self.export = export
        self.replica = replica
        self.models = {name: info.model for name, info in endpoint_infos(config).items()}
        self.operations = {
            e["name"]: OPERATIONS.get(e.get("endpoint_type") or "", "chat") for e in config.get("endpoints") or []
        }
        self.queue: deque = deque()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.dropped = 0  # spans not queued: the queue was full
        self.failed = 0  # spans the collector did not take
        self.reachable = True  # the last export reached the collector (a change is logged)
        self.templates: dict[tuple, bytes] = {}  # used by the export thread only

    def usage_recorded(self, record) -> None:
        """On the request's path: queue the record with its trace and the time it ended."""
        trace = CURRENT.get()
        if trace is None or not trace.exported:
            return
        queue = self.queue
        if len(queue) >= QUEUE:
            self.dropped += 1
            return
        queue.append((record, trace, time.time_ns()))
        if self.thread is None:
            self.start()
        elif len(queue) >= BATCH:
            self.wake.set()

    refusal_recorded = usage_recorded

    def start(self) -> None:
        """The export thread, started with the worker's first span (a forked worker has none of its master's)."""
        self.thread = threading.Thread(target=self.run, name="gateway-kit-spans", daemon=True)
        self.thread.start()
        atexit.register(self.flush, at_exit=True)

    def run(self) -> None:
        while True:
            self.wake.wait(DELAY)
            self.wake.clear()
            self.flush()

    def flush(self, at_exit: bool = False) -> None:
        """Export every queued span, in batches. `at_exit` (a worker stopping): the rest is dropped once a batch
        fails, so a collector that is down holds the worker up for one timeout at most."""
        while self.queue:
            batch = []
            while self.queue and len(batch) < BATCH:
                batch.append(self.queue.popleft())
            if not self.send(batch) and at_exit:
                self.failed += len(self.queue)
                self.queue.clear()

    def send(self, batch: list) -> bool:
        """POST one batch; False (counted, logged once) when the collector did not take it."""
        try:
            body = self.encode(batch)
            if self.export.gzip:
                body = gzip.compress(body)
            headers = {"Content-Type": "application/x-protobuf", **dict(self.export.headers)}
            if self.export.gzip:
                headers["Content-Encoding"] = "gzip"
            request = urllib.request.Request(self.export.url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=self.export.timeout) as answer:  # noqa: S310 - the operator's URL
                answer.read()
        except Exception as e:  # noqa: BLE001 - whatever the collector or the network did: counted, logged once
            self.failed += len(batch)
            if self.reachable:
                self.reachable = False
                log.warning(
                    "traces: the OTLP collector at %s did not take %d spans (%s); spans are dropped until it does",
                    self.export.url,
                    len(batch),
                    e,
                )
            return False
        if not self.reachable:
            self.reachable = True
            log.warning("traces: the OTLP collector at %s takes spans again", self.export.url)
        return True

    def encode(self, batch: list) -> bytes:
        """An OTLP ExportTraceServiceRequest (protobuf) of the batch.

        What the spans of one endpoint share (name, kind, most attributes: span_template) is serialised once
        and merged into each span from bytes; only the request's own values are set one by one."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        _add_attributes(
            resource_spans.resource.attributes, {**dict(self.export.resource), "service.instance.id": self.replica}
        )
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name, scope_spans.scope.version = "gateway_kit", __version__
        spans = scope_spans.spans
        templates = self.templates
        for record, trace, ended in batch:
            shared = (
                record.route,
                record.endpoint,
                record.served_by,
                record.provider,
                record.model,
                record.status,
                record.client,
                record.error,
                record.fallback_reason,
                record.stream,
                record.partial,
                record.cache,
                record.api,
            )
            template = templates.get(shared)
            if template is None:
                template = self.span_template(record)
                if len(templates) < TEMPLATES:
                    templates[shared] = template
            span = spans.add()
            span.MergeFromString(template)
            span.trace_id = bytes.fromhex(trace.trace_id)
            span.span_id = bytes.fromhex(trace.span_id)
            if trace.parent_id:
                span.parent_span_id = bytes.fromhex(trace.parent_id)
                span.flags = (trace.flags & 0xFF) | _REMOTE_PARENT
            else:
                span.flags = (trace.flags & 0xFF) | _LOCAL_PARENT
            if trace.tracestate:
                span.trace_state = trace.tracestate
            span.start_time_unix_nano = ended - int(record.latency_ms * 1_000_000)
            span.end_time_unix_nano = ended
            _add_attributes(span.attributes, self.own_attributes(record))
        return request.SerializeToString()

    def span_template(self, record) -> bytes:
        """A span with what every span of the same endpoint, route, model, client and outcome shares, serialised."""
        from opentelemetry.proto.trace.v1.trace_pb2 import Span

        operation = self.operation(record)
        span = Span(name=f"{operation} {record.endpoint}" if record.endpoint else operation, kind=_SERVER_KIND)
        if record.status >= 500 or record.partial:
            span.status.code = _STATUS_ERROR
            span.status.message = record.error or ""
        _add_attributes(span.attributes, self.shared_attributes(record, operation))
        return span.SerializeToString()

    def operation(self, record) -> str:
        """gen_ai.operation.name: from the endpoint's type, else the /v1 route's."""
        endpoint_type = V1_ENDPOINT_TYPES.get(record.route)
        if endpoint_type is not None:
            return OPERATIONS[endpoint_type]
        return self.operations.get(record.endpoint, "chat")

    def shared_attributes(self, record, operation: str) -> dict:
        """The attributes spans of one endpoint share: GenAI semantic conventions, HTTP, the kit's (gateway.*)."""
        return {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": record.provider,
            "gen_ai.request.model": self.models.get(record.served_by or record.endpoint),
            "gen_ai.response.model": record.model,
            "http.response.status_code": record.status,
            "url.path": record.route,
            "error.type": record.error,
            "gateway.endpoint": record.endpoint,
            "gateway.served_by": record.served_by,
            "gateway.fallback_reason": record.fallback_reason,
            "gateway.client": record.client,
            "gateway.stream": record.stream or None,
            "gateway.partial": record.partial or None,
            "gateway.cache": record.cache,
            "gateway.api": record.api,
        }

    @staticmethod
    def own_attributes(record) -> dict:
        """The attributes of this request alone: its tokens, cost and id. Never content: the record has none."""
        return {
            "gen_ai.usage.input_tokens": record.prompt_tokens,
            "gen_ai.usage.output_tokens": record.completion_tokens,
            "gateway.cost_usd": record.cost_usd,
            "gateway.saved_usd": record.saved_usd,
            "gateway.request_id": record.request_id,
            "gateway.ttft_ms": record.ttft_ms,
            "gateway.cached_tokens": record.cached_tokens or None,
            "gateway.reasoning_tokens": record.reasoning_tokens or None,
        }


def _add_attributes(attributes, values: dict) -> None:
    """OTLP KeyValues added to a repeated field, for the values that are set (None is left out, as
    OpenTelemetry's SDKs do)."""
    for key, value in values.items():
        if value is None:
            continue
        kv = attributes.add()
        kv.key = key
        kind = type(value)
        if kind is str:
            kv.value.string_value = value
        elif kind is bool:
            kv.value.bool_value = value
        elif kind is int:
            kv.value.int_value = value
        else:
            kv.value.double_value = value
