"""The gateway app: MLflow's YAML-config gateway, plus what the kit adds to every request.

gunicorn serves `gateway_kit.app:create_app()` (see gunicorn_conf.py). The config is the active one
entrypoint.sh wrote after its checks (GATEWAY_ACTIVE_CONFIG), or GATEWAY_CONFIG when run directly.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import gc
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from gateway_kit import dialects, limits, metrics, private_api, readiness, reload, settings, traces
from gateway_kit.events import Events, Listener
from gateway_kit.preflight import KIT_ENDPOINT_KEYS, KIT_KEYS, key_refs
from gateway_kit.recording import Refusals
from gateway_kit.request import (
    REQUEST_ID,
    TRACE,
    error_response,
    state_of,
    upstream_failure,
    upstream_failures,
    with_response_headers,
)
from gateway_kit.secrets import export_file_keys, let_mlflow_resolve_keys, redact_keys, redact_logs
from gateway_kit.usage import Ledger, emit

_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,128}$")


class RequestContext:
    """ASGI middleware: every response carries X-Request-ID and X-Gateway-Replica, and every request has its
    place in a trace.

    The request id is nginx's (kept from the client when well-formed) or a new one when the
    gateway is called directly, so every log line and record of one request shares it. The trace is the
    client's W3C `traceparent` (and `tracestate`), or one the gateway starts (gateway_kit.traces): in the scope
    state for the usage record, and in traces.CURRENT for the provider call. `exporting`: spans are exported
    (an OTEL_EXPORTER_OTLP_* endpoint is set), so the gateway's own span is the provider call's parent.
    """

    def __init__(self, app, replica: str, exporting: bool = False) -> None:
        self.app = app
        self.replica = replica.encode()
        self.exporting = exporting

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = traceparent = tracestate = b""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value
            elif name == b"traceparent":
                traceparent = value
            elif name == b"tracestate":
                tracestate = value
        if not _VALID_REQUEST_ID.match(request_id):
            request_id = os.urandom(16).hex().encode()  # as random as uuid4().hex, a quarter of the cost
        state = state_of(scope)
        state[REQUEST_ID] = request_id.decode()
        trace = state[TRACE] = traces.start(traceparent, tracestate, self.exporting)
        traces.CURRENT.set(trace)  # this request's task and those it starts: the provider call
        added = [(b"x-request-id", request_id), (b"x-gateway-replica", self.replica)]
        await self.app(scope, receive, with_response_headers(send, added))


def add_upstream_error_handlers(app) -> None:
    """Answer an unreachable, slow or garbled provider, or an open circuit, with its JSON error, not a bare 500:
    one handler for the exceptions of request.upstream_failures() that are the provider's wherever they come
    from. A ValueError (a JSONDecodeError too) is the provider's only after it was called: request_errors decides.
    """

    async def upstream_error(request, exc):
        failure = upstream_failure(exc)
        return error_response(failure.status, failure.kind, failure.message, failure.headers or None)

    for exceptions, _, in_app in upstream_failures():
        if in_app:
            for exception in exceptions:
                app.add_exception_handler(exception, upstream_error)


SSE_DONE = "data: [DONE]\n\n"  # OpenAI's last event of a stream
STREAM_AHEAD = 64  # events a stream's reader may run ahead of the client (the client's pace holds it then)
_END = object()  # the stream's reader: the stream ended normally


async def stream_body(events: collections.abc.AsyncIterator[str]) -> collections.abc.AsyncIterator[str]:
    """MLflow's SSE events as the body of a stream: the events that are ready at the same moment in one body
    message, and `data: [DONE]` after a stream that ended normally.

    Each body message is one write to the client's socket (uvicorn's send), the largest cost of a chunk. A
    reader task takes the events from `events` as they come into a queue; the body takes the first one, then
    every one already queued, and sends them joined. Nothing waits for a later event: when the reader would
    wait for the provider, the queue is empty and what it read goes out. So events come one per message while
    the worker keeps up, and several per message when they arrived together (one TCP segment from the provider)
    or the worker was busy: Nagle without the delay. The bytes are MLflow's, in order; only the HTTP chunks
    around them change. An exception from `events` is raised after the events before it went out (the
    resilience middleware ends the stream with an error event); a body closed early (the client left) cancels
    the reader, and `events` is closed either way.

    A stream that breaks sends no [DONE]: the kit ends it with an error event (gateway_kit.resilience), as
    OpenAI does; nor does one that ended before its first event, which gateway_kit.resilience answers as an
    error or from a fallback."""
    loop = asyncio.get_running_loop()
    ready: collections.deque = collections.deque()  # events read and not yet sent, then _END or the exception
    waiting: dict[str, asyncio.Future] = {}  # "body": waits for an event; "reader": waits for room (at most one each)

    def wake(who: str) -> None:
        future = waiting.pop(who, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(who: str) -> None:
        waiting[who] = future = loop.create_future()
        try:
            await future
        finally:
            waiting.pop(who, None)

    async def read() -> None:
        try:
            async for event in events:
                ready.append(event)
                wake("body")
                if len(ready) >= STREAM_AHEAD:
                    await wait("reader")
            ready.append(_END)
        except BaseException as e:  # noqa: BLE001 - raised again by the body, in its turn
            ready.append(e)
            if not isinstance(e, Exception):
                raise  # cancelled: by the body, which has stopped, or from outside, which the body raises too
        finally:
            wake("body")
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    reader = loop.create_task(read())
    answered = False
    try:
        while True:
            if not ready:
                await wait("body")
                continue
            batch = list(ready)
            ready.clear()
            wake("reader")
            last = batch[-1]
            if isinstance(last, str):
                answered = True
                yield "".join(batch)
                continue
            if len(batch) > 1:
                answered = True
                yield "".join(batch[:-1])
            if last is _END:
                break
            raise last
    finally:
        reader.cancel()  # nothing, once it has ended
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    if answered:  # an empty stream is no answer: the kit makes it an error (or a fallback's answer)
        yield SSE_DONE


def end_streams_with_done() -> bool:
    """End MLflow's streams with OpenAI's `data: [DONE]`, on every route and for every provider, and send the
    events that are ready together in one write (stream_body).

    MLflow reads the provider's stream (dropping its [DONE]) and sends its own OpenAI-shaped chunks from
    mlflow.gateway.utils.make_streaming_response, which never sends one: the OpenAI SDK copes, a hand-written
    SSE client waits until the connection closes. The kit wraps that function as mlflow.gateway.app calls it
    (gateway_kit.private_api.wrap_streaming_responses; the /v1 routes, each endpoint's invocations route, the
    fast routes alike): MLflow's bytes unchanged, then [DONE] once the stream has ended normally. True once
    installed."""
    if not private_api.wrap_streaming_responses(stream_body):
        logging.getLogger("gateway_kit").warning(
            "mlflow.gateway.app has no make_streaming_response: streams end without data: [DONE]"
        )
        return False
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


@dataclass(frozen=True)
class Parts:
    """What create_app makes once per worker for the middlewares to share: the worker's events registry with
    its listeners (gateway_kit.events), and the parts that are also middlewares' state."""

    events: Events
    metrics: metrics.Metrics | None  # None with GATEWAY_METRICS=off
    limiter: limits.Limiter | None  # None when config.yaml sets no limits
    refusals: Refusals | None  # None when nothing listens to the records of refused requests
    cache: dict | None  # the endpoints' cache policies (gateway_kit.cache); None: no endpoint has `cache:`, or no Redis
    spans: traces.Exporter | None  # None unless an OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set
    config_hash: str | None  # which config this worker serves (gateway_kit.reload.config_hash), in /ready and records


