"""The gateway app: MLflow's YAML-config gateway, plus what the kit adds to every request.

gunicorn serves `gateway_kit.app:create_app()` (see gunicorn_conf.py). The config is the active one
entrypoint.sh wrote after its checks (GATEWAY_ACTIVE_CONFIG), or GATEWAY_CONFIG when run directly.
"""

from __future__ import annotations

import gc
import logging
import os
import re
from pathlib import Path

import yaml

from gateway_kit import limits, metrics, readiness, settings
from gateway_kit.preflight import KIT_ENDPOINT_KEYS, KIT_KEYS, key_refs
from gateway_kit.secrets import export_file_keys, let_mlflow_resolve_keys, redact_keys, redact_logs

_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")


class RequestContext:
    """ASGI middleware: every response carries X-Request-ID and X-Gateway-Replica.

    The request id is nginx's (kept from the client when well-formed) or a new one when the
    gateway is called directly, so every log line and record of one request shares it.
    """

    def __init__(self, app, replica: str) -> None:
        self.app = app
        self.replica = replica.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value
                break
        if not _VALID_REQUEST_ID.match(request_id):
            request_id = os.urandom(16).hex().encode()  # as random as uuid4().hex, a quarter of the cost
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        added = [(b"x-request-id", request_id), (b"x-gateway-replica", self.replica)]

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def add_upstream_error_handlers(app) -> None:
    """Answer an unreachable, slow or garbled provider with a JSON error, not a bare 500."""
    import asyncio

    import aiohttp
    from fastapi.responses import JSONResponse

    def handler(status: int, kind: str, what: str):
        async def handle(request, exc):
            message = f"{what} ({type(exc).__name__})"
            return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)

        return handle

    app.add_exception_handler(
        aiohttp.ClientConnectionError,
        handler(502, "upstream_unreachable", "the provider could not be reached or closed the connection"),
    )
    app.add_exception_handler(
        asyncio.TimeoutError, handler(504, "upstream_timeout", "the provider did not answer in time")
    )
    bad_answer = handler(502, "upstream_bad_response", "the provider's answer could not be read")
    app.add_exception_handler(aiohttp.ClientResponseError, bad_answer)
    app.add_exception_handler(aiohttp.ClientPayloadError, bad_answer)
    # A JSONDecodeError is the provider's garbled answer only after it was called: request_errors decides.


SSE_DONE = "data: [DONE]\n\n"  # OpenAI's last event of a stream


def end_streams_with_done() -> bool:
    """End MLflow's streams with OpenAI's `data: [DONE]`, on every route and for every provider.

    MLflow reads the provider's stream (dropping its [DONE]) and sends its own OpenAI-shaped chunks from
    mlflow.gateway.utils.make_streaming_response, which never sends one: the OpenAI SDK copes, a hand-written
    SSE client waits until the connection closes. The kit wraps that function as mlflow.gateway.app calls it
    (the /v1 routes, each endpoint's invocations route, the fast routes alike): MLflow's bytes unchanged,
    then [DONE] once the stream has ended normally. A stream that breaks sends no [DONE]: the kit ends it
    with an error event (gateway_kit.resilience), as OpenAI does; nor does one that ended before its first
    event, which gateway_kit.resilience answers as an error or from a fallback. True once installed."""
    import collections.abc

    import mlflow.gateway.app as gateway_app
    from starlette.responses import StreamingResponse

    original = getattr(gateway_app, "make_streaming_response", None)
    if original is None:
        logging.getLogger("gateway_kit").warning(
            "mlflow.gateway.app has no make_streaming_response: streams end without data: [DONE]"
        )
        return False
    if getattr(original, "__gateway_kit__", False):
        return True

    async def then_done(events: collections.abc.AsyncIterator):
        answered = False
        try:
            async for event in events:
                answered = True
                yield event
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()
        if answered:  # an empty stream is no answer: the kit makes it an error (or a fallback's answer)
            yield SSE_DONE

    async def make_streaming_response(resp):
        response = await original(resp)
        if isinstance(response, StreamingResponse) and response.media_type == "text/event-stream":
            response.body_iterator = then_done(response.body_iterator)
        return response

    make_streaming_response.__gateway_kit__ = True
    gateway_app.make_streaming_response = make_streaming_response
    return True


def add_bad_input_handling(app, key_names: list[str], max_body_mb: float) -> None:
    """Bad requests get clear 4xx JSON errors; no provider key in an error body or a log line."""
    from gateway_kit.request_errors import add_request_error_handlers

    add_request_error_handlers(app, int(max_body_mb * 1024 * 1024))
    redact_keys(key_names)
    redact_logs()


