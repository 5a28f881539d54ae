"""What a request is to the kit: its route, its body, what the middlewares tell each other, its error answers.

Every middleware asks this module instead of reading paths, bodies or exceptions on its own:

Routes (`route_of(path)`, one lookup per call)
    /v1/chat/completions, /v1/completions, /v1/embeddings   V1: the body's "model" names the endpoint
    /v1/messages, /v1/responses                              V1 too, in another API's dialect (`Route.dialect`:
                                                             MESSAGES, RESPONSES), served as chat (gateway_kit.dialects)
    any other /v1/...                                        V1 too (no such route: the app answers 404)
    /gateway/<endpoint>/invocations                          INVOCATIONS: the path names the endpoint
    /endpoints/<endpoint>/invocations                        INVOCATIONS (<endpoint>: one path segment)
    /health, /ready, /metrics                                PROBE: open without a gateway key
    /-/reload, /-/reload/check                               CONTROL: no gateway key either; the reload token
                                                             decides (gateway_kit.reload), and nginx never
                                                             passes /-/ on
    anything else                                            OTHER
  V1 and INVOCATIONS are the LLM routes (`Route.llm`): recorded, limited, counted in flight, served with
  timeouts and fallbacks. `request_endpoint(scope)` is the endpoint a request is for, worked out once.

The body (`request_body(scope, receive)`)
  Read once per request, by the first middleware that needs it (dialects on /v1/messages and /v1/responses, which
  hands the layers inside a scope of their own with the chat body it made; limits with per-endpoint limits, the usage
  recorder on /v1, the fallback middleware, the fast routes), and kept in the scope (BODY); every later layer
  and MLflow's app get it replayed. Parsed once too (`request_json`, JSON), with the kit's depth limit
  (MAX_JSON_DEPTH). A fallback's try runs on its own copy of the scope, with its own body on /v1 ("model"
  replaced).

What the middlewares tell each other: scope["state"] (Starlette's request.state), shared by a request's tries
    REQUEST_ID       set by RequestContext (app.py): the X-Request-ID, for usage records and error messages
    ENDPOINT         set by request_endpoint(): the endpoint the client asked for (None when none is named)
    SERVED_BY        set by resilience.Fallback: the fallback endpoint that answered (None: the endpoint itself)
    FALLBACK_REASON  set by resilience.Fallback: why the endpoint was left (http_500, timeout_first_byte ...)
    CACHE            set by cache.ResponseCache: "hit" (answered from the cache) or "miss" (the answer was stored)
    DIALECT          set by gateway_kit.dialects: the API the client spoke (MESSAGES, RESPONSES), None for chat's
    TRACE            set by RequestContext: the request's traces.Trace (W3C trace context), for the record's trace_id

Error answers
  `error_body()` is the kit's JSON error envelope, `{"error": {"type": ..., "message": ...}}`, for every
  answer the kit makes itself: the exception handlers (`error_response`), the middlewares' refusals
  (`send_json`), resilience's held answers and stream error events. `upstream_failures()` is the one table
  from a failed provider call's exception to its answer (status, type, message, reason), and
  `upstream_failure(exc)` looks an exception up in it: the app's exception handlers
  (app.add_upstream_error_handlers, request_errors) and resilience's answers all answer from it.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------- routes
V1 = "v1"
INVOCATIONS = "invocations"
PROBE = "probe"
CONTROL = "control"
OTHER = "other"
KEYLESS = frozenset((PROBE, CONTROL))  # kinds the client keys middleware lets through without a gateway key
V1_ENDPOINT_TYPES = {  # the /v1 routes MLflow serves, and the endpoint type each serves
    "/v1/chat/completions": "llm/v1/chat",
    "/v1/completions": "llm/v1/completions",
    "/v1/embeddings": "llm/v1/embeddings",
}
CHAT_PATH = "/v1/chat/completions"
MESSAGES = "messages"  # Anthropic's Messages API
RESPONSES = "responses"  # OpenAI's Responses API
DIALECT_PATHS = {"/v1/messages": MESSAGES, "/v1/responses": RESPONSES}  # served as chat (gateway_kit.dialects)
PROBES = ("/health", "/ready", "/metrics")
CONTROLS = ("/-/reload", "/-/reload/check")  # gateway_kit.reload's RELOAD_PATH and CHECK_PATH
_V1_PREFIX = "/v1/"
_INVOCATION_PREFIXES = ("/gateway/", "/endpoints/")
_INVOCATION_SUFFIX = "/invocations"
_ROUTES_KEPT = 1000  # paths remembered, the fixed ones first; past that a path is classified each time


@dataclass(frozen=True, slots=True)
class Route:
    """What a path is to the kit (route_of)."""

    kind: str  # V1, INVOCATIONS, PROBE, CONTROL or OTHER
    template: str | None = None  # the route as served, e.g. /gateway/{endpoint}/invocations (a metrics label)
    endpoint: str | None = None  # the endpoint the path names (INVOCATIONS)
    endpoint_type: str | None = None  # what a /v1 route serves: llm/v1/chat, llm/v1/completions, llm/v1/embeddings
    dialect: str | None = None  # the API a /v1 route speaks that the kit serves as chat: MESSAGES, RESPONSES

    @property
    def llm(self) -> bool:
        """An LLM call: recorded, limited, counted in flight, served with timeouts and fallbacks."""
        return self.kind == V1 or self.kind == INVOCATIONS

    @property
    def model_in_body(self) -> bool:
        """The body's "model" names the endpoint (the /v1 routes), so the body must be read to know it."""
        return self.kind == V1

    def path_for(self, endpoint: str) -> str:
        """This invocations route's path for another endpoint (a fallback's)."""
        return self.template.replace("{endpoint}", endpoint)