def parts(s: settings.Settings, config: dict, config_hash: str | None = None) -> Parts:
    """The listeners these settings and config ask for, in this order: the usage log (stdout and the ledger;
    GATEWAY_USAGE_RECORDS), the span export (OTEL_EXPORTER_OTLP_*), metrics (GATEWAY_METRICS), limits' token
    and dollar counters (a client's tokens_per_minute or usd_per_day)."""
    usage = UsageLog(Ledger.from_settings(s)) if s.usage_records else None
    spans = traces.Exporter(s.trace_export, config, s.replica_id) if s.trace_export else None
    m = None
    if s.metrics:
        ledgers = [usage.ledger] if usage and usage.ledger else []  # metrics count their failed writes
        m = metrics.Metrics(config, s.replica_id, ledgers=ledgers, flush_seconds=s.metrics_flush_seconds, spans=spans)
    limiter = limits.limiter_from(config, s)
    counter = limiter if limiter and limiter.counts_usage else None
    events = Events(listener for listener in (usage, spans, m, counter) if listener is not None)
    if limiter is not None:
        limiter.events = events  # it reports the requests whose limits Redis could not check (limits_unenforced)
    refusals = Refusals(s.replica_id, events, config_hash) if events.listens("refusal_recorded") else None
    return Parts(events, m, limiter, refusals, cache_policies(config, s), spans, config_hash)


