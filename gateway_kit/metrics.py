"""Prometheus metrics on each replica's GET /metrics, summed over its gunicorn workers.

What is measured, and from where (docs/observability.md has the full list with labels and PromQL):

- per request, from the usage record (a sink of recording.UsageRecorder, so the record and the metrics agree):
  gateway_requests_total, gateway_request_duration_seconds, gateway_time_to_first_token_seconds,
  gateway_tokens_total, gateway_cost_usd_total, gateway_unpriced_requests_total,
  gateway_ledger_write_failures_total;
- around the provider call (MLflow's one HTTP helper, wrapped): gateway_upstream_requests_total,
  gateway_upstream_duration_seconds;
- gateway_requests_in_flight (a tiny ASGI middleware), gateway_build_info;
- reported by other parts of the kit through the functions below: gateway_rate_limit_rejections_total,
  gateway_budget_rejections_total, gateway_fallbacks_total, gateway_circuit_breaker_transitions_total and
  gateway_circuit_breaker_open.

Functions for the rest of the kit (cheap; no-ops when metrics are off or not set up in this process):

    from gateway_kit import metrics
    metrics.rate_limited("requests_per_minute", endpoint="chat", client="team-a")  # a 429 from a limit
    metrics.budget_rejected("usd_per_day", endpoint="chat", client="team-a")        # a request over budget
    metrics.fallback("chat", to="azure-chat", reason="upstream_5xx")                 # another endpoint served
    metrics.circuit_breaker("https://api.openai.com/v1", "open", model="gpt-4o-mini")  # closed, open, half_open

Labels are bounded: an endpoint or `to` outside config.yaml becomes "unknown", a path the gateway does not
serve becomes route "other", a client or model beyond the first 100 seen by a worker (or not made of
[A-Za-z0-9._:/@+-]) becomes "other", a reason or limit kind beyond 20 (or not [a-z0-9_]) "other". Request ids
and request bodies are never labels.

Several workers: gunicorn_conf.py points PROMETHEUS_MULTIPROC_DIR at $GATEWAY_RUNTIME_DIR/metrics, empties it
when the replica starts and marks a dead worker's live gauges gone; GET /metrics merges every worker's file.
Per-request figures are summed in the worker's memory and written to its file once a second
(GATEWAY_METRICS_FLUSH_SECONDS; and when the worker exits): a dict update per figure on the request path instead
of a locked write to the shared file. A scrape may therefore miss the last second; a SIGKILLed worker loses it.
GATEWAY_METRICS=off turns all of it off (no files, no sink, no middleware; /metrics answers 404).
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import logging
import platform
import re
import time
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway_kit import settings

if TYPE_CHECKING:
    from gateway_kit.settings import Settings

log = logging.getLogger("gateway_kit.metrics")

UNKNOWN = "unknown"  # an endpoint name that is not in config.yaml (or none at all)
OTHER = "other"  # a route the gateway does not serve; a value past a label's bound
ANONYMOUS = "anonymous"  # a request without X-Gateway-Client
V1_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
INVOCATION_ROUTES = (
    ("/gateway/", "/gateway/{endpoint}/invocations"),
    ("/endpoints/", "/endpoints/{endpoint}/invocations"),
)
BREAKER_STATES = ("closed", "open", "half_open")
TOKEN_KINDS = ("prompt", "completion", "cached", "reasoning")
# LLM calls take from 100 ms (embeddings) to minutes (long answers): buckets up to the 300 s worker timeout.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60)
_FREE_VALUE = re.compile(r"^[A-Za-z0-9._:/@+-]{1,100}$")
_KIND_VALUE = re.compile(r"^[a-z0-9_]{1,40}$")

_active: Metrics | None = None  # this process's metrics, once setup() ran


def multiprocess_dir(runtime_dir: str) -> Path:
    """Where each worker keeps its metric files: $GATEWAY_RUNTIME_DIR/metrics (this replica's own)."""
    return Path(runtime_dir) / "metrics"


def reset_multiprocess_dir(directory: Path) -> None:
    """Create the directory and remove the metric files of an earlier run of this replica."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.db"):
        old.unlink(missing_ok=True)


class Bounded:
    """Maps a raw value to a label value from a bounded set.

    With `allowed`, only those values pass and anything else becomes `fallback`. Without it, the first `limit`
    distinct values matching `pattern` pass (per process) and the rest become `fallback`; a missing value
    becomes `missing`."""

    def __init__(
        self,
        name: str,
        *,
        allowed: Iterable[str] | None = None,
        limit: int = 100,
        pattern: re.Pattern = _FREE_VALUE,
        fallback: str = OTHER,
        missing: str = UNKNOWN,
    ) -> None:
        self.name = name
        self.fixed = allowed is not None
        self.seen: set[str] = set(allowed or ())
        self.limit, self.pattern, self.fallback, self.missing = limit, pattern, fallback, missing
        self.warned = False

    def __call__(self, value: str | None) -> str:
        if value in self.seen:
            return value
        if not value:
            return self.missing
        if self.fixed or not self.pattern.match(value):
            return self.fallback
        if len(self.seen) >= self.limit:
            if not self.warned:
                self.warned = True
                log.warning(
                    "metrics: more than %d distinct %s values in this worker; the rest are counted as %r",
                    self.limit,
                    self.name,
                    self.fallback,
                )
            return self.fallback
        self.seen.add(value)
        return value


def route_label(path: str) -> str:
    if path in V1_ROUTES:
        return path
    for prefix, template in INVOCATION_ROUTES:
        if path.startswith(prefix) and path.endswith("/invocations"):
            return template
    return OTHER


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER


class Children(dict):
    """A metric's children by label values, kept: a dict hit per request instead of metric.labels() (which
    converts, checks and locks every time). Bounded because the label values are."""

    def __init__(self, metric) -> None:
        super().__init__()
        self.metric = metric

    def __missing__(self, key: tuple):
        child = self[key] = self.metric.labels(*key)
        return child


class Batch:
    """Counter increments, histogram observations and the in-flight count of one worker, written to the metric
    files at most every `interval` seconds (a timer on the worker's event loop, set by the first figure after a
    write). Without a running loop (a script, a test) every figure is written at once."""

    def __init__(self, interval: float, in_flight, before_write: Callable[[], None] | None = None) -> None:
        self.interval = interval
        self.before_write = before_write
        self.counts: dict = {}  # counter child -> amount since the last write
        self.observations: dict = {}  # histogram child -> [values]
        self.in_flight_gauge = in_flight
        self.in_flight = 0
        self.scheduled = False

    def inc(self, child, amount: float = 1) -> None:
        counts = self.counts
        counts[child] = counts.get(child, 0) + amount
        if not self.scheduled:
            self._schedule()

    def observe(self, child, value: float) -> None:
        values = self.observations.get(child)
        if values is None:
            self.observations[child] = [value]
        else:
            values.append(value)
        if not self.scheduled:
            self._schedule()

    def started(self) -> None:
        self.in_flight += 1
        if not self.scheduled:
            self._schedule()

    def finished(self) -> None:
        self.in_flight -= 1
        if not self.scheduled:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self.write()
        self.scheduled = True
        loop.call_later(self.interval, self.write)

    def write(self) -> None:
        self.scheduled = False
        if self.before_write is not None:
            self.before_write()
        counts, self.counts = self.counts, {}
        observations, self.observations = self.observations, {}
        for child, amount in counts.items():
            child.inc(amount)
        for child, values in observations.items():
            observe_all(child, values)
        self.in_flight_gauge.set(self.in_flight)


def observe_all(histogram, values: list[float]) -> None:
    """histogram.observe(v) for every v, with one write per bucket and one for the sum instead of two per value.
    Uses prometheus_client's Histogram internals (_upper_bounds, _buckets, _sum, pinned in requirements.txt;
    tests/stack/test_metrics.py compares the result with observe()); without them, observe() for each."""
    bounds, buckets, total = (getattr(histogram, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None:
        for value in values:
            histogram.observe(value)
        return
    per_bucket: dict[int, int] = {}
    for value in values:
        i = bisect.bisect_left(bounds, value)  # the first bound >= value: observe()'s `value <= bound`
        per_bucket[i] = per_bucket.get(i, 0) + 1
    total.inc(sum(values))
    for i, count in per_bucket.items():
        buckets[i].inc(count)


def _version() -> str:
    from gateway_kit import __version__

    return __version__


class Metrics:
    """Every metric of one gateway process, and the usage-record sink that feeds most of them."""

    def __init__(
        self, config: dict, replica: str, registry=None, ledgers: Iterable = (), flush_seconds: float = 1.0
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        names = [e["name"] for e in config.get("endpoints") or []]
        names += [r["name"] for r in config.get("routes") or []]
        self.endpoint = Bounded("endpoint", allowed=names, fallback=UNKNOWN)
        self.client = Bounded("client", missing=ANONYMOUS)
        self.model = Bounded("model")
        self.upstream = Bounded("upstream", limit=50)
        self.limit_kind = Bounded("limit", limit=20, pattern=_KIND_VALUE)
        self.reason = Bounded("reason", limit=20, pattern=_KIND_VALUE)
        self.state = Bounded("state", allowed=BREAKER_STATES)
        self.ledgers = list(ledgers)
        self._ledger_failures = 0
        self._upstream_labels: dict[str, str] = {}
        r = self.registry

        def counter(name, doc, labels=()):
            metric = Counter(name, doc, labels, registry=r)
            return Children(metric) if labels else metric

        def histogram(name, doc, labels, buckets):
            return Children(Histogram(name, doc, labels, buckets=buckets, registry=r))

        def gauge(name, doc, labels, mode):
            metric = Gauge(name, doc, labels, multiprocess_mode=mode, registry=r)
            return Children(metric) if labels else metric

        self.requests = counter(
            "gateway_requests",
            "Requests that reached the gateway's endpoints.",
            ["endpoint", "route", "status_class", "client"],
        )
        self.duration = histogram(
            "gateway_request_duration_seconds",
            "Request arrival to last byte sent (streams: whole stream).",
            ["endpoint", "stream"],
            DURATION_BUCKETS,
        )
        self.ttft = histogram(
            "gateway_time_to_first_token_seconds",
            "Streams: request arrival to first byte sent.",
            ["endpoint"],
            TTFT_BUCKETS,
        )
        self.tokens = counter(
            "gateway_tokens",
            "Tokens as the provider reported them; cached is part of prompt, reasoning of completion.",
            ["endpoint", "model", "client", "kind"],
        )
        self.cost = counter(
            "gateway_cost_usd", "Cost in US dollars (genai-prices or pricing.yaml).", ["endpoint", "model", "client"]
        )
        self.unpriced = counter(
            "gateway_unpriced_requests", "Requests with tokens but no known price.", ["endpoint", "model"]
        )
        self.ledger_failures = counter("gateway_ledger_write_failures", "Usage records not written to the ledger.")
        self.in_flight = gauge("gateway_requests_in_flight", "Requests being served now.", (), "livesum")
        self.upstream_requests = counter(
            "gateway_upstream_requests",
            "Calls to providers, by HTTP status (error: no answer).",
            ["upstream", "status"],
        )
        self.upstream_duration = histogram(
            "gateway_upstream_duration_seconds",
            "Provider call: request sent to answer read in full (streams: the whole stream).",
            ["upstream"],
            DURATION_BUCKETS,
        )
        self.rate_limit_rejections = counter(
            "gateway_rate_limit_rejections", "Requests refused by a rate limit.", ["limit", "endpoint", "client"]
        )
        self.budget_rejections = counter(
            "gateway_budget_rejections", "Requests refused: a budget is spent.", ["limit", "endpoint", "client"]
        )
        self.fallbacks = counter(
            "gateway_fallbacks", "Requests served by a fallback endpoint.", ["endpoint", "to", "reason"]
        )
        self.breaker_transitions = counter(
            "gateway_circuit_breaker_transitions",
            "Circuit breaker changes, as each worker sees them.",
            ["upstream", "model", "state"],
        )
        self.breaker_open = gauge(
            "gateway_circuit_breaker_open",
            "1 while a worker sees the circuit breaker of the upstream's model open.",
            ["upstream", "model"],
            "livemax",
        )
        build = gauge(
            "gateway_build_info",
            "Always 1; the labels say what runs.",
            ["version", "mlflow_version", "python_version", "replica"],
            "livemax",
        )
        build[_version(), _mlflow_version(), platform.python_version(), replica].set(1)
        self.batch = Batch(flush_seconds, self.in_flight, self.count_ledger_failures if self.ledgers else None)

    def __call__(self, record) -> None:
        """The usage-record sink: one call per request, after its last byte."""
        batch = self.batch
        endpoint = self.endpoint(record.endpoint)
        client = self.client(record.client)
        batch.inc(self.requests[endpoint, route_label(record.route), status_class(record.status), client])
        batch.observe(self.duration[endpoint, "true" if record.stream else "false"], record.latency_ms / 1000)
        if record.ttft_ms is not None:
            batch.observe(self.ttft[endpoint,], record.ttft_ms / 1000)
        if record.prompt_tokens or record.completion_tokens:
            model = self.model(record.model)
            for kind, count in zip(
                TOKEN_KINDS,
                (record.prompt_tokens, record.completion_tokens, record.cached_tokens, record.reasoning_tokens),
            ):
                if count:
                    batch.inc(self.tokens[endpoint, model, client, kind], count)
            if record.cost_usd is None:
                batch.inc(self.unpriced[endpoint, model])
            elif record.cost_usd > 0:
                batch.inc(self.cost[endpoint, model, client], record.cost_usd)

    def count_ledger_failures(self) -> None:
        """Before each write of the batch: ledger records that could not be written since the last one."""
        failures = sum(ledger.failures for ledger in self.ledgers)
        if failures > self._ledger_failures:
            self.ledger_failures.inc(failures - self._ledger_failures)
            self._ledger_failures = failures

    def upstream_label(self, base_url: str) -> str:
        """host:port of a provider base URL (never its user or password), bounded."""
        label = self._upstream_labels.get(base_url)
        if label is None:
            try:
                parts = urlsplit(base_url)
                host = f"{parts.hostname}:{parts.port}" if parts.port else (parts.hostname or "")
            except ValueError:
                host = ""
            label = self._upstream_labels[base_url] = self.upstream(host)
        return label


def _mlflow_version() -> str:
    """The MLflow release serving: the full package, or MLflow's slim one (the image's default)."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("mlflow", "mlflow-skinny"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            pass
    return UNKNOWN


