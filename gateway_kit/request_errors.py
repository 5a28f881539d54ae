"""Bad requests get a clear 4xx JSON error, never a 500 or a traceback: what is wrong, and what to do.

FastAPI and MLflow answer a bad request in their own shapes: 422 `{"detail": [...pydantic errors...]}` for a
body that does not fit, `{"detail": "Not Found"}` for an unknown path, and a bare 500 for an unknown
`"model"` on /v1/*. The kit answers all of them as `{"error": {"type": "...", "message": "..."}}`, like
nginx and the upstream errors (docs/security.md has the table):

    400 invalid_json             the body is not JSON (or not UTF-8, or holds an unpaired surrogate), or it nests
                                 objects and arrays more than MAX_JSON_DEPTH (128) levels deep
    400 empty_body               no body at all
    400 invalid_request          the body cannot be turned into a provider request (e.g. tool_calls
                                 arguments that are not JSON); also MLflow's own 4xx
    413 request_too_large        body over GATEWAY_MAX_BODY_MB (a replica called without nginx)
    415 unsupported_media_type   a body that is not sent as Content-Type: application/json
    422 invalid_request          JSON, but a field is missing or has the wrong type or value (named)
    404 not_found                no such path, or no such endpoint (the ones that exist are listed)
    405 method_not_allowed       e.g. GET on an invocations path (Allow header says which)
    500 gateway_error            a bug of the gateway: the replica's log has the traceback

A provider's own error (its 4xx/5xx passed on by MLflow) keeps MLflow's `{"detail": "..."}` shape, which
evaluate_gateway.py reads to tell a provider's failure from the gateway's; any API key in it is redacted.
All of this runs only when a request fails: a healthy request pays nothing but the Content-Length check.
"""

from __future__ import annotations

import json
import logging
import os
import re

from gateway_kit.private_api import gateway_endpoints, gateway_routes, provider_call_duration
from gateway_kit.request import (
    BODY,
    INVOCATIONS,
    JSON,
    MAX_JSON_DEPTH,
    REQUEST_ID,
    UNREADABLE_ANSWER,
    JSONTooDeep,
    error_response,
    route_of,
)
from gateway_kit.secrets import redact

log = logging.getLogger("gateway_kit.request_errors")

_MAX_FIELDS_NAMED = 3
_EXAMPLES = {
    "llm/v1/chat": '{"messages": [{"role": "user", "content": "Hello"}]}',
    "llm/v1/completions": '{"prompt": "Hello"}',
    "llm/v1/embeddings": '{"input": "Hello"}',
}
_UNION_MEMBER = re.compile(r"\[|^(str|int|float|bool|dict|list|none)$")
_UNKNOWN_NAME = re.compile(r"Invalid endpoint / route name: '(.*)'$")
_FASTAPI_UNREADABLE_BODY = "There was an error parsing the body"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")  # in MLflow's messages: "Received value: '{n}'."
_WRONG_KIND = re.compile(r"^Endpoint '.*' is not an? \w+ endpoint\.$")  # MLflow's /v1/* check of 'model'


