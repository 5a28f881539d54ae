"""Bad requests through the stack (nginx -> replicas): each gets a clear 4xx JSON error, and the gateway keeps serving.

The table of answers is in docs/security.md; gateway_kit/request_errors.py makes them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time

import pytest
import requests
from conftest import gone

pytestmark = [pytest.mark.integration, pytest.mark.stack]

HELLO = [{"role": "user", "content": "Hello"}]
# Every route a client can call, with a good body for it.
ROUTES = {
    "/gateway/chat/invocations": {"messages": HELLO},
    "/endpoints/chat/invocations": {"messages": HELLO},
    "/gateway/chat-split/invocations": {"messages": HELLO},
    "/v1/chat/completions": {"model": "chat", "messages": HELLO},
    "/v1/completions": {"model": "completions", "prompt": "Hello"},
    "/v1/embeddings": {"model": "embeddings", "input": "Hello"},
}
# The field each route needs, and a value of the wrong type for it.
REQUIRED = {"/v1/completions": "prompt", "/v1/embeddings": "input"}
JSON = {"Content-Type": "application/json"}


def post(stack, path: str, data: bytes | str | None = None, headers: dict | None = None, **kw) -> requests.Response:
    return requests.post(
        f"{stack.url}{path}", data=data, headers=JSON if headers is None else headers, timeout=30, **kw
    )


def error_of(r: requests.Response) -> dict:
    """The kit's error body; fails the test when the answer is not {"error": {"type", "message"}} JSON."""
    assert r.headers["Content-Type"].startswith("application/json"), (r.status_code, r.headers, r.text)
    error = r.json()["error"]
    assert isinstance(error["type"], str) and isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in r.text
    return error


def still_serves(stack) -> None:
    r = requests.post(f"{stack.url}/gateway/chat/invocations", json={"messages": HELLO}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Fake answer to: Hello"


# ------------------------------------------------------------------------------------------- bodies


@pytest.mark.parametrize("path", list(ROUTES))
def test_malformed_json_is_a_400_pointing_at_the_body_on_every_route(stack, path):
    r = post(stack, path, '{"messages": [oops')
    assert r.status_code == 400
    error = error_of(r)
    assert error["type"] == "invalid_json"
    assert "not valid JSON" in error["message"] and "character 14" in error["message"]
    assert "send a JSON object such as {" in error["message"]
    still_serves(stack)


@pytest.mark.parametrize("path", list(ROUTES))
def test_a_missing_field_is_a_422_naming_it_on_every_route(stack, path):
    body = dict(ROUTES[path])
    field = REQUIRED.get(path, "messages")
    del body[field]
    r = post(stack, path, json.dumps(body))
    assert r.status_code == 422
    error = error_of(r)
    assert error["type"] == "invalid_request"
    assert f"'{field}' is required" in error["message"], error["message"]
    still_serves(stack)


@pytest.mark.parametrize("path", list(ROUTES))
def test_a_wrong_type_is_a_422_naming_the_field_on_every_route(stack, path):
    body = {**ROUTES[path], "max_tokens": "lots"} if "embeddings" not in path else {**ROUTES[path], "input": {"a": 1}}
    r = post(stack, path, json.dumps(body))
    assert r.status_code == 422
    message = error_of(r)["message"]
    field = "'input'" if "embeddings" in path else "'max_tokens'"
    assert field in message and ("valid integer" in message or "wrong type" in message), message


@pytest.mark.parametrize(
    ("body", "status", "kind", "says"),
    [
        (b"", 400, "empty_body", "no body"),
        (b"[1, 2]", 422, "invalid_request", "the body must be a JSON object"),
        (b'"just a string"', 422, "invalid_request", "the body must be a JSON object"),
        (b"\xff\xfe{", 400, "invalid_json", "UTF-8"),
        (b'{"messages": [{"role": "user", "content": {"a": 1}}]}', 422, "invalid_request", "'messages[0].content'"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 5}',
            422,
            "invalid_request",
            "'temperature': Input should be less than or equal to 2",
        ),
        # 1e999 is infinity once parsed: FastAPI's own 422 then fails to encode it and answers a 500.
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}',
            422,
            "invalid_request",
            "'temperature'",
        ),
        (b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}', 400, "invalid_json", "unpaired"),
    ],
    ids=["empty", "array", "string", "not-utf8", "nested-wrong-type", "out-of-range", "infinity", "lone-surrogate"],
)
def test_bad_bodies_get_a_4xx_saying_what_is_wrong(stack, body, status, kind, says):
    r = post(stack, "/gateway/chat/invocations", body)
    assert r.status_code == status, r.text
    error = error_of(r)
    assert error["type"] == kind and says in error["message"], error
    still_serves(stack)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/gateway/chat/invocations"])
