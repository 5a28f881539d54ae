"""The one table from a failed provider call's exception to its JSON error (gateway_kit.request.upstream_failure),
and that every handler answers from it alike: the app's exception handler (an exception before the answer
started) and the fallback middleware (one that escapes the app mid-answer). No processes, no network."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from fastapi import FastAPI
from starlette.exceptions import HTTPException

from gateway_kit.app import add_upstream_error_handlers
from gateway_kit.request import upstream_failure
from gateway_kit.resilience import CircuitName, CircuitOpenError, UpstreamTimeout, error_for
from unit.asgi import request

CIRCUIT = CircuitOpenError(CircuitName("https://api.example.com/v1", "gpt-x"), 12.3, 5)

# exception -> status, error type, message, the usage record's fallback_reason
TABLE = [
    (
        CIRCUIT,
        503,
        "upstream_circuit_open",
        "the provider https://api.example.com/v1 failed 5 times in a row for model gpt-x; the gateway stops "
        "calling it and tries again in 13 s (circuit breaker)",
        "circuit_open",
    ),
    (
        UpstreamTimeout("first_byte", 30, "chat"),
        504,
        "upstream_timeout",
        "endpoint 'chat': the provider sent nothing within 30 s (timeouts.first_byte)",
        "timeout_first_byte",
    ),
    (asyncio.TimeoutError(), 504, "upstream_timeout", "the provider did not answer in time (TimeoutError)", "timeout"),
    (
        aiohttp.ClientPayloadError("cut"),
        502,
        "upstream_bad_response",
        "the provider's answer could not be read (ClientPayloadError)",
        "bad_response",
    ),
    (
        aiohttp.ServerDisconnectedError(),
        502,
        "upstream_unreachable",
        "the provider could not be reached or closed the connection (ServerDisconnectedError)",
        "unreachable",
    ),
    (
        aiohttp.ServerTimeoutError("read"),  # a connection error and a timeout: the timeout row comes first
        504,
        "upstream_timeout",
        "the provider did not answer in time (ServerTimeoutError)",
        "timeout",
    ),
    (
        json.JSONDecodeError("x", "doc", 0),
        502,
        "upstream_bad_response",
        "the provider's answer could not be read (JSONDecodeError)",
        "bad_response",
    ),
    (KeyError("k"), 502, "upstream_error", "the provider call failed (KeyError)", "error_KeyError"),
    (
        HTTPException(429, detail={"message": "slow"}),
        429,
        "upstream_error",
        'the provider answered 429: {"message": "slow"}',
        "http_429",
    ),
]


def names(rows) -> list[str]:
    return [type(row[0]).__name__ for row in rows]


@pytest.mark.parametrize(("exc", "status", "kind", "message", "reason"), TABLE, ids=names(TABLE))
def test_each_provider_failure_has_its_status_type_message_and_reason(exc, status, kind, message, reason):
    failure = upstream_failure(exc)
    assert (failure.status, failure.kind, failure.message, failure.reason) == (status, kind, message, reason)


def test_an_open_circuit_says_when_to_retry():
    assert upstream_failure(CIRCUIT).headers == {"retry-after": "13"}


def test_a_failure_wrapped_mid_answer_is_answered_by_its_cause():
    wrapped = RuntimeError("Caught handled exception, but response already started.")
    wrapped.__cause__ = aiohttp.ClientPayloadError("cut")
    assert upstream_failure(wrapped).kind == "upstream_bad_response"


def app_raising(exc: BaseException) -> FastAPI:
    app = FastAPI()
    add_upstream_error_handlers(app)

    async def call_provider():
        raise exc

    app.add_api_route("/gateway/chat/invocations", call_provider, methods=["POST"])
    return app


ANSWERED_IN_THE_APP = [row for row in TABLE if not isinstance(row[0], (ValueError, KeyError, HTTPException))]


@pytest.mark.parametrize(
    ("exc", "status", "kind", "message", "reason"), ANSWERED_IN_THE_APP, ids=names(ANSWERED_IN_THE_APP)
)
def test_the_app_and_the_fallback_middleware_answer_a_failure_alike(exc, status, kind, message, reason):
    answer = request(app_raising(exc), "/gateway/chat/invocations", {"messages": []})
    _, (held_status, held_headers, held_body) = error_for(exc)
    assert answer.status == held_status == status
    assert answer.json() == json.loads(held_body) == {"error": {"type": kind, "message": message}}
    retry_after = dict(held_headers).get(b"retry-after")
    assert answer.headers.get("retry-after") == (retry_after.decode() if retry_after else None)
