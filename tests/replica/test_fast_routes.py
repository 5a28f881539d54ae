"""The hot routes served without FastAPI's routing machinery (gateway_kit.fast_routes) answer exactly as MLflow's
FastAPI app does: two replicas, one with GATEWAY_FAST_ROUTES=off, get the same requests, good and bad."""

from __future__ import annotations

import json

import pytest
import requests
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO, free_port, start_replica, stop_group

pytestmark = [pytest.mark.integration]

CHAT = {"messages": [{"role": "user", "content": "How fast is this gateway?"}]}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "description": None,
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "default": None}},
                "required": ["city"],
            },
        },
    }
]
DEEP = "[" * 100_000 + "]" * 100_000  # json.loads: RecursionError

# (path, body: dict, or raw bytes, content type)
CASES = [
    ("/v1/chat/completions", {**CHAT, "model": "chat"}, "application/json"),
    (
        "/v1/chat/completions",
        {**CHAT, "model": "chat", "temperature": 0.2, "max_tokens": 5, "stop": ["x"], "tools": TOOLS, "user": "u1"},
        "application/json",
    ),
    ("/v1/chat/completions", {**CHAT, "model": "chat", "stream": True}, "application/json"),
    ("/v1/chat/completions", {**CHAT, "model": "anthropic-chat"}, "application/json; charset=utf-8"),
    ("/v1/chat/completions", {**CHAT, "model": "chat-split"}, "application/vnd.api+json"),
    ("/v1/completions", {"model": "completions", "prompt": "Say hi"}, "application/json"),
    ("/v1/completions", {"model": "completions", "prompt": "Say hi", "stream": True}, "application/json"),
    ("/v1/embeddings", {"model": "embeddings", "input": ["a b", "c"]}, "application/json"),
    ("/gateway/chat/invocations", CHAT, "application/json"),
    ("/gateway/anthropic-chat/invocations", {**CHAT, "stream": True}, "application/json"),
    ("/endpoints/embeddings/invocations", {"input": "one"}, "application/json"),
    # what MLflow refuses, each must get MLflow's own answer
    ("/v1/chat/completions", {**CHAT, "model": "no-such-endpoint"}, "application/json"),
    ("/v1/chat/completions", {**CHAT, "model": "embeddings"}, "application/json"),
    ("/v1/chat/completions", {"model": "chat", "messages": "not a list"}, "application/json"),
    ("/v1/chat/completions", {"model": "chat"}, "application/json"),
    ("/v1/chat/completions", {**CHAT, "model": "chat", "temperature": "hot"}, "application/json"),
    ("/v1/chat/completions", [CHAT], "application/json"),
    ("/v1/chat/completions", b'{"model": "chat", "messages": [', "application/json"),
    ("/v1/chat/completions", b"", "application/json"),
    ("/v1/chat/completions", DEEP.encode(), "application/json"),
    ("/v1/chat/completions", json.dumps({**CHAT, "model": "chat"}).encode(), "text/plain"),
    ("/v1/chat/completions", json.dumps({**CHAT, "model": "chat"}).encode(), None),
    ("/v1/chat/completions", "\u00e9".encode("latin-1"), "application/json"),
    ("/gateway/chat/invocations", {"messages": []}, "application/json"),
    # the provider fails: MLflow's (and the kit's) error answers
    (
        "/v1/chat/completions",
        {"model": "chat", "messages": [{"role": "user", "content": "[[fault:500]]"}]},
        "application/json",
    ),
    ("/gateway/chat/invocations", {"messages": [{"role": "user", "content": "[[fault:garbage]]"}]}, "application/json"),
    ("/gateway/chat/invocations", {"messages": [{"role": "user", "content": "[[fault:401]]"}]}, "application/json"),
]


@pytest.fixture(scope="module")
def replicas(fake_upstream, tmp_path_factory):
    """{"fast": url, "stock": url}: the same kit, with and without the fast routes."""
    work = tmp_path_factory.mktemp("fast-routes")
    procs, urls = [], {}
    try:
        for name, setting in (("fast", "on"), ("stock", "off")):
            port = free_port()
            procs.append(
                start_replica(
                    work / name,
                    port,
                    GATEWAY_LEDGER_DIR=str(work / name / "ledger"),
                    GATEWAY_DEMO_UPSTREAM=fake_upstream,
                    GATEWAY_REPLICA_ID=name,
                    GATEWAY_FAST_ROUTES=setting,
                )
            )
            urls[name] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        for proc in procs:
            stop_group(proc.pid)


