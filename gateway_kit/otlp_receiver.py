"""A real OTLP/HTTP trace receiver for the tests: POST /v1/traces, protobuf ExportTraceServiceRequest
(gzip'd or not), decoded with opentelemetry-proto, as a collector would.

    with running_receiver() as receiver:        # on 127.0.0.1, a free port, in a thread of the test's process
        ... OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base_url ...
        spans = receiver.wait_for_spans(2)      # bounded wait
        attributes(spans[0])                    # {"gen_ai.operation.name": "chat", ...}
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class Receiver:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.url = f"{base_url}/v1/traces"
        self.requests: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.bodies: list[bytes] = []  # as received, after gzip
        self.lock = threading.Lock()

    def spans(self) -> list:
        with self.lock:
            return [
                span
                for request in self.requests
                for resource_spans in request.resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            ]

    def resources(self) -> list:
        with self.lock:
            return [rs.resource for request in self.requests for rs in request.resource_spans]

    def wait_for_spans(self, count: int, timeout: float = 30) -> list:
        """The spans received once there are at least `count` (AssertionError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            spans = self.spans()
            if len(spans) >= count:
                return spans
            time.sleep(0.1)
        raise AssertionError(f"{len(self.spans())} spans received, expected {count}")


def attributes(item) -> dict:
    """A span's (or resource's) attributes as a dict of plain values."""
    out = {}
    for kv in item.attributes:
        out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
    return out


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    receiver = Receiver(f"http://127.0.0.1:{server.server_address[1]}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_response(404)
                self.end_headers()
                return
            request = ExportTraceServiceRequest.FromString(body)
            with receiver.lock:
                receiver.requests.append(request)
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                receiver.bodies.append(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