# -- for the rest of the kit ---------------------------------------------------------------------------------


def rate_limited(limit: str, endpoint: str | None, client: str | None) -> None:
    """Count a request refused by a rate limit (`limit`: its kind, e.g. requests_per_minute)."""
    if (m := _active) is not None:
        m.rate_limit_rejections[m.limit_kind(limit), m.endpoint(endpoint), m.client(client)].inc()


def budget_rejected(limit: str, endpoint: str | None, client: str | None) -> None:
    """Count a request refused because a budget is spent (`limit`: its kind, e.g. usd_per_day)."""
    if (m := _active) is not None:
        m.budget_rejections[m.limit_kind(limit), m.endpoint(endpoint), m.client(client)].inc()


def fallback(endpoint: str | None, to: str | None, reason: str) -> None:
    """Count a request for `endpoint` served by endpoint `to` instead (`reason`: why, e.g. upstream_5xx)."""
    if (m := _active) is not None:
        m.fallbacks[m.endpoint(endpoint), m.endpoint(to), m.reason(reason)].inc()


def circuit_breaker(upstream: str, state: str, model: str | None = None) -> None:
    """Record a circuit breaker's change to `state` (closed, open, half_open) for `upstream` (host or URL) and
    `model` (the model or Azure deployment the breaker stands for; "unknown" when none)."""
    if (m := _active) is not None:
        label = m.upstream_label(upstream) if "://" in upstream else m.upstream(upstream)
        model_label = m.model(model)
        m.breaker_transitions[label, model_label, m.state(state)].inc()
        m.breaker_open[label, model_label].set(1 if state == "open" else 0)


