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
import logging

from starlette.requests import Request
from starlette.responses import Response

from gateway_kit import private_api
from gateway_kit.private_api import TELEMETRY_SCOPE_KEY, as_routed
from gateway_kit.request import JSONTooDeep, refuse_too_deep, request_body, request_json

log = logging.getLogger("gateway_kit.fast_routes")
serialize_response = private_api.serialize_response()  # FastAPI's, bound once: called per request


class FastRoute:
    """One POST route whose endpoint takes (request, body model) and nothing else (private_api.route_shape)."""

    def __init__(self, route, shape: private_api.RouteShape, router) -> None:
        self.endpoint = shape.endpoint
        self.request_name = shape.request_name
        self.body_name = shape.body_name
        self.validate = shape.validate
        self.response_field = shape.response_field
        self.status_code = shape.status_code
        self.route = route
        self.router = router  # FastAPI's router, which the route belongs to

    async def serve(self, scope, receive, send, router_app) -> None:
        """Answer as FastAPI would, or hand the request (its body replayed by `receive`) to FastAPI's router
        (`router_app`)."""
        try:
            payload = request_json(scope)
        except JSONTooDeep:
            raise  # the kit's own limit, answered by request_errors whichever way the route is served
        except Exception:  # noqa: BLE001 - bad JSON, not UTF-8: FastAPI words the error
            return await router_app(scope, receive, send)
        value, errors = self.validate(payload, {}, loc=("body",))
        if errors:
            return await router_app(scope, receive, send)
        as_routed(scope, self.router, self.route)
        request = Request(scope, receive, send)
        result = await self.endpoint(**{self.request_name: request, self.body_name: value})
        if not isinstance(result, Response):
            content = await serialize_response(field=self.response_field, response_content=result, dump_json=True)
            result = Response(content=content, media_type="application/json", status_code=self.status_code or 200)
        await result(scope, receive, send)


class FastRoutes:
    """ASGI: the table's routes served directly; everything else (and every odd request) to the router."""

    def __init__(self, router_app, routes: dict[str, FastRoute], serve: bool = True) -> None:
        self.router_app = router_app
        self.routes = routes
        self.serve = serve

    async def __call__(self, scope, receive, send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if (
            route is None
            or scope["method"] != "POST"
            or scope.get(TELEMETRY_SCOPE_KEY) is not None
            or not _json_content(scope["headers"])
        ):
            return await self.router_app(scope, receive, send)
        body, receive = await request_body(scope, receive)
        if body is None:  # the client went away mid-body: the router meets the same disconnect
            return await self.router_app(scope, receive, send)
        if not self.serve:  # GATEWAY_FAST_ROUTES=off: FastAPI serves it, after the kit's depth limit
            refuse_too_deep(scope)
            return await self.router_app(scope, receive, send)
        await route.serve(scope, receive, send, self.router_app)


def install(app, serve: bool = True) -> int:
    """Put the fast table in front of MLflow's router; the number of routes it serves (0: none fit). With
    serve=False (GATEWAY_FAST_ROUTES=off) FastAPI serves them all: the table only refuses a body nested too
    deeply, as the fast routes do (request.parse_json), so both ways give the same answers."""
    router = app.router
    routes = {}
    for at, route in enumerate(router.routes):
        shape = private_api.route_shape(route)
        if shape is not None and not private_api.matched_by_earlier(route.path, router.routes[:at]):
            routes[route.path] = FastRoute(route, shape, router)
    if not private_api.wrap_router(
        router, lambda router_app: FastRoutes(router_app, routes, serve) if routes else router_app
    ):
        log.warning("FastAPI's router has no middleware_stack: every route goes through FastAPI's routing")
        return 0
    return len(routes)


def fast_encoder() -> bool:
    """MLflow's providers turn each request into a dict with FastAPI's jsonable_encoder(payload,
    exclude_none=True), a generic walk that costs several times pydantic's own model_dump. For exactly that
    call on a pydantic model, give the same result the fast way: model_dump(mode="json", by_alias=True,
    exclude_none=True), then what jsonable_encoder's second pass over that dict does (drop None values in
    nested dicts, and keys starting with "_sa"). Every other call goes to FastAPI's function unchanged.
    True once installed. tests/replica/test_fast_routes.py compares the two on generated payloads."""
    from pydantic import BaseModel

    def wrap(original):
        @functools.wraps(original)
        def jsonable_encoder(obj, *args, **kwargs):
            if not args and kwargs == _EXCLUDE_NONE and isinstance(obj, BaseModel):
                return _without_none(obj.model_dump(mode="json", by_alias=True, exclude_none=True))
            return original(obj, *args, **kwargs)

        return jsonable_encoder

    return private_api.wrap_jsonable_encoder(wrap)


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
    return private_api.turn_off_telemetry(app, otel_configured)


def cache_providers(app) -> None:
    """MLflow builds a provider object per /v1 call (_get_provider_by_name); its /gateway routes build theirs
    once. Build each once for /v1 too: the config is fixed for the worker's life, and a traffic route picks
    its destination per call, not per provider object."""

    def cached(original):
        built: dict = {}

        def provider_by_name(name: str):
            found = built.get(name)
            if found is None:
                found = built[name] = original(name)  # an unknown name raises, and is not cached
            return found

        return provider_by_name

    private_api.wrap_provider_lookup(app, cached)


def _json_content(headers) -> bool:
    """What FastAPI parses as JSON: application/json or application/*+json (any parameters). Without a
    content type FastAPI does not parse the body at all; that and every other type go to FastAPI."""
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
    return False
