"""The private names of MLflow, FastAPI/Starlette and prometheus_client that the kit relies on still exist and
still have the parameters it calls them with (gateway_kit.private_api). After an upgrade, a failure here names
the symbol that moved. Read private_api.py's table for what the kit loses without it."""

from __future__ import annotations

import ast
import importlib
import inspect
from contextvars import ContextVar
from pathlib import Path

import pytest
import yaml

from gateway_kit import private_api
from gateway_kit.private_api import RELIED_ON

REPO = Path(__file__).resolve().parents[2]
LLM_ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/gateway/chat/invocations"]


def resolve(symbol: str):
    module_name, _, path = symbol.partition(":")
    found = importlib.import_module(module_name)
    for part in path.split("."):
        assert hasattr(found, part), f"{symbol}: {module_name} has no {path} any more (gateway_kit/private_api.py)"
        found = getattr(found, part)
    return found


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize("symbol", sorted(RELIED_ON))
def test_every_private_name_the_kit_relies_on_still_exists_with_its_parameters(symbol):
    found = resolve(symbol)
    expected = RELIED_ON[symbol]
    if expected is not None:
        missing = [name for name in expected if name not in parameters(found)]
        assert not missing, f"{symbol} lost the parameters {missing}: it has {parameters(found)}"


def test_mlflows_provider_post_has_the_exact_contract_the_shared_client_keeps():
    post = private_api.ProviderPost()
    assert post.parameters() == private_api.PROVIDER_POST_PARAMETERS, (
        f"mlflow.gateway.providers.utils._aiohttp_post now takes {post.parameters()}"
    )
    assert post.replaceable(), "mlflow.gateway.providers.utils lost _STRIPPED_HEADERS or SUPPORTED_ACCEPT_ENCODING"
    parts = private_api.provider_post_parts()
    assert isinstance(parts.stripped_headers, frozenset) and "accept-encoding" in parts.stripped_headers
    assert isinstance(parts.accept_encoding, str)
    assert parts.append_to_uri_path("http://h:1/v1", "chat/completions") == "http://h:1/v1/chat/completions"
    assert isinstance(private_api.provider_call_duration(), ContextVar)


@pytest.fixture(scope="module")
def app():
    """MLflow's app for the kit's config.yaml, as create_app builds it (no middleware of the kit)."""
    from mlflow.gateway.app import create_app_from_config
    from mlflow.gateway.config import GatewayConfig

    from gateway_kit.app import mlflow_view
    from gateway_kit.preflight import with_dummy_keys

    config = with_dummy_keys(yaml.safe_load((REPO / "config.yaml").read_text()))
    return create_app_from_config(GatewayConfig(**mlflow_view(config)))


def test_mlflows_app_still_has_the_attributes_the_kit_reads(app):
    assert "chat" in private_api.gateway_endpoints(app), "GatewayAPI.dynamic_endpoints"
    assert "chat-split" in private_api.gateway_routes(app), "GatewayAPI.traffic_routes"
    assert parameters(app._get_provider_by_name) == ["name"], "GatewayAPI._get_provider_by_name(name)"
    assert hasattr(app.router, "middleware_stack"), "starlette Router.middleware_stack"
    assert hasattr(app.router, "lifespan_context"), "starlette Router.lifespan_context"
    native, config = getattr(app, "_native_telemetry", None), getattr(app, "_telemetry", None)
    assert isinstance(config, dict), "FastAPI._telemetry"
    assert getattr(native, "config", None) is config and callable(native.enabled), "FastAPI._native_telemetry"
    assert private_api.TELEMETRY_SCOPE_KEY in inspect.getsource(type(app).__mro__[1].__call__), (
        f"FastAPI.__call__ no longer reads scope[{private_api.TELEMETRY_SCOPE_KEY!r}]"
    )


def test_starlettes_streaming_response_still_keeps_its_body_iterator():
    from starlette.responses import StreamingResponse

    response = StreamingResponse(iter([b"data: x\n\n"]), media_type="text/event-stream")
    assert hasattr(response, "body_iterator"), "starlette StreamingResponse.body_iterator"


@pytest.mark.parametrize("path", LLM_ROUTES)
def test_fastapi_routes_still_have_the_shape_the_fast_table_reads(app, path):
    route = next(r for r in app.router.routes if getattr(r, "path", None) == path)
    attributes = ["dependant", "_embed_body_fields", "stream_item_field", "response_field", "param_convertors"]
    for name in attributes + ["response_class", "response_model_include", "response_model_exclude_none"]:
        assert hasattr(route, name), f"fastapi APIRoute.{name}"
    for name in ("call", "request_param_name", "body_params", "path_params", "security_scopes_param_name"):
        assert hasattr(route.dependant, name), f"fastapi Dependant.{name}"
    shape = private_api.route_shape(route)
    assert shape is not None, f"{path}: private_api.route_shape no longer recognises MLflow's route"
    assert {"value", "values", "loc"} <= set(parameters(shape.validate)), "fastapi ModelField.validate"
    assert not private_api.matched_by_earlier(path, []), "starlette BaseRoute.matches / Match"


@pytest.mark.parametrize("path", LLM_ROUTES)
def test_a_request_the_fast_table_serves_looks_routed_as_starlettes_router_leaves_it(app, path):
    from starlette.routing import Match

    route = next(r for r in app.router.routes if getattr(r, "path", None) == path)
    probe = {"type": "http", "path": path, "root_path": "", "method": "POST", "headers": []}
    match, child_scope = route.matches(probe)
    assert match == Match.FULL
    routed = {}
    private_api.as_routed(routed, app.router, route)
    # starlette Router.app: scope["router"], scope["route"], then the route's child scope
    assert routed == {"router": app.router, "route": route, **child_scope}