def setup_logging() -> None:
    """The kit's own log lines on stderr, worded like entrypoint.sh's: `gateway: error: ...`."""
    import logging
    import sys

    logger = logging.getLogger("gateway_kit")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("gateway: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def mlflow_view(config: dict) -> dict:
    """The config as MLflow gets it: without the kit's own keys (preflight.KIT_KEYS, KIT_ENDPOINT_KEYS)."""
    view = {k: v for k, v in config.items() if k not in KIT_KEYS}
    view["endpoints"] = [{k: v for k, v in e.items() if k not in KIT_ENDPOINT_KEYS} for e in config["endpoints"]]
    return view


def create_app():
    """The replica's ASGI app, from this process's settings (gateway_kit.settings: parsed once, in gunicorn's
    master when gunicorn_conf.py is its config; a bad value raises SettingsError, so the worker does not boot)."""
    from mlflow.gateway.app import create_app_from_config
    from mlflow.gateway.config import GatewayConfig

    setup_logging()
    s = settings.current()
    raw = yaml.safe_load(Path(s.config_path).read_text()) or {}
    key_names = [name for e in raw.get("endpoints") or [] for name in key_refs(e).values()]
    export_file_keys(key_names)
    let_mlflow_resolve_keys()  # as mlflow.gateway.app.create_app_from_path: `$NAME` from the environment or a file
    app = create_app_from_config(GatewayConfig(**mlflow_view(raw)))
    add_upstream_error_handlers(app)
    end_streams_with_done()
    readiness.install(app, s.redis_url if s.ready_redis else None)  # GET /ready
    add_bad_input_handling(app, key_names, s.max_body_mb)
    if s.shared_upstream_client:
        from gateway_kit import upstream

        if upstream.install(s.upstream_pool, s.upstream_keepalive):
            upstream.close_with(app)
    records = usage_log(s) if s.usage_records else None
    sinks = [records] if records else []
    metrics.install(app, raw, s.replica_id, sinks, s)  # GET /metrics, a sink, provider timing; off: GATEWAY_METRICS
    from gateway_kit import fast_routes

    if s.fast_routes:
        fast_routes.cache_providers(app)
        fast_routes.quiet_telemetry(app, s.otel_configured)
        fast_routes.fast_encoder()
        fast_routes.install(app)  # the LLM routes without FastAPI's routing machinery (same answers)
    else:
        fast_routes.install(app, serve=False)  # FastAPI serves them; JSON nested too deeply is refused the same way
    # From here on, middleware wraps MLflow's app, innermost first (docs/architecture.md has the order).
    if s.resilience:
        app = resilience(app, raw)
    limiter = limits.limiter_from(raw, s)  # None when config.yaml sets no limits
    if limiter and limiter.counts_usage:
        sinks.append(limiter.record_usage)  # tokens per minute and dollars per day
    if sinks:
        app = usage_recorder(app, raw, sinks, s)
    app = metrics.in_flight(app)
    refused = refusal_records(records, s.replica_id) if records else None  # each 401, 429, 503 the kit answers
    if limiter:
        app = limits.Limits(app, limiter, refused)
    app = client_keys(app, raw, refused, s)
    # MLflow, FastAPI and pydantic leave about a million objects behind at start that live as long as the
    # worker. Frozen, the garbage collector stops walking them in every full collection: 4% of a worker's CPU
    # with the provider at 0 ms, 12% with many requests in flight (docs/performance.md).
    gc.collect()
    gc.freeze()
    return RequestContext(app, replica=s.replica_id)


def client_keys(app, config: dict, refused, s: settings.Settings):
    """Gateway keys first (after the request id): a 401, or the client's name as X-Gateway-Client."""
    from gateway_kit.keys import ClientKeys, KeyStore, auth_required, keys_file
    from gateway_kit.preflight import DEMO_KEY

    required = auth_required(s.auth, config, DEMO_KEY)
    return ClientKeys(app, KeyStore(keys_file(s.keys_file)) if required else None, refused)


def refusal_records(sink, replica: str):
    """Usage records of the requests the kit refuses before the usage recorder sees them (recording.Refusals)."""
    from gateway_kit.recording import Refusals

    return Refusals(replica, [sink])


def resilience(app, config: dict):
    """Per-endpoint timeouts and retries, fallbacks, clear errors when a provider fails (docs/resilience.md).
    Fallbacks and circuit changes are counted in the metrics (no-ops with GATEWAY_METRICS=off)."""
    from gateway_kit import resilience as kit_resilience

    def count_fallback(event) -> None:  # "no_answer_in_1.5s" -> "no_answer": a bounded label
        metrics.fallback(event.endpoint, event.served_by, re.sub(r"_in_[\d.]+s$", "", event.reason))

    kit_resilience.FALLBACK_HOOKS.append(count_fallback)
    kit_resilience.CIRCUIT_HOOKS.append(lambda name, old, new: metrics.circuit_breaker(name.url, new, name.model))
    return kit_resilience.wrap(app, config)


def usage_log(s: settings.Settings):
    """The sink that writes each record to stdout and the ledger."""
    from functools import partial

    from gateway_kit.usage import Ledger, emit

    ledger = Ledger.from_settings(s)
    sink = partial(emit, ledger=ledger)
    sink.ledger = ledger  # metrics counts its failed writes
    return sink


def usage_recorder(app, config: dict, sinks: list, s: settings.Settings):
    from gateway_kit.pricing import Pricer
    from gateway_kit.recording import UsageRecorder, endpoint_infos

    endpoints = endpoint_infos(config)
    pricer = Pricer()  # GATEWAY_PRICING_FILE, else pricing.yaml where find_pricing_file looks
    pricer.warm((info.model, info.provider) for info in endpoints.values() if info.model)
    return UsageRecorder(app, endpoints, s.replica_id, pricer, sinks)