@dataclass(frozen=True)
class Middleware:
    """One layer of the replica's stack: its name (as docs/architecture.md draws it), whether these settings
    turn it on, and how it wraps the app inside it."""

    name: str
    on: bool
    wrap: Callable


def middlewares(s: settings.Settings, config: dict, p: Parts) -> list[Middleware]:
    """The replica's middlewares, outermost first: the order a request passes through them. Each answers
    what it refuses itself; the last hands the request to MLflow's app."""
    return [
        Middleware(
            "request id", True, lambda app: RequestContext(app, replica=s.replica_id, exporting=p.spans is not None)
        ),
        Middleware("client keys", True, lambda app: client_keys(app, config, p.refusals, s)),
        Middleware("dialects", True, lambda app: dialects.Dialects(app, p.refusals)),
        Middleware("limits", p.limiter is not None, lambda app: limits.Limits(app, p.limiter, p.refusals, p.events)),
        Middleware("in-flight gauge", p.metrics is not None, lambda app: metrics.InFlight(app, p.metrics)),
        # on when anything listens to the records: the usage log, metrics, or a token or dollar limit
        Middleware("usage records", p.events.listens("usage_recorded"), lambda app: usage_recorder(app, config, p, s)),
        Middleware("cache", p.cache is not None, lambda app: response_cache(app, p, s)),
        Middleware("resilience", s.resilience, lambda app: resilience(app, config, p.events)),
    ]


def stacked(app, layers: list[Middleware]):
    """`app` inside each layer that is on, the first outermost."""
    for layer in reversed(layers):
        if layer.on:
            app = layer.wrap(app)
    return app


def middleware_order(s: settings.Settings, config: dict) -> list[str]:
    """The names of the middlewares create_app builds for these settings and config, outermost first
    (tests/unit/test_middleware.py compares them with docs/architecture.md's picture)."""
    return [layer.name for layer in middlewares(s, config, parts(s, config)) if layer.on]


