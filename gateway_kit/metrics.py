"""Prometheus metrics on each replica's GET /metrics, summed over its gunicorn workers.

`Metrics` is a listener of the worker's events (gateway_kit.events); what is measured, and from which event
(docs/observability.md has the full list with labels and PromQL):

- usage_recorded, the request's usage record (so the record and the metrics agree): gateway_requests_total,
  gateway_request_duration_seconds, gateway_time_to_first_token_seconds, gateway_tokens_total,
  gateway_cost_usd_total, gateway_unpriced_requests_total, gateway_ledger_write_failures_total;
- upstream_called, after each provider call: gateway_upstream_requests_total, gateway_upstream_duration_seconds;
- rate_limited and budget_rejected: gateway_rate_limit_rejections_total, gateway_budget_rejections_total;
- limits_unenforced: gateway_limits_unenforced_total (Redis did not answer the limits);
- fallback_served: gateway_fallbacks_total; circuit_changed: gateway_circuit_breaker_transitions_total and
  gateway_circuit_breaker_open;
- cache_looked_up, each lookup of the response cache: gateway_cache_hits_total, gateway_cache_misses_total;
- gateway_requests_in_flight (a tiny ASGI middleware, InFlight), gateway_build_info.

Labels are bounded: an endpoint or `to` outside config.yaml becomes "unknown", a path the gateway does not
serve becomes route "other", a client or model beyond the first 100 seen by a worker (or not made of
[A-Za-z0-9._:/@+-]) becomes "other", a reason or limit kind beyond 20 (or not [a-z0-9_]) "other". Request ids
and request bodies are never labels.

Several workers: gunicorn_conf.py points PROMETHEUS_MULTIPROC_DIR at $GATEWAY_RUNTIME_DIR/metrics, empties it
when the replica starts and marks a dead worker's live gauges gone; GET /metrics merges every worker's file.
Per-request figures are summed in the worker's memory and written to its file once a second
(GATEWAY_METRICS_FLUSH_SECONDS; and when the worker exits): a dict update per figure on the request path instead
of a locked write to the shared file. A scrape may therefore miss the last second; a SIGKILLed worker loses it.
GATEWAY_METRICS=off turns all of it off (no Metrics, so no files, no listener, no middleware; /metrics answers
404).
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import logging
import platform
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway_kit import private_api, settings
from gateway_kit.cache import HIT
from gateway_kit.events import Listener
from gateway_kit.request import error_response, route_of

if TYPE_CHECKING:
    from gateway_kit.resilience import CircuitName, FallbackEvent

log = logging.getLogger("gateway_kit.metrics")

UNKNOWN = "unknown"  # an endpoint name that is not in config.yaml (or none at all)
OTHER = "other"  # a route the gateway does not serve; a value past a label's bound
ANONYMOUS = "anonymous"  # a request without X-Gateway-Client
BREAKER_STATES = ("closed", "open", "half_open")
TOKEN_KINDS = ("prompt", "completion", "cached", "reasoning")
# LLM calls take from 100 ms (embeddings) to minutes (long answers): buckets up to the 300 s worker timeout.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60)
_FREE_VALUE = re.compile(r"^[A-Za-z0-9._:/@+-]{1,100}$")
_KIND_VALUE = re.compile(r"^[a-z0-9_]{1,40}$")
_AFTER_S = re.compile(r"_in_[\d.]+s$")  # a fallback reason's "_in_1.5s": "no_answer_in_1.5s" -> "no_answer"


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
    Uses prometheus_client's Histogram internals (private_api.histogram_parts, pinned in requirements.txt;
    tests/stack/test_metrics.py compares the result with observe()); without them, observe() for each."""
    parts = private_api.histogram_parts(histogram)
    if parts is None:
        for value in values:
            histogram.observe(value)
        return
    bounds, buckets, total = parts
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


