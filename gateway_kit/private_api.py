"""Every private name of MLflow, FastAPI/Starlette, prometheus_client and uvicorn that the kit relies on, in one file.

Private here means underscore-prefixed, or a name that is not in the library's documentation and that it may
change in any release. The rest of the kit gets these objects from this module, never from the libraries
themselves. Upgrading MLflow (or FastAPI, Starlette, prometheus_client) means: read this file, then run
tests/unit/test_private_api.py. That test checks every name in RELIED_ON (and the attributes of the objects
below) and names the one that is gone or has changed. Where a name is gone, the kit keeps the library's own
behaviour and says so in a warning; nothing fails to start.

| private name | used by | why |
| --- | --- | --- |
| `mlflow.gateway.providers.utils._aiohttp_post` | upstream | every provider call goes through it: the kit's keep-alive client replaces it, or (shared client off) a wrapper reports each call (ProviderPost) |
| `…providers.utils._STRIPPED_HEADERS`, `SUPPORTED_ACCEPT_ENCODING` | upstream | the replacement strips and sets the same headers as MLflow's function |
| `mlflow.gateway.ssrf.upstream_protection_enabled`, `mlflow.utils.uri.append_to_uri_path` | upstream | the same SSRF rule and URL join as MLflow's function |
| `…providers.utils.provider_call_duration_ms` | request_errors | whether a bad value came from the client (400) or the provider's answer (502) |
| `mlflow.gateway.app.make_streaming_response`, `StreamingResponse.body_iterator` | app | streams end with `data: [DONE]`, the events ready together in one write (the kit wraps it where mlflow.gateway.app calls it) |
| `GatewayAPI._get_provider_by_name` | fast_routes | a /v1 call gets its provider object from a cache instead of building one |
| `GatewayAPI.dynamic_endpoints`, `.traffic_routes` | readiness, request_errors | which endpoints the app serves, for /ready and error messages |
| APIRoute internals: `dependant` (its fields), `_embed_body_fields`, `stream_item_field`, `response_field`, `param_convertors`, `fastapi.datastructures.DefaultPlaceholder` | fast_routes | which routes the fast table may serve as FastAPI would (route_shape) |
| `fastapi.routing.serialize_response`, the body field's `validate(value, values, *, loc)` | fast_routes, per request | the same validation and serialisation as FastAPI's route |
| the scope keys Starlette's routing sets (`router`, `endpoint`, `route`, `path_params`) | fast_routes, per request | a request the table serves looks routed to FastAPI's handlers (as_routed) |
| `Router.middleware_stack`, `starlette.routing.Match` | fast_routes | the table sits in front of the router; a route an earlier one shadows stays FastAPI's |
| `FastAPI._native_telemetry`, `FastAPI._telemetry`, scope key `"fastapi.telemetry"` | fast_routes | FastAPI's telemetry turned off when nothing collects it; a telemetry request goes to FastAPI |
| `fastapi.encoders.jsonable_encoder` (as MLflow's providers import it, on each call) | fast_routes | the fast encoder for MLflow's exact call |
| `Router.lifespan_context` | upstream | the shared client is closed after MLflow's own shutdown |
| `Histogram` children's `_upper_bounds`, `_buckets`, `_sum` | metrics | a second's observations are written with one write per bucket |
| `uvicorn.protocols.http.auto.AutoHTTPProtocol`, its `shutdown()` and `cycle` | worker | a stopping worker (a replica's stop, a reload's old workers) answers a request that reached it as it stopped, instead of closing the connection on it |

Nothing heavy is imported at import time. Each library is imported inside the function that needs it, so any
module may import this one: gunicorn's master, preflight and the CLIs load neither FastAPI nor MLflow through
it. The functions here run at start-up or when a request fails, with two exceptions: the wrapper of
make_streaming_response runs once per stream, as it did in app.py, and as_routed once per request the fast
table serves (the dict update fast_routes made itself). The two objects the hot path calls (serialize_response, a body field's validate)
are handed out once, and their callers keep them.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

# Every module-level name the kit relies on: "module:attribute" -> the parameter names the kit calls it with
# (a function), or None (an object: it must exist). tests/unit/test_private_api.py checks each, and the
# attributes of the instances (routes, apps, histograms) that the functions below read.
PROVIDER_POST_PARAMETERS = ["headers", "base_url", "path", "payload", "ssrf_protect"]
RELIED_ON: dict[str, list[str] | None] = {
    "uvicorn.protocols.http.auto:AutoHTTPProtocol.shutdown": ["self"],
    "mlflow.gateway.providers.utils:_aiohttp_post": PROVIDER_POST_PARAMETERS,
    "mlflow.gateway.providers.utils:_STRIPPED_HEADERS": None,
    "mlflow.gateway.providers.utils:SUPPORTED_ACCEPT_ENCODING": None,
    "mlflow.gateway.providers.utils:provider_call_duration_ms": None,
    "mlflow.gateway.ssrf:upstream_protection_enabled": [],
    "mlflow.utils.uri:append_to_uri_path": ["uri", "paths"],
    "mlflow.gateway.app:make_streaming_response": ["resp"],
    "mlflow.gateway.app:GatewayAPI._get_provider_by_name": ["self", "name"],
    "fastapi.routing:serialize_response": ["field", "response_content", "dump_json"],
    "fastapi.datastructures:DefaultPlaceholder": None,
    "fastapi.encoders:jsonable_encoder": ["obj", "exclude_none"],
    "fastapi.applications:FastAPI.__call__": ["self", "scope", "receive", "send"],
    "starlette.routing:Match.FULL": None,
    "starlette.routing:BaseRoute.matches": ["self", "scope"],
}

# The scope key FastAPI's own telemetry sets: such a request goes through FastAPI's app, not the fast table.
TELEMETRY_SCOPE_KEY = "fastapi.telemetry"


# ---------------------------------------------------------------------------------------------------- MLflow
class ProviderPost:
    """`mlflow.gateway.providers.utils._aiohttp_post`, the one function every MLflow provider calls its upstream
    through (it returns an async context manager for the response). gateway_kit.upstream changes it one of two
    ways, through this one patch point (create_app picks one):

    1. `share(make)`, from upstream.install: `make(MLflow's function)` goes in its place, the kit's keep-alive
       client, which reports each call to the worker's events itself. It still calls MLflow's own function for
       an SSRF-protected call.
    2. `time(wrap)`, from upstream.time_calls (the shared client off: the trace headers, and the calls reported):
       `wrap(what is in place)` goes in its place. With the shared client in place it changes nothing: that
       client reports its calls already.

    Each step is done once: asked again while its function is still in place, it changes nothing and answers
    True. The kit knows its own functions by identity (`shared`, `timed`), not by marks on them.
    """

    def __init__(self) -> None:
        self.shared: Callable | None = None  # what share() put in place
        self.timed: Callable | None = None  # what time() put in place

    @staticmethod
    def _utils():
        from mlflow.gateway.providers import utils

        return utils

    def in_place(self) -> Callable | None:
        """The function MLflow calls now (its own, or the kit's); None if MLflow has none."""
        return getattr(self._utils(), "_aiohttp_post", None)

    def parameters(self) -> list[str] | None:
        """The parameter names of the function in place (None: there is none)."""
        found = self.in_place()
        return list(inspect.signature(found).parameters) if found is not None else None

    def replaceable(self) -> bool:
        """MLflow's function has the contract the kit's client keeps, and the header rules it copies exist."""
        utils = self._utils()
        helpers = all(hasattr(utils, name) for name in ("_STRIPPED_HEADERS", "SUPPORTED_ACCEPT_ENCODING"))
        return self.parameters() == PROVIDER_POST_PARAMETERS and helpers

    def share(self, make: Callable[[Callable], Callable]) -> bool:
        """Step 1: the kit's shared client, `make(the function in place)`, in its place (see replaceable())."""
        found = self.in_place()
        if found is not None and found is self.shared:
            return True
        self.shared = make(found)
        self._utils()._aiohttp_post = self.shared
        return True

    def time(self, wrap: Callable[[Callable], Callable]) -> bool:
        """Step 2: report every provider call. False if MLflow has no such function (nothing reported)."""
        found = self.in_place()
        if found is None:
            return False
        if found is self.timed or found is self.shared:  # the shared client reports its calls itself
            return True
        self.timed = wrap(found)
        self._utils()._aiohttp_post = self.timed
        return True


PROVIDER_POST = ProviderPost()


class ProviderPostParts(NamedTuple):
    """What the kit's replacement of _aiohttp_post copies from MLflow, bound once by upstream.install."""

    stripped_headers: frozenset  # lower-case names MLflow never forwards (its own auth header among them)
    accept_encoding: str  # the Accept-Encoding MLflow sends
    ssrf_protection_enabled: Callable[[], bool]  # True: this call must use MLflow's own function
    append_to_uri_path: Callable[..., str]  # MLflow's join of base URL and path


def provider_post_parts() -> ProviderPostParts:
    from mlflow.gateway.providers import utils
    from mlflow.gateway.ssrf import upstream_protection_enabled
    from mlflow.utils.uri import append_to_uri_path

    return ProviderPostParts(
        utils._STRIPPED_HEADERS, utils.SUPPORTED_ACCEPT_ENCODING, upstream_protection_enabled, append_to_uri_path
    )


def provider_call_duration():
    """MLflow's per-request ContextVar of the time spent waiting on providers (above 0: a provider was called);
    None if MLflow no longer has it."""
    try:
        from mlflow.gateway.providers.utils import provider_call_duration_ms
    except ImportError:
        return None
    return provider_call_duration_ms


_streaming_wrapper: Callable | None = None  # the kit's make_streaming_response, while it is in place


def wrap_streaming_responses(then: Callable) -> bool:
    """Pass the body of every SSE stream MLflow makes through `then(events)`: MLflow's make_streaming_response,
    where mlflow.gateway.app calls it (every route that streams), wrapped. False if MLflow has no such function;
    True once in place (a second call changes nothing)."""
    global _streaming_wrapper  # noqa: PLW0603 - the kit's function, known by identity
    import mlflow.gateway.app as gateway_app
    from starlette.responses import StreamingResponse

    original = getattr(gateway_app, "make_streaming_response", None)
    if original is None:
        return False
    if original is _streaming_wrapper:
        return True

    async def make_streaming_response(resp):
        response = await original(resp)
        if isinstance(response, StreamingResponse) and response.media_type == "text/event-stream":
            response.body_iterator = then(response.body_iterator)
        return response

    _streaming_wrapper = gateway_app.make_streaming_response = make_streaming_response
    return True


def wrap_provider_lookup(app, wrap: Callable[[Callable], Callable]) -> None:
    """MLflow's app finds the provider of a /v1 call's `model` with app._get_provider_by_name(name); put
    `wrap(that method)` in its place, once per app. Nothing if the app has no such method."""
    original = getattr(app, "_get_provider_by_name", None)
    if original is None or "_get_provider_by_name" in vars(app):  # missing, or already the kit's (per app)
        return
    app._get_provider_by_name = wrap(original)


def gateway_endpoints(app, *default) -> dict:
    """MLflow's app's endpoints by name (`default`, if given, when it has none)."""
    return getattr(app, "dynamic_endpoints", *default)


def gateway_routes(app, *default) -> dict:
    """MLflow's app's traffic routes by name (`default`, if given, when it has none)."""
    return getattr(app, "traffic_routes", *default)


# --------------------------------------------------------------------------------------- FastAPI, Starlette
class RouteShape(NamedTuple):
    """What the fast table needs of a FastAPI POST route whose endpoint takes (request, one body model)."""

    endpoint: Callable  # the route's coroutine function
    request_name: str  # its parameter for the Request
    body_name: str  # its parameter for the body model
    validate: Callable  # the body field's validate(value, values, *, loc) -> (value, errors), FastAPI's check
    response_field: Any  # for serialize_response (None: the result is sent as it is serialised)
    status_code: int | None


def route_shape(route) -> RouteShape | None:
    """The route's shape when FastAPI would serve it exactly as the fast table does: POST only, no path
    parameters, a request and one body model and nothing else to resolve, FastAPI's default response class,
    no response-model options. Otherwise None (FastAPI keeps the route)."""
    from fastapi.datastructures import DefaultPlaceholder
    from fastapi.routing import APIRoute

    if not isinstance(route, APIRoute) or route.methods != {"POST"} or route.param_convertors:
        return None
    d = route.dependant
    fits = (
        d.request_param_name is not None
        and len(d.body_params) == 1
        and not (d.path_params or d.query_params or d.header_params or d.cookie_params or d.dependencies)
        and not (
            d.websocket_param_name
            or d.http_connection_param_name
            or d.response_param_name
            or d.background_tasks_param_name
            or d.security_scopes_param_name
        )
        and getattr(route, "_embed_body_fields", True) is False
        and isinstance(route.response_class, DefaultPlaceholder)
        and route.response_model_include is None
        and route.response_model_exclude is None
        and route.response_model_by_alias
        and not route.response_model_exclude_unset
        and not route.response_model_exclude_defaults
        and not route.response_model_exclude_none
        and getattr(route, "stream_item_field", None) is None
        and inspect.iscoroutinefunction(d.call)
    )
    if not fits:
        return None
    body = d.body_params[0]
    return RouteShape(d.call, d.request_param_name, body.name, body.validate, route.response_field, route.status_code)


def serialize_response() -> Callable:
    """FastAPI's serialize_response(*, field, response_content, dump_json, ...), as its routes answer."""
    from fastapi.routing import serialize_response

    return serialize_response


def as_routed(scope, router, route) -> None:
    """What Starlette's routing writes into the scope of a request it matched to `route` (an APIRoute without
    path parameters), so FastAPI's request handling and exception handlers see the request as routed."""
    scope.setdefault("router", router)
    scope.update(endpoint=route.endpoint, path_params={}, route=route)


def matched_by_earlier(path: str, earlier) -> bool:
    """FastAPI serves a POST to `path` by the first route that matches it fully: True if one of `earlier` does."""
    from starlette.routing import Match

    probe = {"type": "http", "path": path, "root_path": "", "method": "POST", "headers": []}
    return any(route.matches(probe)[0] == Match.FULL for route in earlier)


def wrap_router(router, wrap: Callable[[Any], Any]) -> bool:
    """Put `wrap(the router's ASGI app)` in front of the router's route matching, inside all of the app's
    middleware and exception handlers. False if Starlette's Router changed (nothing done)."""
    if not hasattr(router, "middleware_stack"):
        return False
    router.middleware_stack = wrap(router.middleware_stack)
    return True


def turn_off_telemetry(app, otel_configured: bool) -> bool:
    """Tell FastAPI its OpenTelemetry telemetry is off when none is set up now and `otel_configured` says none
    will be. False if it stays on, or if FastAPI keeps its telemetry differently."""
    native, config = getattr(app, "_native_telemetry", None), getattr(app, "_telemetry", None)
    if native is None or not isinstance(config, dict) or getattr(native, "config", None) is not config:
        return False
    if otel_configured or native.enabled():
        return False
    config.update(tracing=False, metrics=False, logs=False)
    return True


_encoder: Callable | None = None  # the kit's jsonable_encoder, while it is in place


def wrap_jsonable_encoder(wrap: Callable[[Callable], Callable]) -> bool:
    """Put `wrap(fastapi.encoders.jsonable_encoder)` in its place. MLflow's providers import it from there on
    every call, so they get the kit's. True once in place (a second call changes nothing)."""
    global _encoder  # noqa: PLW0603 - the kit's function, known by identity
    from fastapi import encoders

    original = encoders.jsonable_encoder
    if original is _encoder:
        return True
    _encoder = encoders.jsonable_encoder = wrap(original)
    return True


def on_shutdown(app, close: Callable) -> None:
    """Await `close()` when the app shuts down, after the app's own lifespan (MLflow's shutdown) has ended."""
    from contextlib import asynccontextmanager

    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application):
        async with previous(application) as state:
            yield state
        await close()

    app.router.lifespan_context = lifespan


