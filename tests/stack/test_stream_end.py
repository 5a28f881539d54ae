"""OpenAI-shaped streams end with `data: [DONE]`, on /v1/chat/completions and on /gateway/NAME/invocations, for
the OpenAI, Azure and Anthropic endpoints; a stream that breaks ends with an error event and no [DONE], as
OpenAI's own do. Read with a plain SSE client (requests, line by line) through nginx."""

from __future__ import annotations

import json

import openai
import pytest
import requests

pytestmark = [pytest.mark.integration, pytest.mark.stack]

ENDPOINTS = ["chat", "azure-chat", "anthropic-chat"]  # config.yaml: OpenAI, Azure OpenAI, Anthropic


def stream_lines(stack, route: str, endpoint: str, content: str) -> list[str]:
    """Every line of the response body, as a hand-written SSE client reads it, until the server closes."""
    messages = [{"role": "user", "content": content}]
    if route == "v1":
        url, body = f"{stack.url}/v1/chat/completions", {"model": endpoint, "messages": messages, "stream": True}
    else:
        url, body = f"{stack.url}/gateway/{endpoint}/invocations", {"messages": messages, "stream": True}
    with requests.post(url, json=body, stream=True, timeout=30) as r:
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"].startswith("text/event-stream")
        return list(r.iter_lines(decode_unicode=True))


@pytest.mark.parametrize("route", ["v1", "gateway"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_stream_ends_with_done_and_nothing_after_it(stack, route, endpoint):
    lines = stream_lines(stack, route, endpoint, "Count to three")
    data = [line for line in lines if line.startswith("data:")]
    assert data[-1] == "data: [DONE]", data[-3:]
    assert not any(lines[lines.index("data: [DONE]") + 1 :]), lines  # nothing follows, not even an event
    assert data.count("data: [DONE]") == 1
    chunks = [json.loads(line[5:]) for line in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Fake answer to: Count to three"


@pytest.mark.parametrize("route", ["v1", "gateway"])
def test_a_stream_cut_by_the_provider_ends_with_an_error_event_and_no_done(stack, route):
    lines = stream_lines(stack, route, "chat", "[[fault:truncate]] a long answer that the provider cuts short")
    data = [line for line in lines if line.startswith("data:")]
    assert "data: [DONE]" not in data
    last = json.loads(data[-1][5:])
    assert last["error"]["type"].startswith("upstream_"), last
    assert len(data) > 1  # the answer had started: the error ends it
    assert not any(lines[lines.index(data[-1]) + 1 :]), lines


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_the_openai_client_reads_the_stream_to_its_end(stack, endpoint):
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="not-used-by-the-gateway", max_retries=0)
    stream = client.chat.completions.create(
        model=endpoint, messages=[{"role": "user", "content": "Stream me"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Fake answer to: Stream me"