_ROUTES: dict[str, Route] = {
    **{path: Route(V1, path, endpoint_type=kind) for path, kind in V1_ENDPOINT_TYPES.items()},
    **{path: Route(V1, path, dialect=api) for path, api in DIALECT_PATHS.items()},
    **{path: Route(PROBE, path) for path in PROBES},
    **{path: Route(CONTROL, path) for path in CONTROLS},
}


def route_of(path: str) -> Route:
    """The route of a request's path: a dict lookup for every path seen before."""
    route = _ROUTES.get(path)
    if route is None:
        route = _classify(path)
        if len(_ROUTES) < _ROUTES_KEPT:
            _ROUTES[path] = route
    return route


def _classify(path: str) -> Route:
    if path.startswith(_V1_PREFIX):
        return Route(V1)
    if path.startswith(_INVOCATION_PREFIXES) and path.endswith(_INVOCATION_SUFFIX):
        start = path.index("/", 1) + 1
        name = path[start : -len(_INVOCATION_SUFFIX)]
        if name and "/" not in name:  # one path segment, as MLflow's routes take it
            return Route(INVOCATIONS, f"{path[:start]}{{endpoint}}{_INVOCATION_SUFFIX}", name)
    return Route(OTHER)


# ---------------------------------------------------------------------------------------------- scope keys
REQUEST_ID = "request_id"
ENDPOINT = "kit_endpoint"
SERVED_BY = "served_by"
FALLBACK_REASON = "fallback_reason"
CACHE = "cache"
DIALECT = "dialect"
TRACE = "trace"  # the request's traces.Trace (RequestContext): the usage record's trace_id
BODY = "gateway_kit.body"  # in the scope itself: the whole request body, once read (request_body)
JSON = "gateway_kit.json"  # in the scope itself: the body parsed (request_json)


def state_of(scope) -> dict:
    """scope["state"], made on first use."""
    return scope.setdefault("state", {})


def request_endpoint(scope) -> str | None:
    """The endpoint a request is for: the one its path names, or on /v1 the body's "model" (once the body
    was read: request_body). Worked out once per request (state ENDPOINT): limits, resilience, the usage
    records and the refusal records all ask."""
    state = state_of(scope)
    if ENDPOINT in state:
        return state[ENDPOINT]
    route = route_of(scope["path"])
    if not route.model_in_body:
        endpoint = route.endpoint
    elif BODY not in scope:
        return None  # not read (yet): nothing to decide from
    else:
        endpoint = _model(scope)
    state[ENDPOINT] = endpoint
    return endpoint


