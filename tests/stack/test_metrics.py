"""Metrics and readiness: each replica's /metrics, a real Prometheus scraping the stack, GET /ready.

The Prometheus is Debian's (/usr/bin/prometheus), started on a free loopback port with the shipped
monitoring/prometheus.yml and alerts.yml; only its target list changes (the stack's replicas instead of
Docker's DNS) and the scrape interval is 1 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, clean_env, free_port, gone, start_replica, stop_group, wait_http
import gateway_kit
from gateway_kit import metrics
from gateway_kit.request import V1_ENDPOINT_TYPES
from gateway_kit.resilience import CircuitName, FallbackEvent
from gateway_kit.settings import Settings, SettingsError
from gateway_kit.usage import Ledger, UsageRecord
from metrics_helpers import as_promql, dashboard_exprs

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
STACK_UPSTREAM = "http://127.0.0.1:9000"  # the stack's fake upstream, borrowed by replicas of their own
ENDPOINTS = {e["name"] for e in CONFIG["endpoints"]} | {r["name"] for r in CONFIG.get("routes") or []}


# -------------------------------------------------------------------------------------- in-process, no server
@pytest.fixture
def m() -> metrics.Metrics:
    """Metrics in a private registry, told of events as the worker's registry tells them."""
    return metrics.Metrics(CONFIG, "replica-test", registry=CollectorRegistry())


def value(m, name: str, **labels) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def record(**fields) -> UsageRecord:
    base = {
        "ts": "",
        "request_id": "r1",
        "route": "/gateway/chat/invocations",
        "endpoint": "chat",
        "model": "gpt-4o-mini",
        "status": 200,
        "latency_ms": 250.0,
    }
    return UsageRecord(**{**base, **fields})


def test_a_record_counts_request_duration_tokens_and_cost(m):
    m.usage_recorded(record(prompt_tokens=10, completion_tokens=5, cached_tokens=4, client="team-a", cost_usd=0.25))
    m.usage_recorded(record(status=502, client="team-a"))
    labels = {"endpoint": "chat", "route": "/gateway/{endpoint}/invocations", "client": "team-a"}
    assert value(m, "gateway_requests_total", **labels, status_class="2xx") == 1
    assert value(m, "gateway_requests_total", **labels, status_class="5xx") == 1
    assert value(m, "gateway_request_duration_seconds_count", endpoint="chat", stream="false") == 2
    assert value(m, "gateway_request_duration_seconds_sum", endpoint="chat", stream="false") == 0.5
    tokens = {"endpoint": "chat", "model": "gpt-4o-mini", "client": "team-a"}
    assert [value(m, "gateway_tokens_total", **tokens, kind=k) for k in metrics.TOKEN_KINDS] == [10, 5, 4, 0]
    assert value(m, "gateway_cost_usd_total", **tokens) == 0.25
    assert value(m, "gateway_time_to_first_token_seconds_count", endpoint="chat") == 0


def test_cache_lookups_are_counted_and_a_hit_spends_no_tokens_or_dollars(m):
    for result in ("miss", "hit", "hit"):
        m.cache_looked_up("chat", "team-a", result)
    m.cache_looked_up("nowhere", None, "miss")
    assert value(m, "gateway_cache_hits_total", endpoint="chat", client="team-a") == 2
    assert value(m, "gateway_cache_misses_total", endpoint="chat", client="team-a") == 1
    assert value(m, "gateway_cache_misses_total", endpoint="unknown", client="anonymous") == 1
    m.usage_recorded(
        record(prompt_tokens=10, completion_tokens=5, client="team-a", cost_usd=0.0, cache="hit", saved_usd=0.25)
    )
    labels = {"endpoint": "chat", "route": "/gateway/{endpoint}/invocations", "client": "team-a", "status_class": "2xx"}
    assert value(m, "gateway_requests_total", **labels) == 1
    tokens = {"endpoint": "chat", "model": "gpt-4o-mini", "client": "team-a"}
    assert [value(m, "gateway_tokens_total", **tokens, kind=k) for k in metrics.TOKEN_KINDS] == [0, 0, 0, 0]
    assert value(m, "gateway_cost_usd_total", **tokens) == 0