# -- wiring (gateway_kit.app.create_app) --------------------------------------------------------------------


def setup(config: dict, replica: str, registry=None, ledgers: Iterable = (), flush_seconds: float = 1.0) -> Metrics:
    """Make this process's metrics; the functions above report to them from now on. `flush_seconds`:
    GATEWAY_METRICS_FLUSH_SECONDS, how often a worker writes its per-request figures."""
    global _active  # noqa: PLW0603 - one set of metrics per process, as the functions above need
    _active = Metrics(config, replica, registry, ledgers, flush_seconds)
    atexit.register(_active.batch.write)  # a worker stopping writes its last second
    return _active


def install(app, config: dict, replica: str, sinks: list, s: Settings) -> None:
    """GET /metrics on the FastAPI app, the usage-record sink, and provider call timing.

    With metrics off (GATEWAY_METRICS): GET /metrics answers a JSON 404 saying so, and nothing else changes."""
    from fastapi.responses import JSONResponse, Response

    if not s.metrics:
        message = "metrics are turned off on this replica (GATEWAY_METRICS=off)"

        def metrics_off():
            return JSONResponse({"error": {"type": "metrics_off", "message": message}}, status_code=404)

        app.add_api_route("/metrics", metrics_off, methods=["GET"], include_in_schema=False)
        return
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
    from prometheus_client.multiprocess import MultiProcessCollector

    m = setup(
        config,
        replica,
        ledgers=[sink.ledger for sink in sinks if getattr(sink, "ledger", None) is not None],
        flush_seconds=s.metrics_flush_seconds,
    )
    sinks.append(m)
    multiprocess = settings.prometheus_multiproc_dir() is not None  # gunicorn_conf.py set it: several workers

    def metrics_endpoint():  # a plain def: FastAPI runs it in a thread, off the event loop
        if multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = m.registry
        # Text format 0.0.4: what every Prometheus, 2.x and 3.x, reads (the kit's names are plain ASCII).
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    time_provider_calls(m)