def test_json_nested_too_deeply_is_a_400_saying_so_and_the_limit(stack, path):
    r = post(stack, path, "[" * 10_000 + "]" * 10_000)
    assert r.status_code == 400, r.text
    error = error_of(r)
    assert error["type"] == "invalid_json", error
    assert "nested too deeply" in error["message"] and "at most 128 levels" in error["message"], error
    # The limit is the kit's, the same wherever the nesting is: one level more than it is refused too.
    body = {**ROUTES[path], "metadata": json.loads("[" * 128 + "]" * 128)}  # the body itself is level 1
    assert "nested too deeply" in error_of(post(stack, path, json.dumps(body)))["message"]
    body["metadata"] = json.loads("[" * 127 + "]" * 127)
    r = post(stack, path, json.dumps(body))
    assert r.status_code != 400 or "nested too deeply" not in r.text, r.text
    still_serves(stack)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/gateway/anthropic-chat/invocations", {"messages": HELLO, "n": 5}),
        ("/v1/chat/completions", {"model": "anthropic-chat", "messages": HELLO, "n": 5}),
    ],
)
def test_mlflows_own_refusal_says_the_value_the_client_sent(stack, path, body):
    """MLflow 3.17.2 words it "Received value: '{n}'" (no f-prefix); on /v1/* it was a 500."""
    r = post(stack, path, json.dumps(body))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "'n' must be '1'" in detail and "Received value: '5'" in detail and "{n}" not in detail, detail


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_sent_as_json_is_a_415(stack, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = requests.post(
        f"{stack.url}/gateway/chat/invocations",
        data=json.dumps({"messages": HELLO}).encode(),
        headers=headers,
        timeout=30,
    )
    assert r.status_code == 415
    error = error_of(r)
    assert error["type"] == "unsupported_media_type" and "Content-Type: application/json" in error["message"]


# ------------------------------------------------------------- the client's JSON vs the provider's JSON


def test_a_clients_malformed_tool_call_arguments_are_a_400_not_blamed_on_the_provider(stack):
    """MLflow parses an assistant tool call's `arguments` string for Anthropic; JSON that does not parse used to
    come back as 502 upstream_bad_response. The provider was never called."""
    before = stack.fake_stats()["by_path"].get("/v1/messages", 0)
    messages = [
        {"role": "user", "content": "What is the weather?"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{not json"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    r = post(stack, "/gateway/anthropic-chat/invocations", json.dumps({"messages": messages}))
    assert r.status_code == 400, r.text
    error = error_of(r)
    assert error["type"] == "invalid_request" and "tool_calls" in error["message"]
    assert "JSONDecodeError" in error["message"]
    assert stack.fake_stats()["by_path"].get("/v1/messages", 0) == before
    still_serves(stack)


@pytest.mark.parametrize("path", list(ROUTES))
def test_a_providers_garbled_answer_stays_a_502_blaming_the_provider(stack, path):
    body = json.loads(json.dumps(ROUTES[path]).replace("Hello", "[[fault:malformed]]"))
    r = post(stack, path, json.dumps(body))
    assert r.status_code == 502, r.text
    error = error_of(r)
    assert error["type"] == "upstream_bad_response" and "provider's answer" in error["message"]
    still_serves(stack)


# --------------------------------------------------------------------------- paths, names, methods


@pytest.mark.parametrize("path", ["/gateway/no-such-endpoint/invocations", "/endpoints/no-such-endpoint/invocations"])
def test_an_unknown_endpoint_is_a_404_listing_the_endpoints(stack, path):
    r = post(stack, path, json.dumps({"messages": HELLO}))
    assert r.status_code == 404
    message = error_of(r)["message"]
    assert "no endpoint named 'no-such-endpoint'" in message and "chat, completions, embeddings" in message


def test_an_unknown_path_is_a_404_listing_the_routes(stack):
    r = requests.get(f"{stack.url}/v2/chat", timeout=30)
    assert r.status_code == 404
    error = error_of(r)
    assert error["type"] == "not_found" and "/v1/chat/completions" in error["message"]


def test_an_unknown_or_missing_model_on_v1_is_a_4xx_not_a_500(stack):
    r = post(stack, "/v1/chat/completions", json.dumps({"model": "gpt-17", "messages": HELLO}))
    assert r.status_code == 404 and "no endpoint named 'gpt-17'" in error_of(r)["message"]
    r = post(stack, "/v1/chat/completions", json.dumps({"messages": HELLO}))
    assert r.status_code == 400 and "'model' is required" in error_of(r)["message"]
    r = post(stack, "/v1/chat/completions", json.dumps({"model": "embeddings", "messages": HELLO}))
    assert r.status_code == 400 and "is not a chat endpoint" in error_of(r)["message"]
    still_serves(stack)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/gateway/chat/invocations"), ("PUT", "/v1/embeddings"), ("DELETE", "/v1/chat/completions")],
)
def test_a_wrong_method_is_a_405_saying_which_to_use(stack, method, path):
    r = requests.request(method, f"{stack.url}{path}", timeout=30)
    assert r.status_code == 405
    error = error_of(r)
    assert error["type"] == "method_not_allowed" and f"{method} is not allowed" in error["message"]
    assert r.headers["Allow"] == "POST" and "use POST" in error["message"]


# ------------------------------------------------------------------------------ size, headers, slowness


def test_an_oversized_body_is_a_413_at_nginx_and_at_a_replica_called_directly(stack):
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (11 * 1024 * 1024) + b'"}]}'
    r = post(stack, "/gateway/chat/invocations", big)
    assert r.status_code == 413 and error_of(r)["type"] == "request_too_large"

    replica = "http://127.0.10.1:8000"
    r = requests.post(f"{replica}/gateway/chat/invocations", data=big, headers=JSON, timeout=30)
    assert r.status_code == 413
    error = error_of(r)
    assert error["type"] == "request_too_large" and "GATEWAY_MAX_BODY_MB" in error["message"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(11):
            yield b"x" * (1024 * 1024)

    r = requests.post(f"{replica}/gateway/chat/invocations", data=chunks(), headers=JSON, timeout=30)
    assert r.status_code == 413 and error_of(r)["type"] == "request_too_large"
    ok = requests.post(f"{replica}/gateway/chat/invocations", json={"messages": HELLO}, timeout=30)
    assert ok.status_code == 200, ok.text
    still_serves(stack)


def raw_http(payload: bytes, timeout: float = 40) -> tuple[bytes, float]:
    """Send bytes to nginx as they are; return what came back before nginx closed, and after how long."""
    started = time.monotonic()
    data = b""
    with socket.create_connection(("127.0.0.1", 5000), timeout=timeout) as s:
        s.sendall(payload)
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data, time.monotonic() - started


def test_broken_http_headers_and_uris_get_json_from_nginx(stack):
    big_header, _ = raw_http(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert big_header.startswith(b"HTTP/1.1 400 ")
    body = json.loads(big_header.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["type"] == "bad_request"
    long_uri, _ = raw_http(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert long_uri.startswith(b"HTTP/1.1 414 ")
    assert json.loads(long_uri.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "uri_too_long"
    garbage, _ = raw_http(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    assert garbage.startswith(b"HTTP/1.1 400 ") and b'"bad_request"' in garbage
    still_serves(stack)


@pytest.mark.parametrize("path", ["/gateway/../../etc/passwd", "/v1/%2e%2e/%2E%2E/etc/passwd"])
def test_a_path_climbing_above_the_root_gets_a_400_about_the_path(stack, path):
    """nginx resolves `..` itself and refuses a path that climbs above /: its answer names the path, not headers."""
    answer, _ = raw_http(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    head, body = answer.split(b"\r\n\r\n", 1)
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["type"] == "bad_request"
    assert "path" in error["message"] and "'..'" in error["message"] and "header" not in error["message"], error
    still_serves(stack)


def access_log(stack) -> list[dict]:
    """nginx's access log (logs/nginx.log): every line must be a JSON object (error lines go to nginx-error.log)."""
    return [json.loads(line) for line in stack.log("nginx").splitlines()]


def logged(stack, request_id: str) -> dict:
    time.sleep(0.3)  # nginx writes the line once the answer is sent
    return next(entry for entry in access_log(stack) if entry["request_id"] == request_id)


def test_nginxs_own_error_pages_are_logged_with_the_clients_method(stack):
    """An error page turns the request into a GET inside nginx; the log still says what the client sent."""
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * (11 * 1024 * 1024) + b'"}]}'
    r = post(stack, "/gateway/chat/invocations", big, headers={**JSON, "X-Request-ID": "method-413"})
    assert r.status_code == 413
    long_uri, _ = raw_http(b"POST /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    assert long_uri.startswith(b"HTTP/1.1 414 ")
    # nginx never read this request's headers: the id is its own, sent back in the answer
    request_id = re.search(rb"\r\nX-Request-ID: ([0-9a-f]+)\r\n", long_uri).group(1).decode()
    assert logged(stack, "method-413")["method"] == "POST" and logged(stack, "method-413")["status"] == 413
    assert logged(stack, request_id)["status"] == 414 and logged(stack, request_id)["method"] == "POST"
    ok = requests.get(f"{stack.url}/health", headers={"X-Request-ID": "method-get"}, timeout=30)
    assert ok.status_code == 200 and logged(stack, "method-get")["method"] == "GET"


def test_a_502_from_nginx_is_logged_as_the_post_it_was_and_its_error_line_goes_to_the_error_log(stack):
    """No replica takes connections: nginx answers 502 JSON. The access log keeps the POST, and nginx's own
    error lines (connect() failed) go to logs/nginx-error.log, never into the JSON access log."""
    pids = [stack.pid(name) for name in ("replica-1", "replica-2")]
    for pid in pids:
        os.killpg(pid, signal.SIGKILL)
    try:
        assert all(gone(pid, 20, group=True) for pid in pids)
        errors_before = len(stack.log("nginx-error"))
        r = post(
            stack,
            "/gateway/chat/invocations",
            json.dumps({"messages": HELLO}),
            headers={**JSON, "X-Request-ID": "method-502"},
        )
        assert r.status_code == 502 and error_of(r)["type"] == "gateway_unavailable"
        entry = logged(stack, "method-502")
        assert entry["method"] == "POST" and entry["status"] == 502 and entry["upstream_addr"], entry
        errors = stack.log("nginx-error")[errors_before:]
        assert "[error]" in errors and "upstream" in errors, errors
        assert '"POST /gateway/chat/invocations HTTP/1.1"' in errors, errors
        access_log(stack)  # every line parses as JSON: none of nginx's error lines is there
    finally:
        stack.scale(2)
    still_serves(stack)


def test_slow_clients_are_cut_off_by_nginx_and_never_reach_a_replica(stack):
    """client_header_timeout 10s, client_body_timeout 15s: nginx closes the connection and logs 408 (it sends
    no answer on these timeouts), while normal requests keep being served."""
    results: dict[str, tuple[bytes, float]] = {}
    slow = {
        "headers": b"POST /gateway/chat/invocations HTTP/1.1\r\nHost: x\r\nX-Request-ID: slow-headers-1\r\n",
        "body": b"POST /gateway/chat/invocations HTTP/1.1\r\nHost: x\r\nX-Request-ID: slow-body-1\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"messages"',
    }
    threads = [threading.Thread(target=lambda k=k, p=p: results.__setitem__(k, raw_http(p))) for k, p in slow.items()]
    for t in threads:
        t.start()
    still_serves(stack)  # while both hang
    for t in threads:
        t.join(timeout=60)
    assert results["headers"][0] == b"" and results["headers"][1] > 9  # waited for the timeout, then closed
    assert results["body"][0] == b"" and results["body"][1] > 14
    time.sleep(0.5)
    logged = {
        json.loads(line)["request_id"]: json.loads(line)
        for line in stack.log("nginx").splitlines()
        if line.startswith("{") and "slow-" in line
    }
    assert logged["slow-headers-1"]["status"] == 408 and logged["slow-headers-1"]["upstream_addr"] == ""
    assert logged["slow-body-1"]["status"] == 408 and logged["slow-body-1"]["upstream_addr"] == ""
    still_serves(stack)