class Metrics(Listener):
    """Every metric of one gateway process, fed by the events it listens to (gateway_kit.events)."""

    def __init__(
        self,
        config: dict,
        replica: str,
        registry=None,
        ledgers: Iterable = (),
        flush_seconds: float = 1.0,
        spans=None,
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
        self.spans = spans  # the span exporter (gateway_kit.traces), whose dropped spans are counted
        self._spans_dropped = {"queue_full": 0, "export_failed": 0}
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
        self.spans_dropped = counter(
            "gateway_trace_spans_dropped",
            "Spans not exported: the queue was full, or the collector failed.",
            ["reason"],
        )
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
        self.limits_unenforced_total = counter(
            "gateway_limits_unenforced",
            "Requests whose limits could not be checked because Redis did not answer",
            ["policy"],
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
        self.cache_hits = counter(
            "gateway_cache_hits", "Requests answered from the response cache.", ["endpoint", "client"]
        )
        self.cache_misses = counter(
            "gateway_cache_misses",
            "Requests looked up in the response cache and not found there (sent to the provider).",
            ["endpoint", "client"],
        )
        build = gauge(
            "gateway_build_info",
            "Always 1; the labels say what runs.",
            ["version", "mlflow_version", "python_version", "replica"],
            "livemax",
        )
        build[_version(), _mlflow_version(), platform.python_version(), replica].set(1)
        counts_drops = self.ledgers or self.spans is not None
        self.batch = Batch(flush_seconds, self.in_flight, self.count_drops if counts_drops else None)

    def usage_recorded(self, record) -> None:
        """One call per request, after its last byte."""
        batch = self.batch
        endpoint = self.endpoint(record.endpoint)
        client = self.client(record.client)
        route = route_of(record.route).template or OTHER  # /gateway/{endpoint}/invocations ...
        batch.inc(self.requests[endpoint, route, status_class(record.status), client])
        batch.observe(self.duration[endpoint, "true" if record.stream else "false"], record.latency_ms / 1000)
        if record.ttft_ms is not None:
            batch.observe(self.ttft[endpoint,], record.ttft_ms / 1000)
        if (record.prompt_tokens or record.completion_tokens) and record.cache != HIT:  # a hit: no provider call
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

    def upstream_called(self, base_url: str, status: str, seconds: float) -> None:
        label = self.upstream_label(base_url)
        self.batch.inc(self.upstream_requests[label, status])
        self.batch.observe(self.upstream_duration[label,], seconds)

    def rate_limited(self, limit: str, endpoint: str | None, client: str | None) -> None:
        self.rate_limit_rejections[self.limit_kind(limit), self.endpoint(endpoint), self.client(client)].inc()

    def budget_rejected(self, limit: str, endpoint: str | None, client: str | None) -> None:
        self.budget_rejections[self.limit_kind(limit), self.endpoint(endpoint), self.client(client)].inc()

    def limits_unenforced(self, policy: str) -> None:
        self.limits_unenforced_total[policy,].inc()

    def fallback_served(self, event: FallbackEvent) -> None:
        reason = _AFTER_S.sub("", event.reason)  # a bounded label
        self.fallbacks[self.endpoint(event.endpoint), self.endpoint(event.served_by), self.reason(reason)].inc()

    def circuit_changed(self, name: CircuitName, old: str, new: str) -> None:
        upstream, model = self.upstream_label(name.url), self.model(name.model)
        self.breaker_transitions[upstream, model, self.state(new)].inc()
        self.breaker_open[upstream, model].set(1 if new == "open" else 0)

    def cache_looked_up(self, endpoint: str, client: str | None, result: str) -> None:
        counter = self.cache_hits if result == HIT else self.cache_misses
        self.batch.inc(counter[self.endpoint(endpoint), self.client(client)])

    def count_drops(self) -> None:
        """Before each write of the batch: ledger records that could not be written, and spans not exported,
        since the last one."""
        failures = sum(ledger.failures for ledger in self.ledgers)
        if failures > self._ledger_failures:
            self.ledger_failures.inc(failures - self._ledger_failures)
            self._ledger_failures = failures
        if self.spans is not None:
            for reason, now in (("queue_full", self.spans.dropped), ("export_failed", self.spans.failed)):
                if now > self._spans_dropped[reason]:
                    self.spans_dropped[reason,].inc(now - self._spans_dropped[reason])
                    self._spans_dropped[reason] = now

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


# -- wiring (gateway_kit.app.create_app) --------------------------------------------------------------------


def install(app, m: Metrics | None) -> None:
    """GET /metrics on the FastAPI app: m's figures (under gunicorn every worker's), written when the worker exits
    too. With metrics off (GATEWAY_METRICS, m None): GET /metrics answers a JSON 404 saying so."""
    from fastapi.responses import Response

    if m is None:
        message = "metrics are turned off on this replica (GATEWAY_METRICS=off)"

        def metrics_off():
            return error_response(404, "metrics_off", message)

        app.add_api_route("/metrics", metrics_off, methods=["GET"], include_in_schema=False)
        return
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
    from prometheus_client.multiprocess import MultiProcessCollector

    atexit.register(m.batch.write)  # a worker stopping writes its last second
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


class InFlight:
    """The ASGI middleware counting requests in progress."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.batch = metrics.batch

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not route_of(scope["path"]).llm:
            return await self.app(scope, receive, send)
        self.batch.started()
        try:
            await self.app(scope, receive, send)
        finally:
            self.batch.finished()
