"""The gateway's hot routes without FastAPI's per-request routing and dependency machinery.

Every LLM call goes through one of a few POST routes: /v1/chat/completions, /v1/completions,
/v1/embeddings and each endpoint's /gateway/NAME/invocations (and /endpoints/NAME/invocations). MLflow's
handler for each takes the request and one JSON body model. For these, FastAPI walks every route's regex,
parses the content type with the email package, solves dependencies and keeps two exit stacks per request:
about a quarter of a worker's CPU per call (docs/performance.md).

`install(app)` puts a table lookup in front of MLflow's router, inside all of the app's middleware and
exception handlers. For a route in the table it does what FastAPI does for such a route (the same JSON
parse, the same pydantic validation of the body, the same call, the same response serialisation), and it
hands every request it would answer differently to FastAPI itself: a body that is not JSON, fails
validation, or is sent with a content type FastAPI would not parse as JSON, goes on to the router with its
body, so every error answer is FastAPI's own. Exceptions from the handler reach the same exception
handlers. tests/replica/test_fast_routes.py sends the same requests with and without it and compares the answers.

The body is the one gateway_kit.request.request_body read for the request (an outer middleware may have):
it is parsed once (request_json) and replayed to FastAPI, never read again.

GATEWAY_FAST_ROUTES=off turns it off: FastAPI serves every route, and the table only reads the body to refuse
JSON nested more than request.MAX_JSON_DEPTH levels, the one check both ways share. A route whose shape the
kit does not know is left to FastAPI.
"""

from __future__ import annotations

import functools
import inspect
import logging

from fastapi.routing import serialize_response
from starlette.requests import Request
from starlette.responses import Response

from gateway_kit.request import JSONTooDeep, refuse_too_deep, request_body, request_json

log = logging.getLogger("gateway_kit.fast_routes")


