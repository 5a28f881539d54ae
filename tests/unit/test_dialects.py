"""Anthropic's Messages API and OpenAI's Responses API as chat (gateway_kit.dialects): requests translated into
the chat request they mean, chat answers and streams back into each API's shape, and what is refused with a 400
naming the field. In process: the pure functions, and the middleware in front of a scripted chat app."""

from __future__ import annotations

import json

import pytest

from gateway_kit.dialects import (
    ChatEvents,
    Dialects,
    Untranslatable,
    chat_to_message,
    chat_to_response,
    error_in,
    messages_to_chat,
    responses_to_chat,
)
from gateway_kit.request import BODY, DIALECT, JSON, MESSAGES, RESPONSES
from unit.asgi import request

ANSWER = {
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
}


def test_a_messages_request_becomes_the_chat_request_it_means():
    chat = messages_to_chat(
        {
            "model": "anthropic-chat",
            "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                {"role": "user", "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}]},
            ],
            "max_tokens": 100,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "stream": True,
        }
    )
    assert chat == {
        "model": "anthropic-chat",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "One\n\nTwo"},
        ],
        "max_tokens": 100,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "stream": True,
    }


def test_a_responses_request_becomes_the_chat_request_it_means():
    assert responses_to_chat(
        {"model": "chat", "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 50, "temperature": 0}
    ) == {
        "model": "chat",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 50,
        "temperature": 0,
    }
    listed = responses_to_chat(
        {
            "model": "chat",
            "input": [
                {"role": "developer", "content": "Rules"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Q"}]},
                {"role": "assistant", "content": [{"type": "output_text", "text": "A"}]},
            ],
            "stream": True,
        }
    )
    assert listed["messages"] == [
        {"role": "system", "content": "Rules"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    assert listed["stream"] is True


@pytest.mark.parametrize(
    ("translate", "body", "field"),
    [
        (messages_to_chat, {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": []}, "tools"),
        (messages_to_chat, {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_k": 5}, "top_k"),
        (
            messages_to_chat,
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0].type",
        ),
        (
            messages_to_chat,
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
            "messages[0].content[0].type",
        ),
        (messages_to_chat, {"model": "m", "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (messages_to_chat, {"model": "m", "messages": []}, "messages"),
        (responses_to_chat, {"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        (responses_to_chat, {"model": "m", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        (responses_to_chat, {"model": "m", "input": "x", "background": True}, "background"),
        (
            responses_to_chat,
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input[0].content[0].type",
        ),
        (
            responses_to_chat,
            {"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]},
            "input[0].type",
        ),
        (responses_to_chat, {"model": "m"}, "input"),
    ],
)
def test_what_cannot_be_translated_is_refused_naming_the_field(translate, body, field):
    with pytest.raises(Untranslatable) as refused:
        translate(body)
    assert refused.value.field == field and f"`{field}`" in str(refused.value)


def test_a_chat_answer_becomes_an_anthropic_message_with_its_usage():
    message = chat_to_message(ANSWER)
    assert message["type"] == "message" and message["role"] == "assistant" and message["id"].startswith("msg_")
    assert message["content"] == [{"type": "text", "text": "Hello there"}]
    assert message["stop_reason"] == "end_turn" and message["usage"] == {"input_tokens": 12, "output_tokens": 3}
    cut = {**ANSWER, "choices": [{**ANSWER["choices"][0], "finish_reason": "length"}]}
    assert chat_to_message(cut)["stop_reason"] == "max_tokens"


def test_a_chat_answer_becomes_a_response_with_its_usage():
    response = chat_to_response(ANSWER, {"model": "chat", "instructions": "Be brief.", "max_output_tokens": 9})
    assert response["object"] == "response" and response["status"] == "completed"
    assert response["output"][0]["content"][0] == {"type": "output_text", "text": "Hello there", "annotations": []}
    assert response["usage"]["input_tokens"] == 12 and response["usage"]["output_tokens"] == 3
    assert response["usage"]["total_tokens"] == 15
    assert response["instructions"] == "Be brief." and response["max_output_tokens"] == 9
    cut = {**ANSWER, "choices": [{**ANSWER["choices"][0], "finish_reason": "length"}]}
    assert chat_to_response(cut, {})["incomplete_details"] == {"reason": "max_output_tokens"}


def test_errors_take_each_apis_shape():
    kit = json.dumps({"error": {"type": "rate_limit_exceeded", "message": "over", "limit": "client_calls"}}).encode()
    assert error_in(MESSAGES, 429, kit) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "over", "limit": "client_calls"},
    }
    mlflow = json.dumps({"detail": "context too long"}).encode()
    assert error_in(MESSAGES, 400, mlflow)["error"] == {"type": "invalid_request_error", "message": "context too long"}
    assert error_in(RESPONSES, 502, mlflow)["error"]["type"] == "server_error"
    assert error_in(RESPONSES, 400, kit, "tools")["error"]["param"] == "tools"


def chat_stream(*pieces: str, usage=(5, 2)) -> list[bytes]:
    def chunk(**fields) -> bytes:
        return f"data: {json.dumps({'model': 'gpt-4o-mini', **fields})}\n\n".encode()

    frames = [chunk(choices=[{"index": 0, "delta": {"content": p}, "finish_reason": None}]) for p in pieces]
    frames.append(chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    frames.append(chunk(choices=[], usage={"prompt_tokens": usage[0], "completion_tokens": usage[1]}))
    return [*frames, b"data: [DONE]\n\n"]


def events_of(api: str, frames: list[bytes], split: int = 7) -> list[tuple[str, dict]]:
    """The translated events, the chat stream fed in pieces of `split` bytes (events cut anywhere)."""
    translator = ChatEvents(api, {"model": "chat"})
    raw = b"".join(frames)
    out = b"".join(translator.feed(raw[i : i + split]) for i in range(0, len(raw), split)) + translator.close()
    events = []
    for block in out.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_a_chat_stream_becomes_anthropics_event_sequence_with_usage():
    events = events_of(MESSAGES, chat_stream("Hel", "lo"))
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == "Hello"
    assert events[5][1]["usage"] == {"input_tokens": 5, "output_tokens": 2}
    assert events[5][1]["delta"]["stop_reason"] == "end_turn"


def test_a_chat_stream_becomes_the_responses_event_sequence_with_usage():
    events = events_of(RESPONSES, chat_stream("Hel", "lo"))
    names = [name for name, _ in events]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[4:6] == ["response.output_text.delta"] * 2 and names[-1] == "response.completed"
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    completed = events[-1][1]["response"]
    assert completed["output"][0]["content"][0]["text"] == "Hello" and completed["usage"]["total_tokens"] == 7


def test_a_broken_stream_ends_with_the_apis_error_event():
    frames = chat_stream("Hel")[:1] + [b'data: {"error": {"type": "upstream_error", "message": "cut"}}\n\n']
    assert events_of(MESSAGES, frames)[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "cut"}},
    )
    (name, data), (last, failed) = events_of(RESPONSES, frames)[-2:]
    assert name == "error" and data["message"] == "cut"
    assert last == "response.failed" and failed["response"]["error"]["message"] == "cut"


class ChatApp:
    """A chat route that answers ANSWER and remembers the scope and body it was given."""

    def __init__(self, status: int = 200, body: dict = ANSWER) -> None:
        self.status, self.body, self.seen = status, body, []

    async def __call__(self, scope, receive, send):
        message = await receive()
        self.seen.append((scope, message["body"]))
        payload = json.dumps(self.body).encode()
        await send(
            {"type": "http.response.start", "status": self.status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": payload})


def test_the_layers_inside_see_a_chat_request_on_the_chat_route():
    chat = ChatApp()
    body = {"model": "chat", "max_tokens": 9, "messages": [{"role": "user", "content": "Hi"}]}
    answer = request(Dialects(chat), "/v1/messages", body, headers={"content-length": "999"})
    assert answer.status == 200 and answer.json()["content"][0]["text"] == "Hello there"
    ((scope, received),) = chat.seen
    assert scope["path"] == "/v1/chat/completions" and json.loads(received) == scope[JSON]
    assert scope[BODY] == received and scope[JSON]["model"] == "chat" and scope["state"][DIALECT] == MESSAGES
    assert dict(scope["headers"])[b"content-length"] == str(len(received)).encode()
    assert int(answer.headers["content-length"]) == len(answer.body)


def test_an_untranslatable_request_is_a_400_that_never_reaches_the_chat_route():
    chat = ChatApp()
    answer = request(Dialects(chat), "/v1/responses", {"model": "chat", "input": "x", "background": True})
    assert answer.status == 400 and answer.json()["error"]["param"] == "background" and not chat.seen
    answer = request(Dialects(chat), "/v1/messages", b"{not json")
    assert answer.status == 400 and answer.json()["type"] == "error" and not chat.seen


def test_the_chat_routes_error_comes_back_in_the_apis_shape():
    chat = ChatApp(429, {"error": {"type": "rate_limit_exceeded", "message": "over the limit"}})
    body = {"model": "chat", "max_tokens": 9, "messages": [{"role": "user", "content": "Hi"}]}
    answer = request(Dialects(chat), "/v1/messages", body)
    assert answer.status == 429 and answer.json()["error"] == {"type": "rate_limit_error", "message": "over the limit"}


def test_other_paths_pass_through_untouched():
    chat = ChatApp()
    answer = request(Dialects(chat), "/v1/chat/completions", {"model": "chat", "messages": []})
    assert answer.json() == ANSWER and chat.seen[0][0]["path"] == "/v1/chat/completions"
