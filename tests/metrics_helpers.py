"""What the kit's /metrics exports, from gateway_kit.metrics itself (for the dashboard and alert checks)."""

from __future__ import annotations

import re

import yaml

from conftest import REPO

_METRIC_NAME = re.compile(r"\b(gateway_[a-z0-9_]+)\b")


def exported_sample_names() -> set[str]:
    """Every sample name /metrics can show: each metric exercised once in a private registry, then parsed."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from gateway_kit import metrics
    from gateway_kit.resilience import CircuitName, FallbackEvent
    from gateway_kit.usage import UsageRecord

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    m = metrics.Metrics(config, "replica-x", registry=CollectorRegistry())
    request = {"ts": "", "request_id": None, "route": "/v1/chat/completions", "endpoint": "chat", "status": 200}
    m.usage_recorded(
        UsageRecord(
            **request,
            model="gpt-4o-mini",
            latency_ms=12.0,
            ttft_ms=3.0,
            stream=True,
            prompt_tokens=3,
            completion_tokens=4,
            cached_tokens=1,
            reasoning_tokens=1,
            client="team-a",
            cost_usd=0.01,
        )
    )
    m.usage_recorded(UsageRecord(**request, model="new-model", prompt_tokens=3, completion_tokens=4, cost_usd=None))
    m.upstream_called("https://api.openai.com/v1", "200", 0.1)
    m.in_flight.inc()
    m.ledger_failures.inc()
    m.rate_limited("requests_per_minute", "chat", "team-a")
    m.budget_rejected("usd_per_day", "chat", "team-a")
    m.fallback_served(FallbackEvent(None, "chat", "azure-chat", "http_500", ("chat", "azure-chat")))
    m.circuit_changed(CircuitName("https://api.openai.com/v1", "gpt-4o-mini"), "closed", "open")
    text = generate_latest(m.registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def metric_names_in(expr: str) -> set[str]:
    return set(_METRIC_NAME.findall(expr))


def dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expression) of every target of every panel, rows included."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], target["expr"]))
    return found


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, as Grafana sends it."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace('"$endpoint"', '".*"')
        .replace('"$client"', '".*"')
    )
