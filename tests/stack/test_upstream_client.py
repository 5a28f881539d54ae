"""Provider calls share one keep-alive client per worker instead of MLflow's new connection per call."""

from __future__ import annotations

import asyncio
import logging

import pytest
import requests
from aiohttp import web

from gateway_kit.procs import free_port

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


def test_the_shared_client_sends_no_provider_cookie_back():
    """A provider's Set-Cookie (Cloudflare's bot cookie on api.openai.com, for one) is not sent back on the next
    call. MLflow's session per call keeps none; the kit's one session per worker carries every team's calls."""
    from gateway_kit import upstream

    async def calls() -> list[str | None]:
        received: list[str | None] = []

        async def provider(request: web.Request) -> web.Response:
            received.append(request.headers.get("Cookie"))
            answer = web.json_response({"id": "x"})
            answer.set_cookie("__cf_bm", "one-client-only", path="/")
            return answer

        app = web.Application()
        app.router.add_post("/v1/chat/completions", provider)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://localhost:{port}/v1"  # a host name: aiohttp keeps no cookie from an IP address
        try:
            for _ in range(2):
                async with upstream.call(f"{base}/chat/completions", base, {"model": "m"}, {}) as response:
                    assert response.status == 200
                    assert "__cf_bm" in response.headers.get("Set-Cookie", "")
        finally:
            await upstream.close()
            await runner.cleanup()
        return received

    assert asyncio.run(calls()) == [None, None]


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