def _model(scope) -> str | None:
    if not scope[BODY]:
        return None
    try:  # parsed in full: a tool's JSON schema may have a "model" property of its own
        parsed = request_json(scope)
    except ValueError:  # not JSON, or too deep (JSONTooDeep): the app answers it
        return None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else None


# ---------------------------------------------------------------------------------------------- ASGI helpers
def header(scope, name: bytes) -> str | None:
    """A request header's value (`name` in lower case), None when absent or empty."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1") or None
    return None


async def request_body(scope, receive):
    """(the whole request body, the receive to hand on), the body read at most once per request.

    The first caller reads it and keeps it in the scope (BODY); the receive it hands on replays it to
    whoever reads next, then passes on the client's own messages (its disconnect). A later caller finds it
    in the scope and hands on the receive it was given, which already replays it. (None, receive) when the
    client went away while sending it."""
    body = scope.get(BODY)
    if body is not None:
        return body, receive
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None, receive
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = scope[BODY] = b"".join(chunks)
    return body, replay_body(body, receive)


def replay_body(body: bytes, receive):
    """A receive that gives `body` whole, once, then the client's own messages from `receive`."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def with_response_headers(send, headers: list[tuple[bytes, bytes]]):
    """A send that adds `headers` to the response's start."""

    async def sending(message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *headers]
        await send(message)

    return sending


async def send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A whole JSON answer from a middleware that answers itself (client keys' 401, limits' 429 and 503)."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


# ---------------------------------------------------------------------------------------------- JSON
# Deepest nesting of objects and arrays a request body may have (the body itself is level 1): far beyond any
# real request (a tool's JSON schema nested 50 objects deep is about 105), far below where Python and MLflow fail.
MAX_JSON_DEPTH = 128


class JSONTooDeep(ValueError):
    """A request body nested deeper than MAX_JSON_DEPTH (request_errors answers it with a 400)."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")


def request_json(scope):
    """The request body (read by request_body) parsed by parse_json, once per request: kept in the scope
    (JSON) for every later reader, the error handlers too (request_errors fills MLflow's unfilled placeholders
    from it). Raises as parse_json does."""
    if JSON in scope:
        return scope[JSON]
    value = scope[JSON] = parse_json(scope[BODY])
    return value


def parse_json(body: bytes):
    """json.loads(body), refusing JSON nested more than MAX_JSON_DEPTH levels (JSONTooDeep).

    The one place that decides whether a request body is too deep, for every part of the kit that parses one.
    Python's parser stops at its recursion limit (about 900 levels, depending on the call stack), and MLflow's
    pydantic models stop serialising at 255 levels (a 400 naming neither): a fixed limit below both says
    what is wrong at the door. Only a body with more than MAX_JSON_DEPTH brackets can be that deep, and only
    those pay for the walk (bench/json_depth.py)."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise JSONTooDeep() from None
    if _brackets_over(body, MAX_JSON_DEPTH) and _deeper_than(value, MAX_JSON_DEPTH):
        raise JSONTooDeep()
    return value


def refuse_too_deep(scope) -> None:
    """Raise JSONTooDeep when the request body (read by request_body) is JSON nested too deeply; any other
    fault is left to whoever parses it."""
    if JSON in scope or not _brackets_over(scope[BODY], MAX_JSON_DEPTH):
        return
    try:
        request_json(scope)
    except JSONTooDeep:
        raise
    except Exception:  # noqa: BLE001 - not JSON, not UTF-8...: FastAPI words those errors
        pass


def _brackets_over(body: bytes, limit: int) -> bool:
    """More than `limit` of `[` and `{` in body. bytes.find (memchr) skips text far faster than bytes.count
    reads it, and stops at limit + 1: a long prompt costs a scan, many brackets at most limit + 1 finds."""
    found = 0
    for bracket in (b"[", b"{"):
        at = body.find(bracket)
        while at >= 0:
            found += 1
            if found > limit:
                return True
            at = body.find(bracket, at + 1)
    return False


_CONTAINERS = frozenset((dict, list))