def create_app():
    """The replica's ASGI app, from this process's settings (gateway_kit.settings: parsed once, in gunicorn's
    master when gunicorn_conf.py is its config; a bad value raises SettingsError, so the worker does not boot)."""
    from mlflow.gateway.app import create_app_from_config
    from mlflow.gateway.config import GatewayConfig

    from gateway_kit import fast_routes, upstream

    setup_logging()
    s = settings.current()
    raw = yaml.safe_load(Path(s.config_path).read_text()) or {}
    # Once per worker: a reload starts new ones (gateway_kit/reload.py).
    served = reload.config_hash(Path(s.config_path))
    key_names = [name for e in raw.get("endpoints") or [] for name in key_refs(e).values()]
    export_file_keys(key_names)
    let_mlflow_resolve_keys()  # as mlflow.gateway.app.create_app_from_path: `$NAME` from the environment or a file
    app = create_app_from_config(GatewayConfig(**mlflow_view(raw)))
    add_upstream_error_handlers(app)
    end_streams_with_done()
    readiness.install(app, s.redis_url if s.ready_redis else None, served)  # GET /ready
    reload.install(app, reload.reload_token(), s.config)  # POST /-/reload(/check), with a reload token only
    add_bad_input_handling(app, key_names, s.max_body_mb)
    p = parts(s, raw, served)
    if s.shared_upstream_client and upstream.install(s.upstream_pool, s.upstream_keepalive, p.events):
        upstream.close_with(app)
    else:
        upstream.time_calls(p.events)  # MLflow's own client: trace headers sent, calls reported, as the shared one
    metrics.install(app, p.metrics)  # GET /metrics (a 404 with GATEWAY_METRICS=off)
    if s.fast_routes:
        fast_routes.cache_providers(app)
        fast_routes.quiet_telemetry(app, s.otel_configured)
        fast_routes.fast_encoder()
        fast_routes.install(app)  # the LLM routes without FastAPI's routing machinery (same answers)
    else:
        fast_routes.install(app, serve=False)  # FastAPI serves them; JSON nested too deeply is refused the same way
    app = stacked(app, middlewares(s, raw, p))
    # MLflow, FastAPI and pydantic leave about a million objects behind at start that live as long as the
    # worker. Frozen, the garbage collector stops walking them in every full collection: 4% of a worker's CPU
    # with the provider at 0 ms, 12% with many requests in flight (docs/performance.md).
    gc.collect()
    gc.freeze()
    return app


def client_keys(app, config: dict, refused, s: settings.Settings):
    """Gateway keys first (after the request id): a 401, or the client's name as X-Gateway-Client."""
    from gateway_kit.keys import ClientKeys, KeyStore, auth_required, keys_file
    from gateway_kit.preflight import DEMO_KEY

    required = auth_required(s.auth, config, DEMO_KEY)
    return ClientKeys(app, KeyStore(keys_file(s.keys_file)) if required else None, refused)


def resilience(app, config: dict, events: Events):
    """Per-endpoint timeouts and retries, fallbacks, clear errors when a provider fails (docs/resilience.md)."""
    from gateway_kit import resilience as kit_resilience

    return kit_resilience.wrap(app, config, events)


class UsageLog(Listener):
    """Writes each usage record, refused requests' too, to stdout and the ledger (None: stdout only)."""

    def __init__(self, ledger: Ledger | None) -> None:
        self.ledger = ledger

    def usage_recorded(self, record) -> None:
        emit(record, ledger=self.ledger)

    refusal_recorded = usage_recorded


def cache_policies(config: dict, s: settings.Settings) -> dict | None:
    """The endpoints' `cache:` policies, or None when no endpoint has one or GATEWAY_REDIS_URL is unset (said
    once: the cache lives in Redis, so without it nothing is cached)."""
    from gateway_kit.cache import read_config

    policies = read_config(config)
    if not policies:
        return None
    if not s.redis_url:
        logging.getLogger("gateway_kit.cache").error(
            "cache: config.yaml sets `cache:` on %s but GATEWAY_REDIS_URL is not set — nothing is cached; set it "
            "to the Redis every replica shares",
            ", ".join(policies),
        )
        return None
    return policies


def response_cache(app, p: Parts, s: settings.Settings):
    """Answers from the cache shared by every replica, for the endpoints with `cache:` (gateway_kit.cache)."""
    from gateway_kit.cache import ResponseCache
    from gateway_kit.shared_redis import link_for

    return ResponseCache(app, p.cache, link_for(s), s.cache_max_entry_kb * 1024, p.events)


def usage_recorder(app, config: dict, p: Parts, s: settings.Settings):
    from gateway_kit.pricing import Pricer
    from gateway_kit.recording import UsageRecorder, endpoint_infos

    endpoints = endpoint_infos(config)
    pricer = Pricer()  # GATEWAY_PRICING_FILE, else pricing.yaml where find_pricing_file looks
    pricer.warm((info.model, info.provider) for info in endpoints.values() if info.model)
    return UsageRecorder(app, endpoints, s.replica_id, pricer, p.events, p.config_hash)