# ---------------------------------------------------------------------------------------- prometheus_client
def histogram_parts(histogram) -> tuple[Any, Any, Any] | None:
    """(upper bounds, bucket values, sum value) of a Histogram child, or None if prometheus_client changed
    (then the caller uses observe())."""
    bounds, buckets, total = (getattr(histogram, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None:
        return None
    return bounds, buckets, total


# ---------------------------------------------------------------------------------------- uvicorn
def draining_http_protocol(grace: float):
    """uvicorn's HTTP protocol (httptools or h11, as `http: auto` picks), except that a worker told to stop
    (SIGTERM: a replica's stop, or a reload's old workers) closes a connection with no request in progress only
    `grace` seconds later. A request already on its way is answered instead of having its connection closed on
    it: nginx writes the request as soon as it has connected, and a connection the worker has just accepted may
    not have been read yet (closed unread, nginx answers 502: it never sends a POST twice). None if uvicorn
    changed: the worker then keeps uvicorn's own protocol."""
    try:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol
    except ImportError:
        return None
    if not callable(getattr(AutoHTTPProtocol, "shutdown", None)):
        return None

    class DrainingHTTPProtocol(AutoHTTPProtocol):
        def shutdown(self) -> None:
            cycle = getattr(self, "cycle", None)
            if cycle is None or cycle.response_complete:  # idle: uvicorn would close it now
                asyncio.get_running_loop().call_later(grace, super().shutdown)
            else:
                super().shutdown()  # a request in progress: answered, then closed (uvicorn's own)

    return DrainingHTTPProtocol
