"""Anthropic's Messages API (POST /v1/messages) and OpenAI's Responses API (POST /v1/responses) through nginx and
two replicas, with the official SDKs (docs/dialects.md): an Anthropic and an OpenAI endpoint, JSON and streams,
usage in the SDKs' objects, the usage records, limits and fallbacks as on the chat route, a 400 naming what is not
supported, the gateway key as the Anthropic SDK sends it (x-api-key).

The module restarts the session stack with client keys and a config with two endpoints of its own (a limited
one, one that falls back to anthropic-chat), and puts it back (2 replicas, the demo config, no keys) at the end.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anthropic
import openai
import pytest
import yaml

from conftest import REPO
from stack.test_limits_and_keys import add_key
from stack.test_usage_records import records_of

pytestmark = [pytest.mark.integration, pytest.mark.stack]

LIMIT = 2  # limited-chat: calls per minute, every client together


def dialects_config(path: Path) -> Path:
    """config.yaml plus limited-chat (LIMIT calls a minute) and flaky-chat (model gpt-4o; falls back to
    anthropic-chat): the fake's [[fault@gpt-4o:500]] fails flaky-chat only."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    chat = next(e for e in config["endpoints"] if e["name"] == "chat")
    limited = {**chat, "name": "limited-chat", "limit": {"calls": LIMIT, "renewal_period": "minute"}}
    flaky = {
        **chat,
        "name": "flaky-chat",
        "model": {**chat["model"], "name": "gpt-4o"},
        "retries": 0,
        "fallback": {"to": ["anthropic-chat"]},
    }
    config["endpoints"] += [limited, flaky]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def gateway_key(stack, tmp_path_factory):
    """The session stack as 2 replicas with client keys and dialects_config; yields the client "sdk"'s key."""
    where = tmp_path_factory.mktemp("dialects")
    keys_file = where / "keys" / "keys.json"
    key = add_key(keys_file, "sdk")
    stack.run("down")
    try:
        stack.run(
            "up", "--replicas", "2", "--config", str(dialects_config(where / "config.yaml")), "--keys", str(keys_file)
        )
        yield key
    finally:
        stack.run("down", check=False)
        stack.run("up", "--replicas", "2")


@pytest.fixture
def claude(stack, gateway_key) -> anthropic.Anthropic:
    """The Anthropic SDK on the gateway: it sends the gateway key as x-api-key."""
    return anthropic.Anthropic(base_url=stack.url, api_key=gateway_key, max_retries=0)


@pytest.fixture
def oai(stack, gateway_key) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.url}/v1", api_key=gateway_key, max_retries=0)


def request_id() -> str:
    return f"dialect-{uuid.uuid4().hex[:12]}"


def test_the_anthropic_sdk_gets_a_message_from_an_anthropic_endpoint_and_a_record_with_its_usage(stack, claude):
    rid = request_id()
    message = claude.messages.create(
        model="anthropic-chat",
        max_tokens=200,
        system="You are terse.",
        messages=[
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "First answer"},
            {"role": "user", "content": [{"type": "text", "text": "Second question"}]},
        ],
        extra_headers={"X-Request-ID": rid},
    )
    # the fake counts the system prompt and the two earlier turns as context
    assert (
        message.content[0].text
        == "Fake answer to: Second question (context: 3 earlier messages; first said: 'First question')"
    )
    assert (
        message.role == "assistant" and message.stop_reason == "end_turn" and message.model == "claude-3-5-haiku-latest"
    )
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    (record,) = records_of(stack, rid)
    assert (record["api"], record["endpoint"], record["provider"], record["client"]) == (
        "messages",
        "anthropic-chat",
        "anthropic",
        "sdk",
    )
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        message.usage.input_tokens,
        message.usage.output_tokens,
    )
    assert record["status"] == 200 and record["cost_usd"] > 0


def test_the_anthropic_sdk_streams_from_an_openai_endpoint_in_anthropics_event_sequence(stack, claude):
    rid = request_id()
    with claude.messages.stream(
        model="chat",
        max_tokens=200,
        messages=[{"role": "user", "content": "Stream this"}],
        extra_headers={"X-Request-ID": rid},
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-3:] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert "content_block_delta" in kinds
    assert final.content[0].text == "Fake answer to: Stream this" and final.model == "gpt-4o-mini"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    (record,) = records_of(stack, rid)
    assert record["api"] == "messages" and record["stream"] and not record["partial"] and record["provider"] == "openai"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )


@pytest.mark.parametrize("endpoint", ["chat", "anthropic-chat"])
def test_stop_sequences_reach_the_provider(claude, endpoint):
    message = claude.messages.create(
        model=endpoint, max_tokens=100, stop_sequences=[" to:"], messages=[{"role": "user", "content": "Hi"}]
    )
    assert message.content[0].text == "Fake answer"


def test_max_tokens_cuts_the_answer_and_says_so(claude):
    message = claude.messages.create(
        model="chat", max_tokens=2, messages=[{"role": "user", "content": "A long question"}]
    )
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2


def test_responses_create_fills_output_text_and_usage_with_instructions(stack, oai):
    rid = request_id()
    response = oai.responses.create(
        model="chat",
        input="What is a gateway?",
        instructions="Answer in one line.",
        extra_headers={"X-Request-ID": rid},
    )
    assert (
        response.output_text
        == "Fake answer to: What is a gateway? (context: 1 earlier message; first said: 'What is a gateway?')"
    )
    assert response.status == "completed" and response.instructions == "Answer in one line."
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    (record,) = records_of(stack, rid)
    assert record["api"] == "responses" and record["endpoint"] == "chat" and record["client"] == "sdk"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (
        response.usage.input_tokens,
        response.usage.output_tokens,
    )