def _deeper_than(value, limit: int) -> bool:
    """True when value (parsed JSON) nests objects and arrays more than `limit` levels; level by level, no
    recursion. A long list without containers (token ids, floats) is passed over at C speed (map(type, ...))."""
    level = [value]
    for _ in range(limit):
        level = [
            child
            for container in level
            for child in (
                container.values()
                if type(container) is dict
                else container
                if len(container) < 16 or not _CONTAINERS.isdisjoint(map(type, container))
                else ()
            )
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return False
    return True


# ---------------------------------------------------------------------------------------------- error answers
def error_body(kind: str, message: str, **more) -> dict:
    """The kit's JSON error envelope: {"error": {"type": kind, "message": message, ...more}}."""
    return {"error": {"type": kind, "message": message, **more}}


def error_response(status: int, kind: str, message: str, headers: dict | None = None):
    """error_body as the answer of a FastAPI exception handler or route."""
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(kind, message), status_code=status, headers=headers)


@dataclass(frozen=True)
class Failure:
    """The answer to a failed provider call, and the reason usage records and metrics give for it."""

    status: int
    kind: str  # the error type: upstream_timeout, upstream_unreachable ...
    message: str
    reason: str  # the record's fallback_reason: timeout_first_byte, unreachable, http_500 ...
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FailureKind:
    """One row of the table: the answer for an exception. In `message` and `reason`, {exc} is the exception
    (its own message, worded for the client when the kit raised it) and {name} its class name."""

    status: int
    kind: str
    message: str
    reason: str
    retry_after: bool = False  # a Retry-After header from the exception's retry_in (seconds)

    def of(self, exc: BaseException) -> Failure:
        name = type(exc).__name__
        headers = {"retry-after": str(math.ceil(exc.retry_in))} if self.retry_after else {}
        return Failure(
            self.status,
            self.kind,
            self.message.format(exc=exc, name=name),
            self.reason.format(exc=exc, name=name),
            headers,
        )


CIRCUIT_OPEN = FailureKind(503, "upstream_circuit_open", "{exc}", "circuit_open", retry_after=True)
ENDPOINT_TIMEOUT = FailureKind(504, "upstream_timeout", "{exc}", "timeout_{exc.kind}")
NO_ANSWER_IN_TIME = FailureKind(504, "upstream_timeout", "the provider did not answer in time ({name})", "timeout")
UNREADABLE_ANSWER = FailureKind(
    502, "upstream_bad_response", "the provider's answer could not be read ({name})", "bad_response"
)
UNREACHABLE = FailureKind(
    502, "upstream_unreachable", "the provider could not be reached or closed the connection ({name})", "unreachable"
)
CALL_FAILED = FailureKind(502, "upstream_error", "the provider call failed ({name})", "error_{name}")


@functools.cache
def upstream_failures() -> tuple[tuple[tuple[type, ...], FailureKind, bool], ...]:
    """The table, first match wins: (exceptions, their answer, whether the app's exception handler answers them).
    A ValueError inside the app may be the client's (request_errors decides); one that escapes the app
    mid-answer is the provider's."""
    import asyncio

    import aiohttp

    from gateway_kit.resilience import CircuitOpenError, UpstreamTimeout

    return (
        ((CircuitOpenError,), CIRCUIT_OPEN, True),
        ((UpstreamTimeout,), ENDPOINT_TIMEOUT, True),
        ((asyncio.TimeoutError,), NO_ANSWER_IN_TIME, True),
        ((aiohttp.ClientPayloadError, aiohttp.ClientResponseError), UNREADABLE_ANSWER, True),
        ((ValueError,), UNREADABLE_ANSWER, False),
        ((aiohttp.ClientConnectionError,), UNREACHABLE, True),
    )


def upstream_failure(exc: BaseException) -> Failure:
    """The answer to a provider call that ended with `exc`, or with an exception among its causes (Starlette
    wraps one raised mid-answer in a RuntimeError). An HTTPException is MLflow's for the provider's own error
    status: that status, and its detail. Anything else the table does not know: 502 upstream_error."""
    from starlette.exceptions import HTTPException

    for _ in range(5):
        if isinstance(exc, HTTPException):
            detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
            status = exc.status_code
            return Failure(status, "upstream_error", f"the provider answered {status}: {detail}", f"http_{status}")
        for exceptions, answer, _ in upstream_failures():
            if isinstance(exc, exceptions):
                return answer.of(exc)
        if exc.__cause__ is None:
            break
        exc = exc.__cause__
    return CALL_FAILED.of(exc)