def test_a_stream_records_its_time_to_first_token_and_an_unknown_price_is_counted_apart(m):
    m.usage_recorded(
        record(stream=True, ttft_ms=120.0, latency_ms=900.0, prompt_tokens=3, completion_tokens=7, cost_usd=None)
    )
    assert value(m, "gateway_time_to_first_token_seconds_sum", endpoint="chat") == 0.12
    assert value(m, "gateway_request_duration_seconds_count", endpoint="chat", stream="true") == 1
    assert value(m, "gateway_unpriced_requests_total", endpoint="chat", model="gpt-4o-mini") == 1
    assert value(m, "gateway_cost_usd_total", endpoint="chat", model="gpt-4o-mini", client="anonymous") == 0


def test_labels_stay_bounded_whatever_the_request_says(m):
    m.usage_recorded(record(endpoint="no-such-endpoint", route="/gateway/no-such-endpoint/invocations", status=404))
    m.usage_recorded(record(endpoint=None, route="/v1/whatever/you/like", status=404))
    m.usage_recorded(record(client='evil"client{}', status=200))
    for i in range(150):
        m.usage_recorded(record(client=f"client-{i}", model=f"model-{i}", prompt_tokens=1, cost_usd=0.0))
    samples = [s for f in m.registry.collect() for s in f.samples]
    endpoints = {s.labels["endpoint"] for s in samples if "endpoint" in s.labels}
    assert endpoints <= ENDPOINTS | {metrics.UNKNOWN}
    routes = {s.labels["route"] for s in samples if "route" in s.labels}
    assert routes == {"/gateway/{endpoint}/invocations", metrics.OTHER}
    clients = {s.labels["client"] for s in samples if "client" in s.labels}
    assert len(clients) == 102 and metrics.OTHER in clients and 'evil"client{}' not in clients
    models = {s.labels["model"] for s in samples if "model" in s.labels}
    assert len(models) == 101 and "model-149" not in models


def test_limits_fallbacks_and_breakers_are_counted_with_bounded_labels(m):
    m.rate_limited("requests_per_minute", "chat", "team-a")
    m.rate_limited("Free Text!", "made-up", None)
    m.budget_rejected("usd_per_day", "embeddings", "team-b")
    m.fallback_served(FallbackEvent("r1", "chat", "azure-chat", "http_500", ("chat", "azure-chat")))
    m.fallback_served(FallbackEvent("r2", "chat", "azure-chat", "no_answer_in_1.5s", ("chat", "azure-chat")))
    m.circuit_changed(CircuitName("https://user:secret@api.openai.com/v1", "gpt-4o-mini"), "closed", "open")
    m.circuit_changed(CircuitName("https://api.openai.com/v1", "text-embedding-3-small"), "open", "closed")
    m.limits_unenforced("open")
    m.limits_unenforced("open")
    assert value(m, "gateway_limits_unenforced_total", policy="open") == 2
    assert (
        value(m, "gateway_rate_limit_rejections_total", limit="requests_per_minute", endpoint="chat", client="team-a")
        == 1
    )
    assert value(m, "gateway_rate_limit_rejections_total", limit="other", endpoint="unknown", client="anonymous") == 1
    assert value(m, "gateway_budget_rejections_total", limit="usd_per_day", endpoint="embeddings", client="team-b") == 1
    assert value(m, "gateway_fallbacks_total", endpoint="chat", to="azure-chat", reason="http_500") == 1
    assert value(m, "gateway_fallbacks_total", endpoint="chat", to="azure-chat", reason="no_answer") == 1
    # one breaker per model of a provider: the sick model's is open, its neighbour's on the same host is not
    assert (
        value(
            m, "gateway_circuit_breaker_transitions_total", upstream="api.openai.com", model="gpt-4o-mini", state="open"
        )
        == 1
    )
    assert value(m, "gateway_circuit_breaker_open", upstream="api.openai.com", model="gpt-4o-mini") == 1
    assert value(m, "gateway_circuit_breaker_open", upstream="api.openai.com", model="text-embedding-3-small") == 0
    m.circuit_changed(CircuitName("https://api.openai.com/v1", "gpt-4o-mini"), "open", "half_open")
    assert value(m, "gateway_circuit_breaker_open", upstream="api.openai.com", model="gpt-4o-mini") == 0
    text = "".join(str(s) for f in m.registry.collect() for s in f.samples)
    assert "secret" not in text and "Free Text" not in text