def in_flight(app):
    """The ASGI middleware counting requests in progress (the app unchanged when metrics are off: install()
    set up none)."""
    return InFlight(app, _active) if _active is not None else app


class InFlight:
    def __init__(self, app, metrics: Metrics) -> None:
        from gateway_kit.recording import recorded

        self.app = app
        self.batch = metrics.batch
        self.recorded = recorded

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.recorded(scope["path"]):
            return await self.app(scope, receive, send)
        self.batch.started()
        try:
            await self.app(scope, receive, send)
        finally:
            self.batch.finished()


def time_provider_calls(m: Metrics) -> bool:
    """Wrap MLflow's provider HTTP helper (the kit's shared client when installed): status and duration."""
    from mlflow.gateway.providers import utils

    original: Callable | None = getattr(utils, "_aiohttp_post", None)
    if original is None:
        log.warning("metrics: mlflow.gateway.providers.utils._aiohttp_post is missing; provider calls are not timed")
        return False
    if getattr(original, "__gateway_metrics__", False):
        return True

    def observe(base_url: str, status: str, seconds: float) -> None:
        label = m.upstream_label(base_url)
        m.batch.inc(m.upstream_requests[label, status])
        m.batch.observe(m.upstream_duration[label,], seconds)

    if getattr(original, "__gateway_kit__", False):  # the kit's shared client: it reports each call itself
        from gateway_kit import upstream

        upstream.OBSERVERS.append(observe)
        original.__gateway_metrics__ = True
        return True
    perf_counter = time.perf_counter

    @asynccontextmanager
    async def timed_post(headers, base_url, path, payload, *, ssrf_protect: bool = True):
        status = "error"
        started = perf_counter()
        try:
            async with original(headers, base_url, path, payload, ssrf_protect=ssrf_protect) as response:
                status = str(response.status)
                yield response
        finally:
            observe(base_url, status, perf_counter() - started)

    timed_post.__gateway_metrics__ = True
    utils._aiohttp_post = timed_post
    return True