class BodyLimit:
    """ASGI middleware: a body over the limit gets 413 JSON before it is read.

    nginx enforces the same limit at the edge (client_max_body_size); this covers a replica called directly
    (docker-compose.yml publishes one). Per request it looks at Content-Length only; a chunked body, which
    nginx never sends, is counted as it arrives, or measured when a middleware outside the app has read it
    already (request.request_body).
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = (
            f"request body over the {max_bytes / 1048576:g} MB limit (GATEWAY_MAX_BODY_MB) — "
            "send a smaller body, or raise GATEWAY_MAX_BODY_MB and nginx's client_max_body_size together"
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_bytes:
                    return await self.too_large(scope, receive, send)
                return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        body = scope.get(BODY)
        if body is not None:
            if len(body) > self.max_bytes:  # answered as the count below is (413, request_too_large)
                return await error_response(413, "request_too_large", self.message)(scope, receive, send)
            return await self.app(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                from fastapi import HTTPException

                raise HTTPException(413, detail=self.message)  # FastAPI re-raises it from its body reading
            return message

        await self.app(scope, counting_receive, send)

    async def too_large(self, scope, receive, send) -> None:
        response = error_response(413, "request_too_large", self.message, {"Connection": "close"})
        await response(scope, receive, send)


def add_request_error_handlers(app, max_body_bytes: int) -> None:
    """Clear 4xx JSON errors for bad requests (see the module docstring); call before the app serves.
    `max_body_bytes`: GATEWAY_MAX_BODY_MB in bytes."""
    from fastapi.exceptions import RequestValidationError
    from mlflow.exceptions import MlflowException
    from mlflow.gateway.exceptions import AIGatewayException
    from starlette.exceptions import HTTPException

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    def example_for(path: str) -> str | None:
        route = route_of(path)
        if route.endpoint_type:
            return _EXAMPLES[route.endpoint_type].replace("{", '{"model": "<endpoint>", ', 1)
        name = route.endpoint
        config = gateway_endpoints(app).get(name) or gateway_routes(app).get(name)
        if config is None:
            return None
        kind = getattr(config, "endpoint_type", None) or getattr(config, "task_type", None)
        return _EXAMPLES.get(str(getattr(kind, "value", kind)))

    def endpoint_names() -> str:
        return ", ".join(sorted(gateway_endpoints(app)) + sorted(gateway_routes(app))) or "none"

    async def validation_error(request, exc: RequestValidationError):
        errors = exc.errors()
        example = example_for(request.url.path)
        what_to_send = f"send a JSON object such as {example}" if example else "send a JSON object"
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            reason = (first.get("ctx") or {}).get("error", "invalid JSON")
            return error_response(
                400,
                "invalid_json",
                f"the request body is not valid JSON ({reason} at character {first['loc'][-1]}) — {what_to_send}",
            )
        if first.get("loc") == ("body",) and first.get("type") == "missing":
            return error_response(400, "empty_body", f"the request has no body — {what_to_send}")
        content_type = request.headers.get("content-type", "")
        if first.get("loc") == ("body",) and "json" not in content_type.lower():
            return error_response(
                415,
                "unsupported_media_type",
                f"the body must be JSON sent with Content-Type: application/json (got "
                f"{content_type[:60] or 'no Content-Type'}) — {what_to_send}",
            )
        return error_response(422, "invalid_request", f"{describe_fields(errors)} — {what_to_send}")

    async def http_error(request, exc: HTTPException):
        if exc.status_code == 404 and "endpoint" not in request.scope:  # no route matched the path
            return error_response(404, "not_found", not_found_message(request.url.path, endpoint_names()))
        if exc.status_code == 405 and exc.detail == "Method Not Allowed":
            allowed = (exc.headers or {}).get("Allow", "POST")
            return error_response(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.url.path} — use {allowed}",
                exc.headers,
            )
        if exc.status_code == 413:
            return error_response(413, "request_too_large", str(exc.detail))
        if exc.status_code == 400 and exc.detail == _FASTAPI_UNREADABLE_BODY:
            if isinstance(exc.__cause__, RecursionError):  # FastAPI's own parse, on a route the kit does not know
                return await too_deep(request, exc)
            return error_response(
                400,
                "invalid_json",
                "the request body could not be read as JSON (is it "
                "UTF-8?) — send a UTF-8 JSON object with Content-Type: application/json",
            )
        if exc.status_code == 400 and _WRONG_KIND.match(str(exc.detail)):
            return error_response(
                400,
                "invalid_request",
                f"{str(exc.detail).rstrip('.')} — 'model' must name an "
                f"endpoint of the kind {request.url.path} serves (endpoints: {endpoint_names()})",
            )
        if isinstance(exc.__context__, AIGatewayException):  # raised by MLflow's translate_http_exception
            return await mlflow_refusal(request, exc.__context__)
        # Providers' errors passed on by MLflow: MLflow's shape, minus any key.
        return detail_response(exc.status_code, exc.detail, exc.headers)

    async def mlflow_refusal(request, exc: AIGatewayException):
        """MLflow's own refusal of a request (e.g. anthropic: 'n' must be 1), in MLflow's shape as on its /gateway
        routes (which turn it into an HTTPException; its /v1 routes do not: a 500 without this handler)."""
        detail = fill_placeholders(exc.detail, request.scope) if isinstance(exc.detail, str) else exc.detail
        return detail_response(exc.status_code, detail)

    async def too_deep(request, exc: Exception):
        return error_response(
            400,
            "invalid_json",
            f"the request body is nested too deeply: the gateway reads JSON "
            f"objects and arrays nested at most {MAX_JSON_DEPTH} levels — send a flatter body",
        )

    async def mlflow_error(request, exc: MlflowException):
        status = exc.get_http_status_code()
        unknown = _UNKNOWN_NAME.search(exc.message)
        if unknown and unknown.group(1) == "None":
            example = example_for(request.url.path) or '{"model": "<endpoint>", ...}'
            return error_response(
                400,
                "invalid_request",
                f"'model' is required on {request.url.path}: it names "
                f"the gateway endpoint (one of: {endpoint_names()}) — send e.g. {example}",
            )
        if unknown:
            return error_response(
                404,
                "not_found",
                f"no endpoint named '{unknown.group(1)[:100]}' — 'model' must be one of: {endpoint_names()}",
            )
        if status >= 500:
            return await gateway_error(request, exc)
        return error_response(status, "invalid_request", redact(exc.message))

    async def malformed(request, exc: Exception):
        """KeyError, TypeError, ValueError (JSONDecodeError too) inside MLflow's provider code.

        Before the provider was called they come from the client's request (e.g. tool_calls arguments that
        are not JSON, an unpaired surrogate in a string): 400. After, from the provider's answer: 502.
        """
        if "surrogates not allowed" in str(exc):  # the client's string, even when the provider echoed it
            return error_response(
                400,
                "invalid_json",
                "a string in the body holds an unpaired UTF-16 surrogate (like \\ud800) — send valid Unicode text",
            )
        if provider_was_called():
            failure = UNREADABLE_ANSWER.of(exc)
            return error_response(failure.status, failure.kind, failure.message)
        where = innermost_frame(exc)
        log.warning("bad request %s %s: %s at %s", request.method, request.url.path, type(exc).__name__, where)
        return error_response(
            400,
            "invalid_request",
            f"the request could not be turned into a provider request "
            f"({type(exc).__name__}: {redact(str(exc))[:200]}) — check nested fields such as "
            "tool_calls (arguments must be a JSON string, each call needs an id) and content parts",
        )

    async def gateway_error(request, exc: Exception):
        request_id = (request.scope.get("state") or {}).get(REQUEST_ID, "")
        return error_response(
            500,
            "gateway_error",
            f"the gateway failed on this request (request id "
            f"{request_id}) — the replica's log has the details; retry, and report it if it stays",
        )

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(MlflowException, mlflow_error)
    app.add_exception_handler(AIGatewayException, mlflow_refusal)
    app.add_exception_handler(JSONTooDeep, too_deep)  # a ValueError: the more specific handler wins
    for kind in (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError):
        app.add_exception_handler(kind, malformed)
    app.add_exception_handler(Exception, gateway_error)


def describe_fields(errors: list[dict]) -> str:
    """'messages' is required; 'temperature': Input should be less than or equal to 2 — union members folded."""
    by_field: dict[str, list[str]] = {}
    for error in errors:
        path = []
        for part in error.get("loc", ())[1:]:  # loc[0] is "body"
            if isinstance(part, str) and _UNION_MEMBER.search(part):
                break  # pydantic's name for one member of a union, not a field
            path.append(f"[{part}]" if isinstance(part, int) else f".{part}")
        field = "".join(path).lstrip(".") or "body"
        text = "is required" if error.get("type") == "missing" else str(error.get("msg", "is invalid"))
        by_field.setdefault(field, []).append(text)
    parts = []
    for field, texts in list(by_field.items())[:_MAX_FIELDS_NAMED]:
        if field == "body" and texts[0].startswith("Input should be a valid dictionary"):
            parts.append("the body must be a JSON object")
        elif len(texts) == 1:
            parts.append(f"'{field}' {texts[0]}" if texts[0] == "is required" else f"'{field}': {texts[0]}")
        else:
            parts.append(f"'{field}' has the wrong type or value ({'; or '.join(dict.fromkeys(texts[:3]))})")
    more = len(by_field) - _MAX_FIELDS_NAMED
    return "invalid request body: " + "; ".join(parts) + (f"; and {more} more field(s)" if more > 0 else "")


def not_found_message(path: str, names: str) -> str:
    route = route_of(path)
    if route.kind == INVOCATIONS:
        return (
            f"no endpoint named '{route.endpoint[:100]}' (or it was disabled: its provider key is missing) — "
            f"endpoints here: {names}"
        )
    return (
        f"no such path {path[:200]} — the gateway serves POST /gateway/<endpoint>/invocations, "
        "/endpoints/<endpoint>/invocations, /v1/chat/completions, /v1/completions, /v1/embeddings "
        f"(endpoints: {names}) and GET /health"
    )


def detail_response(status: int, detail, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"detail": redact_value(detail)}, status_code=status, headers=headers)


def fill_placeholders(detail: str, scope) -> str:
    """MLflow 3.17.2 sends some messages with a placeholder left unfilled, e.g. anthropic's "'n' must be '1' ...
    Received value: '{n}'." (a missing f-prefix): fill each `{field}` with that field of the client's body as
    the kit parsed it (request.request_json), or say that the value is the request's field."""
    if "{" not in detail:
        return detail
    parsed = scope.get(JSON)
    body = parsed if isinstance(parsed, dict) else {}

    def value(match: re.Match) -> str:
        name = match.group(1)
        return json.dumps(body[name])[:100] if name in body else f"<{name} as sent>"

    return _PLACEHOLDER.sub(value, detail)


def redact_value(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    return value


def provider_was_called() -> bool:
    """True once this request waited on a provider (MLflow adds the time to a per-request ContextVar)."""
    duration = provider_call_duration()
    if duration is None:  # MLflow changed: treat an error as the provider's, as the kit did before
        return True
    return duration.get() > 0


def innermost_frame(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "?"
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
