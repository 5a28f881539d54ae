"""The request grammar (gateway_kit.request): which route a path is, which endpoint a request is for, and the
body read once for every layer. No processes: paths and scopes in, what the kit makes of them out."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway_kit.request import (
    CONTROL,
    ENDPOINT,
    INVOCATIONS,
    MESSAGES,
    OTHER,
    PROBE,
    RESPONSES,
    V1,
    request_body,
    request_endpoint,
    route_of,
)


@pytest.mark.parametrize(
    ("path", "endpoint_type"),
    [
        ("/v1/chat/completions", "llm/v1/chat"),
        ("/v1/completions", "llm/v1/completions"),
        ("/v1/embeddings", "llm/v1/embeddings"),
    ],
)
def test_the_v1_routes_name_their_endpoint_in_the_body(path, endpoint_type):
    route = route_of(path)
    assert (route.kind, route.template, route.endpoint, route.endpoint_type) == (V1, path, None, endpoint_type)
    assert route.llm and route.model_in_body


@pytest.mark.parametrize(("path", "api"), [("/v1/messages", MESSAGES), ("/v1/responses", RESPONSES)])
def test_the_other_apis_routes_are_v1_routes_in_their_dialect(path, api):
    route = route_of(path)
    assert (route.kind, route.template, route.dialect) == (V1, path, api)
    assert route.llm and route.model_in_body
    assert route_of("/v1/chat/completions").dialect is None


def test_any_other_v1_path_is_an_llm_route_without_a_template():
    route = route_of("/v1/models")
    assert (route.kind, route.template, route.endpoint_type) == (V1, None, None)
    assert route.llm and route.model_in_body


@pytest.mark.parametrize("prefix", ["/gateway/", "/endpoints/"])
def test_an_invocations_path_names_its_endpoint(prefix):
    route = route_of(f"{prefix}chat-split/invocations")
    assert (route.kind, route.endpoint, route.template) == (
        INVOCATIONS,
        "chat-split",
        f"{prefix}{{endpoint}}/invocations",
    )
    assert route.llm and not route.model_in_body
    assert route.path_for("azure-chat") == f"{prefix}azure-chat/invocations"


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_probes_are_not_llm_routes(path):
    route = route_of(path)
    assert route.kind == PROBE and not route.llm and route.endpoint is None


@pytest.mark.parametrize("path", ["/-/reload", "/-/reload/check"])
def test_the_reload_requests_are_control_routes_not_llm_routes(path):
    route = route_of(path)
    assert route.kind == CONTROL and not route.llm and route.endpoint is None


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/-/",
        "/-/reload/",
        "/v2/chat",
        "/v1",  # no trailing slash: not under /v1/
        "/gateway/invocations",  # no endpoint name
        "/gateway/a/b/invocations",  # an endpoint name is one path segment
        "/gateway/chat/invocations/more",
        "/api/2.0/gateway/routes/",
        "/health/",
    ],
)
def test_every_other_path_is_other(path):
    route = route_of(path)
    assert (route.kind, route.endpoint, route.template, route.llm) == (OTHER, None, None, False)


def test_a_path_classified_again_gives_the_same_answer():
    assert route_of("/gateway/embeddings/invocations") == route_of("/gateway/embeddings/invocations")


# ---------------------------------------------------------------------------------------------- the endpoint
def scope_with_body(path: str, body: bytes | None = None) -> dict:
    scope = {"type": "http", "path": path, "headers": [], "state": {}}
    if body is not None:
        asyncio.run(request_body(scope, receiver([body])))
    return scope


def test_the_path_names_the_endpoint_of_an_invocation():
    assert request_endpoint(scope_with_body("/endpoints/chat/invocations")) == "chat"


def test_on_v1_the_body_names_the_endpoint_once_it_is_read():
    scope = scope_with_body("/v1/chat/completions")
    assert request_endpoint(scope) is None and ENDPOINT not in scope["state"]  # not read: not decided
    asyncio.run(request_body(scope, receiver([b'{"model": "chat", "messages": []}'])))
    assert request_endpoint(scope) == "chat"
    assert scope["state"][ENDPOINT] == "chat"


def test_a_tools_model_property_is_not_the_requests_model():
    tool = {"type": "function", "function": {"name": "f", "parameters": {"properties": {"model": {"type": "string"}}}}}
    body = json.dumps({"messages": [], "tools": [tool]}).encode()
    assert request_endpoint(scope_with_body("/v1/chat/completions", body)) is None


@pytest.mark.parametrize("body", [b"", b"not json", b'{"model": 7}', b'["chat"]', b"[" * 200 + b"]" * 200])
def test_a_v1_body_without_a_model_string_names_no_endpoint(body):
    assert request_endpoint(scope_with_body("/v1/chat/completions", body)) is None


def test_other_paths_name_no_endpoint():
    assert request_endpoint(scope_with_body("/health")) is None


# ---------------------------------------------------------------------------------------------- the body
def receiver(chunks: list[bytes], then: dict | None = None):
    """A client's receive: the body in `chunks`, then `then` (a disconnect by default); counts its calls."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    messages.append(then or {"type": "http.disconnect"})

    async def receive():
        receive.calls += 1
        return messages.pop(0) if len(messages) > 1 else messages[0]

    receive.calls = 0
    return receive


def test_the_body_is_read_once_and_every_later_layer_gets_it_replayed():
    client = receiver([b'{"model": ', b'"chat"}'])
    scope = {"type": "http", "path": "/v1/chat/completions", "headers": []}
    seen = []

    def layer(app):
        async def middleware(scope, receive, send):
            body, receive = await request_body(scope, receive)
            seen.append(body)
            await app(scope, receive, send)

        return middleware

    async def inner_app(scope, receive, send):
        seen.append(await receive())  # what MLflow's app reads: the body, whole
        seen.append(await receive())  # then the client's own message

    asyncio.run(layer(layer(layer(inner_app)))(scope, client, None))
    body = b'{"model": "chat"}'
    assert seen[:3] == [body, body, body]
    assert seen[3] == {"type": "http.request", "body": body, "more_body": False}
    assert seen[4] == {"type": "http.disconnect"}
    assert client.calls == 3  # two chunks and the disconnect: nothing read twice


def test_a_client_leaving_mid_body_leaves_no_body():
    client_messages = [{"type": "http.request", "body": b'{"mo', "more_body": True}, {"type": "http.disconnect"}]

    async def receive():
        return client_messages.pop(0)

    scope = {"type": "http", "path": "/v1/chat/completions", "headers": []}
    body, receive_on = asyncio.run(request_body(scope, receive))
    assert body is None and receive_on is receive
    assert request_endpoint(scope) is None