VOLATILE = {"id", "created"}


def comparable(response: requests.Response):
    """Status, content type and body, without the fake's random ids and timestamps."""
    kind = response.headers.get("content-type", "")

    def clean(value):
        return {k: v for k, v in value.items() if k not in VOLATILE} if isinstance(value, dict) else value

    if kind.startswith("text/event-stream"):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        body = [clean(json.loads(e)) if e.startswith("{") else e for e in events]
    elif kind.startswith("application/json"):
        body = clean(response.json())
    else:
        body = response.text
    return response.status_code, kind, body


@pytest.mark.parametrize("path, body, content_type", CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_the_fast_routes_answer_as_fastapi_does(replicas, path, body, content_type):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    fast, stock = (
        requests.post(f"{url}{path}", data=data, headers=headers, timeout=30)
        for url in (replicas["fast"], replicas["stock"])
    )
    assert comparable(fast) == comparable(stock)
    assert fast.headers.get("content-length") == stock.headers.get("content-length") or fast.headers[
        "content-type"
    ].startswith("text/event-stream")


def test_every_llm_route_of_the_config_is_served_fast():
    """Fails loudly when a FastAPI or MLflow upgrade reshapes the routes: they would quietly go slow again."""
    from mlflow.gateway.app import create_app_from_config
    from mlflow.gateway.config import GatewayConfig

    from gateway_kit import fast_routes
    from gateway_kit.app import mlflow_view
    from gateway_kit.preflight import with_dummy_keys

    config = with_dummy_keys(yaml.safe_load((REPO / "config.yaml").read_text()))
    app = create_app_from_config(GatewayConfig(**mlflow_view(config)))
    fast_routes.install(app)
    served = set(app.router.middleware_stack.routes)
    names = [e["name"] for e in config["endpoints"]] + [r["name"] for r in config.get("routes") or []]
    assert served == {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        *(f"/gateway/{n}/invocations" for n in names),
        *(f"/endpoints/{n}/invocations" for n in names),
    }
    assert fast_routes.quiet_telemetry(app, otel_configured=False) is True  # no OpenTelemetry: FastAPI stops asking


# --------------------------------------------------------------------- FastAPI's jsonable_encoder, the fast way
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["a", "_sa_x", "b", "type", "default"]), inner, max_size=3),
    max_leaves=8,
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]), "content": st.text(max_size=10) | st.none()},
    optional={"name": st.text(max_size=5), "extra": _json},
)
_chat = st.fixed_dictionaries(
    {"messages": st.lists(_message, min_size=1, max_size=3)},
    optional={
        "temperature": st.floats(0, 2),
        "max_tokens": st.integers(1, 100) | st.none(),
        "stop": st.lists(st.text(max_size=3)),
        "n": st.integers(1, 3),
        "user": st.text(max_size=5) | st.none(),
        "response_format": _json,
        "tools": st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.just("function"),
                    "function": st.fixed_dictionaries(
                        {"name": st.text(min_size=1, max_size=5)},
                        optional={"description": st.none() | st.text(max_size=5), "parameters": _json},
                    ),
                }
            ),
            max_size=2,
        ),
        "metadata": _json,
    },
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(body=_chat)
def test_the_fast_encoder_equals_fastapis_for_mlflow_payloads(body):
    from fastapi import encoders
    from mlflow.gateway.schemas import chat

    from gateway_kit import fast_routes

    original = encoders.jsonable_encoder
    try:
        payload = chat.RequestPayload(**body)
    except ValueError:
        return  # not a payload MLflow accepts: it never reaches the encoder
    try:
        fast_routes.fast_encoder()
        assert encoders.jsonable_encoder(payload, exclude_none=True) == original(payload, exclude_none=True)
        assert encoders.jsonable_encoder(payload) == original(payload)  # other calls: FastAPI's own
    finally:
        encoders.jsonable_encoder = original