class FastRoute:
    """One POST route whose endpoint takes (request, body model) and nothing else."""

    def __init__(self, route) -> None:
        dependant = route.dependant
        self.endpoint = dependant.call
        self.request_name = dependant.request_param_name
        self.body_field = dependant.body_params[0]
        self.body_name = self.body_field.name
        self.response_field = route.response_field
        self.status_code = route.status_code
        self.route = route

    @staticmethod
    def fits(route) -> bool:
        from fastapi.datastructures import DefaultPlaceholder
        from fastapi.routing import APIRoute

        if not isinstance(route, APIRoute) or route.methods != {"POST"} or route.param_convertors:
            return False
        d = route.dependant
        return (
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

    async def serve(self, scope, receive, send, router) -> None:
        """Answer as FastAPI would, or hand the request (its body replayed by `receive`) to FastAPI's router."""
        try:
            payload = request_json(scope)
        except JSONTooDeep:
            raise  # the kit's own limit, answered by request_errors whichever way the route is served
        except Exception:  # noqa: BLE001 - bad JSON, not UTF-8: FastAPI words the error
            return await router(scope, receive, send)
        value, errors = self.body_field.validate(payload, {}, loc=("body",))
        if errors:
            return await router(scope, receive, send)
        scope.update(endpoint=self.route.endpoint, path_params={}, route=self.route)
        request = Request(scope, receive, send)
        result = await self.endpoint(**{self.request_name: request, self.body_name: value})
        if not isinstance(result, Response):
            content = await serialize_response(field=self.response_field, response_content=result, dump_json=True)
            result = Response(content=content, media_type="application/json", status_code=self.status_code or 200)
        await result(scope, receive, send)


class FastRoutes:
    """ASGI: the table's routes served directly; everything else (and every odd request) to the router."""

    def __init__(self, router_app, router, routes: dict[str, FastRoute], serve: bool = True) -> None:
        self.router_app = router_app
        self.router = router
        self.routes = routes
        self.serve = serve

    async def __call__(self, scope, receive, send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if (
            route is None
            or scope["method"] != "POST"
            or scope.get("fastapi.telemetry") is not None
            or not _json_content(scope["headers"])
        ):
            return await self.router_app(scope, receive, send)
        body, receive = await request_body(scope, receive)
        if body is None:  # the client went away mid-body: the router meets the same disconnect
            return await self.router_app(scope, receive, send)
        if not self.serve:  # GATEWAY_FAST_ROUTES=off: FastAPI serves it, after the kit's depth limit
            refuse_too_deep(scope)
            return await self.router_app(scope, receive, send)
        scope.setdefault("router", self.router)
        await route.serve(scope, receive, send, self.router_app)


def install(app, serve: bool = True) -> int:
    """Put the fast table in front of MLflow's router; the number of routes it serves (0: none fit). With
    serve=False (GATEWAY_FAST_ROUTES=off) FastAPI serves them all: the table only refuses a body nested too
    deeply, as the fast routes do (request.parse_json), so both ways give the same answers."""
    router = app.router
    if not hasattr(router, "middleware_stack"):
        log.warning("FastAPI's router has no middleware_stack: every route goes through FastAPI's routing")
        return 0
    routes = {}
    for at, route in enumerate(router.routes):
        if FastRoute.fits(route) and not _matched_earlier(route.path, router.routes[:at]):
            routes[route.path] = FastRoute(route)
    if routes:
        router.middleware_stack = FastRoutes(router.middleware_stack, router, routes, serve)
    return len(routes)


def fast_encoder() -> bool:
    """MLflow's providers turn each request into a dict with FastAPI's jsonable_encoder(payload,
    exclude_none=True), a generic walk that costs several times pydantic's own model_dump. For exactly that
    call on a pydantic model, give the same result the fast way: model_dump(mode="json", by_alias=True,
    exclude_none=True), then what jsonable_encoder's second pass over that dict does (drop None values in
    nested dicts, and keys starting with "_sa"). Every other call goes to FastAPI's function unchanged.
    True once installed. tests/replica/test_fast_routes.py compares the two on generated payloads."""
    from fastapi import encoders
    from pydantic import BaseModel

    original = encoders.jsonable_encoder
    if getattr(original, "__gateway_kit__", False):
        return True

    @functools.wraps(original)
    def jsonable_encoder(obj, *args, **kwargs):
        if not args and kwargs == _EXCLUDE_NONE and isinstance(obj, BaseModel):
            return _without_none(obj.model_dump(mode="json", by_alias=True, exclude_none=True))
        return original(obj, *args, **kwargs)

    jsonable_encoder.__gateway_kit__ = True
    encoders.jsonable_encoder = jsonable_encoder
    return True


_EXCLUDE_NONE = {"exclude_none": True}


def _without_none(value):
    if isinstance(value, dict):
        return {
            k: _without_none(v)
            for k, v in value.items()
            if v is not None and not (isinstance(k, str) and k.startswith("_sa"))
        }
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def quiet_telemetry(app, otel_configured: bool) -> bool:
    """FastAPI asks OpenTelemetry for three providers on every request (each an environment lookup) to learn
    that none is set up. When none is at start and no OTEL_* variable says one will be (`otel_configured`,
    Settings.otel_configured), tell FastAPI its telemetry is off. True if it was turned off."""
    native, config = getattr(app, "_native_telemetry", None), getattr(app, "_telemetry", None)
    if native is None or not isinstance(config, dict) or getattr(native, "config", None) is not config:
        return False
    if otel_configured or native.enabled():
        return False
    config.update(tracing=False, metrics=False, logs=False)
    return True


def _matched_earlier(path: str, earlier) -> bool:
    """FastAPI serves a request by the first route that matches it fully: an earlier one would win."""
    from starlette.routing import Match

    probe = {"type": "http", "path": path, "root_path": "", "method": "POST", "headers": []}
    return any(route.matches(probe)[0] == Match.FULL for route in earlier)


def cache_providers(app) -> None:
    """MLflow builds a provider object per /v1 call (_get_provider_by_name); its /gateway routes build theirs
    once. Build each once for /v1 too: the config is fixed for the worker's life, and a traffic route picks
    its destination per call, not per provider object."""
    original = getattr(app, "_get_provider_by_name", None)
    if original is None or getattr(original, "__gateway_kit__", False):
        return
    built: dict = {}

    def provider_by_name(name: str):
        found = built.get(name)
        if found is None:
            found = built[name] = original(name)  # an unknown name raises, and is not cached
        return found

    provider_by_name.__gateway_kit__ = True
    app._get_provider_by_name = provider_by_name


def _json_content(headers) -> bool:
    """What FastAPI parses as JSON: application/json or application/*+json (any parameters). Without a
    content type FastAPI does not parse the body at all; that and every other type go to FastAPI."""
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
    return False