def test_responses_take_a_message_list_on_an_anthropic_endpoint(oai):
    response = oai.responses.create(
        model="anthropic-chat",
        input=[
            {"role": "user", "content": "Earlier"},
            {"role": "assistant", "content": "Noted"},
            {"role": "user", "content": [{"type": "input_text", "text": "Now"}]},
        ],
        max_output_tokens=100,
    )
    assert response.output_text == "Fake answer to: Now (context: 2 earlier messages; first said: 'Earlier')"


def test_responses_stream_text_deltas_and_end_with_completed_and_usage(stack, oai):
    rid = request_id()
    with oai.responses.stream(model="anthropic-chat", input="Stream it", extra_headers={"X-Request-ID": rid}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.output_text == "Fake answer to: Stream it" and final.usage.output_tokens > 0
    (record,) = records_of(stack, rid)
    assert record["api"] == "responses" and record["stream"] and record["provider"] == "anthropic"
    assert record["completion_tokens"] == final.usage.output_tokens


def test_a_stream_the_provider_breaks_ends_with_the_apis_error(stack, claude, oai):
    rid = request_id()
    with pytest.raises(anthropic.APIStatusError) as broken:
        with claude.messages.stream(
            model="chat",
            max_tokens=100,
            messages=[{"role": "user", "content": "one two three four [[fault:truncate]]"}],
            extra_headers={"X-Request-ID": rid},
        ) as stream:
            kinds = [event.type for event in stream]
    assert broken.value.body["error"]["type"] == "api_error"
    (record,) = records_of(stack, rid)
    assert record["api"] == "messages" and record["partial"] and record["error"]
    with oai.responses.stream(model="chat", input="one two three four [[fault:truncate]]") as stream:
        kinds = [event.type for event in stream]
    assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"]


def test_what_is_not_supported_is_a_400_naming_the_field_and_calls_no_provider(stack, claude, oai):
    provider_calls = stack.fake_stats()["requests"]
    rid = request_id()
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(
            model="chat",
            max_tokens=10,
            messages=[{"role": "user", "content": "x"}],
            tools=[{"name": "lookup", "input_schema": {"type": "object"}}],
            extra_headers={"X-Request-ID": rid},
        )
    assert "`tools`" in refused.value.message and refused.value.body["type"] == "error"
    (record,) = records_of(stack, rid)
    assert (record["status"], record["error"], record["api"], record["endpoint"], record["client"]) == (
        400,
        "refused:unsupported_field",
        "messages",
        "chat",
        "sdk",
    )
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(
            model="chat",
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}]}],
        )
    assert "`messages[0].content[0].type`" in refused.value.message
    for field, value in (
        ("previous_response_id", "resp_123"),
        ("background", True),
        ("tools", [{"type": "web_search"}]),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            oai.responses.create(model="chat", input="x", **{field: value})
        assert refused.value.param == field and f"`{field}`" in refused.value.message
    assert stack.fake_stats()["requests"] == provider_calls


def test_a_wrong_gateway_key_is_the_sdks_authentication_error(stack, gateway_key):
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=stack.url, api_key="gwk_not-a-key", max_retries=0).messages.create(
            model="chat", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.url}/v1", api_key="gwk_not-a-key", max_retries=0).responses.create(
            model="chat", input="x"
        )


def test_an_endpoints_limit_counts_both_apis_and_answers_the_sdks_rate_limit_error(claude, oai):
    claude.messages.create(model="limited-chat", max_tokens=10, messages=[{"role": "user", "content": "one"}])
    oai.responses.create(model="limited-chat", input="two")
    with pytest.raises(anthropic.RateLimitError) as over:
        claude.messages.create(model="limited-chat", max_tokens=10, messages=[{"role": "user", "content": "three"}])
    assert (
        over.value.body["error"]["type"] == "rate_limit_error"
        and over.value.body["error"]["limit"]["name"] == "endpoint"
    )
    with pytest.raises(openai.RateLimitError):
        oai.responses.create(model="limited-chat", input="four")


def test_a_failing_endpoint_falls_back_and_the_record_says_which_answered(stack, claude, oai):
    rid = request_id()
    message = claude.messages.create(
        model="flaky-chat",
        max_tokens=100,
        messages=[{"role": "user", "content": "[[fault@gpt-4o:500]] hello"}],
        extra_headers={"X-Request-ID": rid},
    )
    assert message.model == "claude-3-5-haiku-latest" and message.content[0].text.startswith("Fake answer to:")
    (record,) = records_of(stack, rid)
    assert (record["api"], record["endpoint"], record["served_by"], record["fallback_reason"]) == (
        "messages",
        "flaky-chat",
        "anthropic-chat",
        "http_500",
    )
    with oai.responses.stream(model="flaky-chat", input="[[fault@gpt-4o:500]] again") as stream:
        final = stream.get_final_response()
    assert final.model == "claude-3-5-haiku-latest" and final.output_text.startswith("Fake answer to:")


def test_both_replicas_serve_the_translated_routes(claude):
    replicas = set()
    for i in range(12):
        raw = claude.messages.with_raw_response.create(
            model="chat", max_tokens=10, messages=[{"role": "user", "content": f"hello {i}"}]
        )
        replicas.add(raw.headers["x-gateway-replica"])
        assert raw.parse().content[0].text == f"Fake answer to: hello {i}"
    assert len(replicas) == 2
