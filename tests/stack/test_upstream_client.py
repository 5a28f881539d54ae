"""Provider calls share one keep-alive client per worker instead of MLflow's new connection per call."""

from __future__ import annotations

import logging

import pytest
import requests

pytestmark = [pytest.mark.integration]


def test_pinned_mlflow_still_has_the_function_the_kit_replaces():
    """Fails loudly when an MLflow upgrade renames or reshapes _aiohttp_post: the kit would fall back."""
    from mlflow.gateway.providers import utils

    from gateway_kit import private_api, upstream

    original = utils._aiohttp_post
    try:
        assert upstream.install() is True
        shared = utils._aiohttp_post
        assert shared is private_api.PROVIDER_POST.shared and shared is not original
        assert upstream.install() is True  # installing twice changes nothing
        assert utils._aiohttp_post is shared
    finally:
        utils._aiohttp_post = original


def test_a_changed_mlflow_keeps_stock_behaviour_with_a_warning(monkeypatch, caplog):
    from mlflow.gateway.providers import utils

    from gateway_kit import upstream

    async def reshaped(url, body):  # what a future MLflow might have instead
        raise AssertionError("not called")

    monkeypatch.setattr(utils, "_aiohttp_post", reshaped)
    with caplog.at_level(logging.WARNING, logger="gateway_kit.upstream"):
        assert upstream.install() is False
    assert utils._aiohttp_post is reshaped
    assert "upstream connections are not shared" in caplog.text


@pytest.mark.stack
def test_requests_reuse_upstream_connections(stack):
    requests.post(f"{stack.fake_url}/_fake/reset", timeout=5)
    body = {"messages": [{"role": "user", "content": "reuse the connection"}]}
    for _ in range(40):
        assert requests.post(f"{stack.url}/gateway/chat/invocations", json=body, timeout=10).status_code == 200
    stats = stack.fake_stats()
    assert stats["requests"] == 40
    # 2 replicas x 2 workers: at most one connection each, where MLflow alone opens 40.
    assert stats["connections"] <= 4, stats


@pytest.mark.stack
def test_a_dropped_connection_is_answered_and_the_next_request_still_served(stack):
    body = {"messages": [{"role": "user", "content": "[[fault:drop]]"}]}
    dropped = requests.post(f"{stack.url}/gateway/chat/invocations", json=body, timeout=10)
    assert dropped.status_code == 502 and dropped.json()["error"]["type"] == "upstream_unreachable"
    ok = {"messages": [{"role": "user", "content": "after the drop"}]}
    statuses = {
        requests.post(f"{stack.url}/gateway/chat/invocations", json=ok, timeout=10).status_code for _ in range(8)
    }
    assert statuses == {200}