def test_ledger_write_failures_are_counted_once_each(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    ledger = Ledger(blocked / "ledger", "r1", report_every_s=3600)
    m = metrics.Metrics(CONFIG, "r1", registry=CollectorRegistry(), ledgers=[ledger])
    for _ in range(3):
        ledger.append(record())
        m.usage_recorded(record())
    assert value(m, "gateway_ledger_write_failures_total") == 3


def test_a_worker_writes_its_figures_once_per_interval_and_histograms_match_observe():
    """Serving requests (a running event loop), the figures wait in memory for the next write; written, the
    batched histogram equals one built with observe(), at bucket edges and past the last bound too."""
    import asyncio

    from prometheus_client import Histogram

    m = metrics.Metrics(CONFIG, "r1", registry=CollectorRegistry(), flush_seconds=0.2)
    values = [0.0, 0.05, 0.051, 0.1, 0.3, 1, 2.5, 299.9, 300, 301, 1e9]

    async def serve():
        for latency_s in values:
            m.usage_recorded(record(latency_ms=latency_s * 1000))
        m.batch.started()
        assert (
            value(
                m,
                "gateway_requests_total",
                endpoint="chat",
                status_class="2xx",
                client="anonymous",
                route="/gateway/{endpoint}/invocations",
            )
            == 0
        )  # not yet written
        await asyncio.sleep(0.5)

    asyncio.run(serve())
    assert value(
        m,
        "gateway_requests_total",
        endpoint="chat",
        status_class="2xx",
        client="anonymous",
        route="/gateway/{endpoint}/invocations",
    ) == len(values)
    assert value(m, "gateway_requests_in_flight") == 1
    direct = CollectorRegistry()
    reference = Histogram("reference", "", buckets=metrics.DURATION_BUCKETS, registry=direct)
    for latency_s in values:
        reference.observe(latency_s)
    for bound in [*map(float, metrics.DURATION_BUCKETS), float("inf")]:
        le = "+Inf" if bound == float("inf") else str(bound)
        assert value(
            m, "gateway_request_duration_seconds_bucket", endpoint="chat", stream="false", le=le
        ) == direct.get_sample_value("reference_bucket", {"le": le}), le
    assert value(m, "gateway_request_duration_seconds_sum", endpoint="chat", stream="false") == pytest.approx(
        direct.get_sample_value("reference_sum")
    )


def test_a_bad_flush_interval_is_refused_with_what_to_set():
    def flush_seconds(environ):
        return Settings.from_env(environ).metrics_flush_seconds

    assert flush_seconds({}) == 1.0
    assert flush_seconds({"GATEWAY_METRICS_FLUSH_SECONDS": "0.25"}) == 0.25
    for bad in ("0", "-1", "soon", "600"):
        with pytest.raises(SettingsError, match="GATEWAY_METRICS_FLUSH_SECONDS"):
            flush_seconds({"GATEWAY_METRICS_FLUSH_SECONDS": bad})


# ------------------------------------------------------------------------------------ the stack + Prometheus
def replica_urls(stack) -> list[str]:
    """Each replica's own address (replica i listens on 127.0.10.i:8000), not nginx."""
    return [f"http://127.0.10.{name.split('-')[1]}:8000" for name in stack.replicas]


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    r = requests.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")  # every Prometheus reads it
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def scrape_until(url: str, done, timeout: float = 10) -> dict:
    """Scrape until done(samples): each worker writes its per-request figures once a second (Batch)."""
    deadline = time.monotonic() + timeout
    while not done(samples := scrape(url)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return samples


def total(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    """Debian's Prometheus with the shipped config, its DNS discovery replaced by the stack's replicas."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.fail("prometheus not found: apt-get install prometheus (scripts/setup.sh does)")
    work = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((REPO / "monitoring/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["global"]["scrape_timeout"] = "1s"
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mlflow-gateway"]
    targets = [u.removeprefix("http://") for u in replica_urls(stack)]
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": targets}]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(REPO / "monitoring/alerts.yml", work / "alerts.yml")
    port = free_port()
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/-/ready", timeout=60, proc=proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            up = query(url, 'sum(up{job="mlflow-gateway"})')
            if up == len(targets):
                break
            time.sleep(0.5)
        else:
            log_tail = (work / "prometheus.log").read_text()[-2000:]
            pytest.fail(f"Prometheus did not scrape {targets}: {log_tail}")
        yield url
    finally:
        stop_group(proc.pid)
        log.close()


def query(prom: str, expr: str) -> float | None:
    r = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert body["status"] == "success", (expr, body)
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def query_by(prom: str, expr: str, label: str) -> dict[str, float]:
    r = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10).json()
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in r["data"]["result"]}


def wait_for(prom: str, expr: str, expected: float, timeout: float = 30) -> float | None:
    deadline = time.monotonic() + timeout
    while True:
        got = query(prom, expr)
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def ledger_records(stack, client: str, expect: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for path in sorted((stack.state_dir / "ledger").glob("usage-*.jsonl")):
            found += [r for r in map(json.loads, path.read_text().splitlines()) if r.get("client") == client]
        if len(found) >= expect or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def send(url: str, client: str, path: str, body: dict, stream: bool = False) -> requests.Response:
    r = requests.post(f"{url}{path}", json=body, headers={"X-Gateway-Client": client}, stream=stream, timeout=30)
    if stream:
        r.content  # noqa: B018 - read the whole stream
    return r


@pytest.mark.integration
@pytest.mark.stack
def test_prometheus_sums_requests_tokens_and_cost_over_replicas_and_workers_as_sent(stack, prometheus):
    client = f"metrics-{uuid.uuid4().hex[:8]}"  # a label of our own: only this test's traffic carries it
    chat = {"messages": [{"role": "user", "content": "count me please"}]}
    statuses = []
    for url in replica_urls(stack):
        for _ in range(3):
            statuses.append(send(url, client, "/gateway/chat/invocations", chat).status_code)
        statuses.append(
            send(url, client, "/gateway/anthropic-chat/invocations", {**chat, "stream": True}, stream=True).status_code
        )
        embeddings = {"model": "embeddings", "input": ["a b", "c"]}
        statuses.append(send(url, client, "/v1/embeddings", embeddings).status_code)
        statuses.append(
            send(
                url, client, "/gateway/chat/invocations", {"messages": [{"role": "user", "content": "[[fault:500]]"}]}
            ).status_code
        )
    assert statuses == [200, 200, 200, 200, 200, 500] * 2

    sel = f'client="{client}"'
    assert wait_for(prometheus, f"sum(gateway_requests_total{{{sel}}})", 12) == 12
    by_class = query_by(prometheus, f"sum by (status_class) (gateway_requests_total{{{sel}}})", "status_class")
    assert by_class == {"2xx": 10, "5xx": 2}
    by_replica = query_by(prometheus, f"sum by (instance) (gateway_requests_total{{{sel}}})", "instance")
    assert by_replica == {u.removeprefix("http://"): 6 for u in replica_urls(stack)}
    by_route = query_by(prometheus, f"sum by (route) (gateway_requests_total{{{sel}}})", "route")
    assert by_route == {"/gateway/{endpoint}/invocations": 10, "/v1/embeddings": 2}

    records = ledger_records(stack, client, expect=12)
    assert len(records) == 12
    for kind in ("prompt", "completion"):
        in_ledger = sum(r[f"{kind}_tokens"] for r in records)
        assert in_ledger > 0
        assert query(prometheus, f'sum(gateway_tokens_total{{{sel}, kind="{kind}"}})') == in_ledger
    by_model = query_by(prometheus, f'sum by (model) (gateway_tokens_total{{{sel}, kind="prompt"}})', "model")
    assert by_model == {
        m: sum(r["prompt_tokens"] for r in records if r["model"] == m)
        for m in {r["model"] for r in records if r["prompt_tokens"]}
    }
    cost = sum(r["cost_usd"] for r in records if r["cost_usd"])
    assert cost > 0
    assert query(prometheus, f"sum(gateway_cost_usd_total{{{sel}}})") == pytest.approx(cost, rel=1e-9)

    # The same figures straight from each replica's /metrics, parsed with the official parser.
    scraped = [
        scrape_until(url, lambda s: total(s, "gateway_requests_total", client=client) == 6)
        for url in replica_urls(stack)
    ]
    assert sum(total(s, "gateway_requests_total", client=client) for s in scraped) == 12
    scraped_cost = sum(total(s, "gateway_cost_usd_total", client=client) for s in scraped)
    assert scraped_cost == pytest.approx(cost, rel=1e-9)
    for s in scraped:
        assert total(s, "gateway_upstream_requests_total", upstream="127.0.0.1:9000", status="500") >= 1
        assert total(s, "gateway_build_info", version=gateway_kit.__version__, mlflow_version="3.17.2") == 1


@pytest.mark.integration
@pytest.mark.stack
def test_streams_report_time_to_first_token_and_in_flight_requests(stack):
    url = replica_urls(stack)[0]
    before = scrape(url)
    body = {"messages": [{"role": "user", "content": "[[chunk_delay:300]] one two three four five"}], "stream": True}
    thread = threading.Thread(target=send, args=(url, "metrics-stream", "/gateway/chat/invocations", body, True))
    thread.start()
    try:
        deadline, during = time.monotonic() + 10, 0.0
        while time.monotonic() < deadline and not during:
            during = total(scrape(url), "gateway_requests_in_flight")
            time.sleep(0.1)
    finally:
        thread.join(timeout=30)
    assert during >= 1
    ttft = "gateway_time_to_first_token_seconds_count"
    after = scrape_until(url, lambda s: total(s, ttft, endpoint="chat") > total(before, ttft, endpoint="chat"))
    assert total(after, "gateway_requests_in_flight") == 0
    assert total(after, ttft, endpoint="chat") == total(before, ttft, endpoint="chat") + 1


@pytest.mark.integration
@pytest.mark.stack
def test_garbage_model_names_paths_and_clients_create_no_label_values(stack):
    garbage = f"garbage{uuid.uuid4().hex[:8]}"
    url = replica_urls(stack)[0]
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    send(url, "metrics-garbage", "/v1/chat/completions", {**chat, "model": garbage})
    send(url, "metrics-garbage", f"/gateway/{garbage}/invocations", chat)
    send(url, "metrics-garbage", f"/v1/{garbage}", chat)
    send(url, f"{garbage} with spaces", "/gateway/chat/invocations", chat)
    samples = scrape_until(url, lambda s: total(s, "gateway_requests_total", client="metrics-garbage") >= 3)
    assert not [key for key in samples if garbage in str(key)]
    labels = [dict(ls) for _, ls in samples]
    assert {ls["endpoint"] for ls in labels if "endpoint" in ls} <= ENDPOINTS | {"unknown"}
    assert {ls["route"] for ls in labels if "route" in ls} <= {
        "/gateway/{endpoint}/invocations",
        "/endpoints/{endpoint}/invocations",
        *V1_ENDPOINT_TYPES,
        "other",
    }
    assert total(samples, "gateway_requests_total", client="metrics-garbage", endpoint="unknown") == 3


@pytest.mark.integration
@pytest.mark.stack
def test_metrics_are_not_served_through_nginx(stack):
    for path in ("/metrics", "/metrics?format=text", "//metrics", "/%6Detrics"):
        r = requests.get(f"{stack.url}{path}", timeout=10)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["type"] == "not_found"
        assert "port 8000" in r.json()["error"]["message"]
    assert requests.get(f"{replica_urls(stack)[0]}/metrics", timeout=10).status_code == 200


@pytest.mark.integration
@pytest.mark.stack
def test_every_dashboard_and_alert_expression_is_valid_promql_for_real_prometheus(prometheus):
    dashboard = json.loads((REPO / "monitoring/grafana/dashboards/gateway.json").read_text())
    for title, expr in dashboard_exprs(dashboard):
        r = requests.get(f"{prometheus}/api/v1/query", params={"query": as_promql(expr)}, timeout=10).json()
        assert r["status"] == "success", (title, expr, r)
    groups = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    shipped = yaml.safe_load((REPO / "monitoring/alerts.yml").read_text())["groups"][0]["rules"]
    assert len(rules) == len(shipped)
    assert all(rule["health"] in ("ok", "unknown") for rule in rules), rules
    # With the stack up, Prometheus has every replica, and the alert for a down replica does not fire.
    assert query(prometheus, 'count(up{job="mlflow-gateway"} == 1)') == 2


@pytest.mark.integration
@pytest.mark.stack
def test_stack_replicas_are_ready_say_why_and_serve_the_same_config(stack):
    hashes = set()
    for url in [*replica_urls(stack), stack.url]:
        r = requests.get(f"{url}/ready", timeout=10)
        assert r.status_code == 200, r.text
        served = r.json()["config_hash"]
        assert r.json() == {"status": "ready", "config_hash": served, "checks": {"config": "ok"}}
        hashes.add(served)
    assert len(hashes) == 1 and len(served) == 12, hashes


@pytest.mark.integration
@pytest.mark.stack
def test_check_gateway_reports_readiness(stack):
    result = subprocess.run(
        [str(REPO / "scripts/check_gateway.sh"), "--url", stack.url, "--no-chat"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GET /ready -> 200" in result.stdout + result.stderr


# -------------------------------------------------------------------------------------- a replica of our own
def start_redis(port: int, work: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    ping = ["redis-cli", "-p", str(port), "ping"]
    while subprocess.run(ping, capture_output=True, text=True, check=False).stdout.strip() != "PONG":
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.1)
    return proc


def worker_pids(master: int) -> list[int]:
    ps = ["ps", "-o", "pid=", "--ppid", str(master)]
    out = subprocess.run(ps, capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


@pytest.mark.integration
@pytest.mark.stack  # borrows the stack's fake upstream on :9000
def test_readiness_follows_redis_and_worker_restarts_keep_the_counts(stack, tmp_path):
    redis_port, port = free_port(), free_port()
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the ledger directory should be")
    stale = tmp_path / "run" / "metrics" / "counter_424242.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from an earlier run")
    redis = start_redis(redis_port, tmp_path)
    gateway = start_replica(
        tmp_path,
        port,
        GATEWAY_WORKERS="2",
        GATEWAY_DEMO_UPSTREAM=STACK_UPSTREAM,
        GATEWAY_READY_REDIS="on",
        GATEWAY_LEDGER_DIR=str(blocked / "ledger"),
        GATEWAY_REDIS_URL=f"redis://:s3cret-pass@127.0.0.1:{redis_port}/0",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        assert not stale.exists()  # a replica starts its counts from zero
        r = requests.get(f"{url}/ready", timeout=10)
        assert r.status_code == 200 and r.json()["checks"] == {"config": "ok", "redis": "ok"}, r.text

        stop_group(redis.pid)
        r = requests.get(f"{url}/ready", timeout=10)
        assert r.status_code == 503
        assert r.json()["status"] == "not ready" and r.json()["error"]["type"] == "not_ready"
        assert f"redis: cannot reach redis://:***@127.0.0.1:{redis_port}/0" in r.json()["error"]["message"]
        assert "s3cret" not in r.text
        assert requests.get(f"{url}/health", timeout=10).status_code == 200  # alive, just not ready

        redis = start_redis(redis_port, tmp_path)
        assert requests.get(f"{url}/ready", timeout=10).status_code == 200

        chat = {"messages": [{"role": "user", "content": "hi"}]}
        statuses = [send(url, "metrics-own", "/gateway/chat/invocations", chat).status_code for _ in range(6)]
        assert statuses == [200] * 6
        samples = scrape_until(url, lambda s: total(s, "gateway_requests_total", client="metrics-own") == 6)
        assert total(samples, "gateway_requests_total", client="metrics-own") == 6
        assert total(samples, "gateway_ledger_write_failures_total") == 6

        # A worker killed outright: gunicorn starts another; the dead one's counts stay in the sums and its
        # live gauges are dropped (child_exit -> mark_process_dead).
        victim = worker_pids(gateway.pid)[0]
        os.kill(victim, signal.SIGKILL)
        assert gone(victim, 10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = worker_pids(gateway.pid)
            if len(workers) == 2 and victim not in workers:
                break
            time.sleep(0.2)
        metrics_dir = tmp_path / "run" / "metrics"
        assert not list(metrics_dir.glob(f"gauge_live*_{victim}.db"))
        samples = scrape(url)
        assert total(samples, "gateway_requests_total", client="metrics-own") == 6
        assert total(samples, "gateway_requests_in_flight") == 0
    finally:
        stop_group(gateway.pid)
        stop_group(redis.pid)


@pytest.mark.integration
@pytest.mark.stack  # borrows the stack's fake upstream on :9000
def test_metrics_off_leaves_no_files_and_says_so_on_metrics(stack, tmp_path):
    port = free_port()
    gateway = start_replica(
        tmp_path,
        port,
        GATEWAY_WORKERS="2",
        GATEWAY_DEMO_UPSTREAM=STACK_UPSTREAM,
        GATEWAY_METRICS="off",
        GATEWAY_LEDGER_DIR=str(tmp_path / "ledger"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        r = send(url, "metrics-off", "/gateway/chat/invocations", chat)
        assert r.status_code == 200
        r = requests.get(f"{url}/metrics", timeout=10)
        assert r.status_code == 404
        assert r.json()["error"] == {
            "type": "metrics_off",
            "message": "metrics are turned off on this replica (GATEWAY_METRICS=off)",
        }
        assert requests.get(f"{url}/ready", timeout=10).status_code == 200
        assert not (tmp_path / "run" / "metrics").exists()
    finally:
        stop_group(gateway.pid)


@pytest.mark.integration
@pytest.mark.stack  # borrows the stack's fake upstream on :9000
def test_provider_calls_are_counted_with_mlflows_own_client_too(stack, tmp_path):
    """GATEWAY_SHARED_UPSTREAM_CLIENT=off: MLflow's per-call client, wrapped to report each call."""
    port = free_port()
    gateway = start_replica(
        tmp_path,
        port,
        GATEWAY_WORKERS="1",
        GATEWAY_DEMO_UPSTREAM=STACK_UPSTREAM,
        GATEWAY_SHARED_UPSTREAM_CLIENT="off",
        GATEWAY_LEDGER_DIR="off",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        statuses = [send(url, "metrics-mlflow-client", "/gateway/chat/invocations", chat).status_code for _ in range(2)]
        assert statuses == [200, 200]
        samples = scrape_until(
            url, lambda s: total(s, "gateway_upstream_requests_total", upstream="127.0.0.1:9000", status="200") >= 2
        )
        assert total(samples, "gateway_upstream_requests_total", upstream="127.0.0.1:9000", status="200") == 2
        assert total(samples, "gateway_upstream_duration_seconds_count", upstream="127.0.0.1:9000") == 2
    finally:
        stop_group(gateway.pid)