def test_prometheus_histograms_still_keep_bounds_buckets_and_sum():
    from prometheus_client import CollectorRegistry, Histogram

    child = Histogram("h_seconds", "h", ["a"], buckets=(1, 2), registry=CollectorRegistry()).labels("x")
    parts = private_api.histogram_parts(child)
    assert parts is not None, "prometheus_client Histogram child's _upper_bounds, _buckets, _sum"
    bounds, buckets, total = parts
    assert list(bounds) == [1, 2, float("inf")] and len(buckets) == 3 and hasattr(total, "inc")


# Names only private_api.py may use: an attribute or an imported name of a library's internals.
PRIVATE_ATTRIBUTES = {
    "_aiohttp_post",
    "_STRIPPED_HEADERS",
    "SUPPORTED_ACCEPT_ENCODING",
    "_get_provider_by_name",
    "dynamic_endpoints",
    "traffic_routes",
    "make_streaming_response",
    "body_iterator",
    "dependant",
    "_embed_body_fields",
    "stream_item_field",
    "middleware_stack",
    "lifespan_context",
    "_native_telemetry",
    "_telemetry",
    "jsonable_encoder",
    "_names_to_collectors",
    "__gateway_kit__",
    "__gateway_timed__",
    "_upper_bounds",
    "_buckets",
    "_sum",
}
# module -> the names imported from it that are internals ("*": every name; also `import module` itself)
PRIVATE_IMPORTS = {
    "mlflow.gateway.providers": {"utils"},
    "mlflow.gateway.providers.utils": "*",
    "mlflow.gateway.ssrf": "*",
    "mlflow.utils.uri": "*",
    "mlflow.gateway.app": {"make_streaming_response", "GatewayAPI"},
    "fastapi": {"encoders"},
    "fastapi.encoders": "*",
    "fastapi.routing": {"serialize_response"},
    "fastapi.datastructures": {"DefaultPlaceholder"},
    "starlette.routing": {"Match"},
    "prometheus_client": {"REGISTRY"},
}
PATCHED_MODULES = {"mlflow.gateway.app", "mlflow.gateway.providers.utils", "fastapi.encoders"}


MODULES = sorted(str(p.relative_to(REPO / "gateway_kit")) for p in (REPO / "gateway_kit").rglob("*.py"))


@pytest.mark.parametrize("path", [m for m in MODULES if m != "private_api.py"])
def test_no_other_module_reaches_into_a_librarys_internals(path):
    tree = ast.parse((REPO / "gateway_kit" / path).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            found.add(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Constant) and node.value == private_api.TELEMETRY_SCOPE_KEY:
            found.add(f"line {node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr", "setattr"):
            name = node.args[1] if len(node.args) > 1 else None
            if isinstance(name, ast.Constant) and name.value in PRIVATE_ATTRIBUTES:
                found.add(f"line {node.lineno}: {node.func.id}(..., {name.value!r})")
        elif isinstance(node, ast.ImportFrom) and node.module in PRIVATE_IMPORTS:
            private = PRIVATE_IMPORTS[node.module]
            for alias in node.names:
                if private == "*" or alias.name in private:
                    found.add(f"line {node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if (
                    alias.name in PATCHED_MODULES
                    or alias.name in PRIVATE_IMPORTS
                    and PRIVATE_IMPORTS[alias.name] == "*"
                ):
                    found.add(f"line {node.lineno}: import {alias.name}")
    assert not found, f"gateway_kit/{path} uses a library's internals: {sorted(found)} — go through private_api.py"


# ----------------------------------------------------------------- the one patch point of _aiohttp_post
@pytest.fixture
def provider_post(monkeypatch):
    """A ProviderPost of its own; MLflow's function is put back after the test."""
    from mlflow.gateway.providers import utils

    monkeypatch.setattr(utils, "_aiohttp_post", utils._aiohttp_post)
    return private_api.ProviderPost(), utils


def test_with_the_shared_client_in_place_calls_are_not_wrapped_again(provider_post):
    post, utils = provider_post
    mlflows = utils._aiohttp_post
    shared = []
    assert post.share(lambda original: shared.append(original) or (lambda *a, **k: None))
    assert shared == [mlflows] and utils._aiohttp_post is post.shared
    assert post.share(lambda original: pytest.fail("shared twice"))  # once: still in place
    assert post.time(lambda original: pytest.fail("wrapped"))  # the shared client reports its calls itself
    assert utils._aiohttp_post is post.shared


def test_without_the_shared_client_the_function_in_place_is_wrapped_once(provider_post):
    post, utils = provider_post
    mlflows = utils._aiohttp_post
    assert post.time(lambda original: ("timed", original))
    assert utils._aiohttp_post == ("timed", mlflows) and post.timed is utils._aiohttp_post
    assert post.time(lambda original: pytest.fail("wrapped twice"))


def test_a_function_put_back_by_someone_else_is_replaced_again(provider_post):
    post, utils = provider_post
    mlflows = utils._aiohttp_post
    post.share(lambda original: lambda *a, **k: None)
    utils._aiohttp_post = mlflows
    post.share(lambda original: ("shared again", original))
    assert utils._aiohttp_post == ("shared again", mlflows)


def test_without_mlflows_function_nothing_is_timed(provider_post, monkeypatch):
    post, utils = provider_post
    monkeypatch.delattr(utils, "_aiohttp_post")
    assert post.time(lambda original: pytest.fail("nothing to wrap")) is False
    assert not post.replaceable() and post.parameters() is None
