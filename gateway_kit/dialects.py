"""Anthropic's Messages API (POST /v1/messages) and OpenAI's Responses API (POST /v1/responses), served by the
chat route.

The middleware "dialects" (after client keys, before limits) turns such a request into the OpenAI chat request it
means, on /v1/chat/completions with "model" the endpoint's name, and the chat answer back into the API's own
shape: a JSON answer, an SSE stream as that API's event sequence, an error as that API's error body. Everything
inside it (limits, the in-flight gauge, the usage records, resilience's timeouts and fallbacks, MLflow's provider
translation to OpenAI, Anthropic or Azure) sees a plain chat request. Other paths pass straight through.

What is translated (docs/dialects.md): text only. system / instructions, multi-turn messages whose content is a
string or text blocks, max_tokens / max_output_tokens, temperature, top_p, stop_sequences, stream. Any other
field, or a content block that is not text (images, documents, tool use), is a 400 naming it
(`messages[1].content[0].type`), before any provider is called.

    Anthropic SDK:  anthropic.Anthropic(base_url="http://gateway:5000", api_key="gwk_...")
                        .messages.create(model="anthropic-chat", max_tokens=256, messages=[...])
    OpenAI SDK:     openai.OpenAI(base_url="http://gateway:5000/v1", api_key="gwk_...")
                        .responses.create(model="chat", input="...", instructions="...")
"""

from __future__ import annotations

import json
import os
import time

from pydantic_core import (
    from_json,
    to_json,
)  # pydantic's JSON (there with MLflow): several times the json module's speed

from gateway_kit.request import (
    BODY,
    CHAT_PATH,
    DIALECT,
    JSON,
    MESSAGES,
    RESPONSES,
    error_body,
    header,
    replay_body,
    request_body,
    request_json,
    route_of,
    send_json,
    state_of,
)


class Untranslatable(ValueError):
    """A request field the kit does not translate: a 400 naming it (`field`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _refuse_unknown(body: dict, allowed: frozenset[str], api: str) -> None:
    for name in body:
        if name not in allowed:
            raise Untranslatable(
                name, f"`{name}` is not supported on {api} by this gateway (text only; docs/dialects.md)"
            )


def _text(content, where: str, block_types: frozenset[str]) -> str:
    """The text of a message's content: a string, or a list of text blocks (joined by blank lines)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise Untranslatable(where, f"`{where}` must be a string or a list of text blocks")
    texts = []
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in block_types:
            field = f"{where}[{i}].type"
            raise Untranslatable(field, f"`{field}`: {kind!r} content is not supported by this gateway (text only)")
        text = block.get("text")
        if not isinstance(text, str):
            raise Untranslatable(f"{where}[{i}].text", f"`{where}[{i}].text` must be a string")
        texts.append(text)
    return "\n\n".join(texts)


# ---------------------------------------------------------------------------------------------- requests
_MESSAGES_FIELDS = frozenset(
    ("model", "messages", "system", "max_tokens", "temperature", "top_p", "stop_sequences", "stream", "metadata")
)
_ANTHROPIC_TEXT = frozenset(("text",))
_RESPONSES_FIELDS = frozenset(
    ("model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream", "store", "metadata")
)
_RESPONSES_TEXT = frozenset(("input_text", "output_text", "text"))
_RESPONSES_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def messages_to_chat(body: dict) -> dict:
    """An Anthropic Messages request as the OpenAI chat request it means (raises Untranslatable)."""
    _refuse_unknown(body, _MESSAGES_FIELDS, "/v1/messages")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Untranslatable("messages", "`messages` must be a non-empty list")
    chat_messages = []
    if body.get("system"):
        chat_messages.append({"role": "system", "content": _text(body["system"], "system", _ANTHROPIC_TEXT)})
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise Untranslatable(f"messages[{i}].role", f"`messages[{i}].role` must be 'user' or 'assistant'")
        content = _text(message.get("content"), f"messages[{i}].content", _ANTHROPIC_TEXT)
        chat_messages.append({"role": role, "content": content})
    chat = {"model": body.get("model"), "messages": chat_messages}
    for name in ("max_tokens", "temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("stop_sequences"):
        chat["stop"] = body["stop_sequences"]
    if body.get("stream"):
        chat["stream"] = True
    return chat


def responses_to_chat(body: dict) -> dict:
    """An OpenAI Responses request as the OpenAI chat request it means (raises Untranslatable)."""
    _refuse_unknown(body, _RESPONSES_FIELDS, "/v1/responses")
    given = body.get("input")
    chat_messages = []
    if body.get("instructions"):
        chat_messages.append({"role": "system", "content": _text(body["instructions"], "instructions", frozenset())})
    if isinstance(given, str):
        chat_messages.append({"role": "user", "content": given})
    elif isinstance(given, list) and given:
        for i, item in enumerate(given):
            if not isinstance(item, dict) or item.get("type", "message") != "message":
                kind = item.get("type") if isinstance(item, dict) else None
                raise Untranslatable(f"input[{i}].type", f"`input[{i}].type`: {kind!r} items are not supported")
            role = _RESPONSES_ROLES.get(item.get("role"))
            if role is None:
                raise Untranslatable(
                    f"input[{i}].role", f"`input[{i}].role` must be one of {', '.join(_RESPONSES_ROLES)}"
                )
            chat_messages.append(
                {"role": role, "content": _text(item.get("content"), f"input[{i}].content", _RESPONSES_TEXT)}
            )
    else:
        raise Untranslatable("input", "`input` must be a string or a non-empty list of messages")
    chat = {"model": body.get("model"), "messages": chat_messages}
    for name, chat_name in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(name) is not None:
            chat[chat_name] = body[name]
    if body.get("stream"):
        chat["stream"] = True
    return chat


# ---------------------------------------------------------------------------------------------- answers
def _choice(answer: dict) -> dict:
    choices = answer.get("choices") or [{}]
    return choices[0] if isinstance(choices[0], dict) else {}


def _tokens(usage) -> tuple[int, int]:
    """(input, output) tokens of an OpenAI usage object (0 when absent)."""
    usage = usage if isinstance(usage, dict) else {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _stop_reason(finish: str | None) -> str:
    return {"length": "max_tokens", "tool_calls": "tool_use"}.get(finish, "end_turn")


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def chat_to_message(answer: dict) -> dict:
    """An OpenAI chat answer as an Anthropic Messages answer."""
    choice = _choice(answer)
    text = (choice.get("message") or {}).get("content") or ""
    input_tokens, output_tokens = _tokens(answer.get("usage"))
    return {
        "id": _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": answer.get("model"),
        "content": [{"type": "text", "text": text}],
        "stop_reason": _stop_reason(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def _responses_usage(usage) -> dict:
    input_tokens, output_tokens = _tokens(usage)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _response(request: dict, model, status: str, output: list, usage: dict | None, rid: str, created: int) -> dict:
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "metadata": request.get("metadata") or {},
        "model": model,
        "output": output,
        "parallel_tool_calls": False,
        "temperature": request.get("temperature"),
        "tool_choice": "none",
        "tools": [],
        "top_p": request.get("top_p"),
        "store": False,
        "text": {"format": {"type": "text"}},
        "usage": usage,
    }


def _output_message(item_id: str, text: str, status: str = "completed") -> dict:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def chat_to_response(answer: dict, request: dict) -> dict:
    """An OpenAI chat answer as an OpenAI Responses answer to `request` (the Responses request)."""
    choice = _choice(answer)
    text = (choice.get("message") or {}).get("content") or ""
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    output = [_output_message(_new_id("msg_"), text)]
    return _response(
        request,
        answer.get("model"),
        status,
        output,
        _responses_usage(answer.get("usage")),
        _new_id("resp_"),
        int(time.time()),
    )


# ---------------------------------------------------------------------------------------------- errors
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_message(body: bytes) -> tuple[dict, str]:
    """(the kit's error fields, the message) of an error answer: the kit's envelope, MLflow's {"detail": ...} or
    anything else."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}, body.decode("utf-8", "replace") or "the gateway answered an error"
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error = parsed["error"]
        return error, str(error.get("message", ""))
    detail = parsed.get("detail", parsed) if isinstance(parsed, dict) else parsed
    return {}, detail if isinstance(detail, str) else json.dumps(detail)


def error_in(api: str, status: int, body: bytes, field: str | None = None) -> dict:
    """An error answer (the kit's or MLflow's body) as `api`'s error body."""
    error, message = error_message(body)
    if api == MESSAGES:
        kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {**error, "type": kind, "message": message}}
    kind = error.get("type") or ("server_error" if status >= 500 else "invalid_request_error")
    return {"error": {**error, "type": kind, "message": message, "param": field, "code": error.get("code")}}


# ---------------------------------------------------------------------------------------------- streams
def _sse(event: str, data: dict) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + to_json(data) + b"\n\n"


class ChatEvents:
    """Reads the chat route's SSE stream (bytes as they arrive) and writes `api`'s events for it."""

    def __init__(self, api: str, request: dict) -> None:
        self.api = api
        self.request = request
        self.pending = b""
        self.started = self.ended = False
        self.model = request.get("model")
        self.text: list[str] = []
        self.finish: str | None = None
        self.usage: dict | None = None
        self.sequence = 0
        self.id = _new_id("msg_" if api == MESSAGES else "resp_")
        self.item_id = _new_id("msg_")
        self.created = int(time.time())

    def feed(self, chunk: bytes) -> bytes:
        """The translated events for what `chunk` completes."""
        self.pending += chunk
        out = []
        while b"\n\n" in self.pending:
            event, self.pending = self.pending.split(b"\n\n", 1)
            out.append(self._event(event))
        return b"".join(out)

    def close(self) -> bytes:
        """What is left to send when the chat stream ended: the end events, if [DONE] never came."""
        rest = self._event(self.pending) if self.pending.strip() else b""
        return rest + (b"" if self.ended else self._end())

    def _event(self, raw: bytes) -> bytes:
        data = b"".join(line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:"))
        if not data:
            return b""
        if data == b"[DONE]":
            return self._end()
        try:
            chunk = from_json(data)
        except ValueError:
            return b""
        if not isinstance(chunk, dict):
            return b""
        if "error" in chunk:  # the kit's error event: the stream broke (gateway_kit.resilience)
            self.ended = True
            return self._error(chunk)
        out = b"" if self.started else self._start(chunk)
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choice = _choice(chunk)
        self.finish = choice.get("finish_reason") or self.finish
        piece = (choice.get("delta") or {}).get("content")
        if piece:
            self.text.append(piece)
            out += self._delta(piece)
        return out

    def _start(self, chunk: dict) -> bytes:
        self.started = True
        self.model = chunk.get("model") or self.model
        if self.api == MESSAGES:
            message = {**chat_to_message({"model": self.model}), "id": self.id, "content": [], "stop_reason": None}
            return _sse("message_start", {"type": "message_start", "message": message}) + _sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
        created = self._response("in_progress", [], None)
        item = _output_message(self.item_id, "", "in_progress")
        part = {"type": "output_text", "text": "", "annotations": []}
        return (
            self._responses_event("response.created", response=created)
            + self._responses_event("response.in_progress", response=created)
            + self._responses_event("response.output_item.added", output_index=0, item=item)
            + self._responses_event(
                "response.content_part.added", item_id=self.item_id, output_index=0, content_index=0, part=part
            )
        )

    def _delta(self, piece: str) -> bytes:
        if self.api == MESSAGES:
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            return _sse("content_block_delta", delta)
        return self._responses_event(
            "response.output_text.delta",
            item_id=self.item_id,
            output_index=0,
            content_index=0,
            delta=piece,
            logprobs=[],
        )

    def _end(self) -> bytes:
        if self.ended:
            return b""
        out = b"" if self.started else self._start({})
        self.ended = True
        input_tokens, output_tokens = _tokens(self.usage)
        if self.api == MESSAGES:
            end = {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(self.finish), "stop_sequence": None},
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            }
            return (
                out
                + _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
                + _sse("message_delta", end)
                + _sse("message_stop", {"type": "message_stop"})
            )
        text = "".join(self.text)
        part = {"type": "output_text", "text": text, "annotations": []}
        item = _output_message(self.item_id, text)
        status = "incomplete" if self.finish == "length" else "completed"
        done = self._response(status, [item], _responses_usage(self.usage))
        ids = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return (
            out
            + self._responses_event("response.output_text.done", **ids, text=text, logprobs=[])
            + self._responses_event("response.content_part.done", **ids, part=part)
            + self._responses_event("response.output_item.done", output_index=0, item=item)
            + self._responses_event(f"response.{status}", response=done)
        )

    def _error(self, chunk: dict) -> bytes:
        error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
        message = str(error.get("message", "the provider's stream broke"))
        if self.api == MESSAGES:
            return _sse("error", {"type": "error", "error": {"type": "api_error", "message": message}})
        failed = {**self._response("failed", [], None), "error": {"code": "server_error", "message": message}}
        return self._responses_event(
            "error", code=error.get("type"), message=message, param=None
        ) + self._responses_event("response.failed", response=failed)

    def _response(self, status: str, output: list, usage: dict | None) -> dict:
        return _response(self.request, self.model, status, output, usage, self.id, self.created)

    def _responses_event(self, kind: str, **fields) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return _sse(kind, event)


# ---------------------------------------------------------------------------------------------- middleware
_TO_CHAT = {MESSAGES: messages_to_chat, RESPONSES: responses_to_chat}


class Dialects:
    """ASGI middleware: POST /v1/messages and /v1/responses served as /v1/chat/completions (module docstring)."""

    def __init__(self, app, refused=None) -> None:
        self.app = app
        self.refused = refused  # recording.Refusals, told of each 400 this sends

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        api = route_of(scope["path"]).dialect
        if api is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        started = time.time()
        body, _ = await request_body(scope, receive)
        if body is None:  # the client went away while sending it
            return
        state_of(scope)[DIALECT] = api
        try:
            request = request_json(scope)
            if not isinstance(request, dict):
                raise Untranslatable("body", "the body must be a JSON object")
            chat = _TO_CHAT[api](request)
        except ValueError as e:  # not JSON, nested too deeply, or a field the kit does not translate
            field, kind = (e.field, "unsupported_field") if isinstance(e, Untranslatable) else (None, "invalid_json")
            try:
                return await send_json(send, 400, error_in(api, 400, _kit_error(kind, str(e)), field))
            finally:
                if self.refused is not None:
                    self.refused(scope, 400, kind, started, header(scope, b"x-gateway-client"))
        chat_body = to_json(chat)
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(chat_body)).encode()))
        inner = {
            **scope,
            "path": CHAT_PATH,
            "raw_path": CHAT_PATH.encode(),
            "headers": headers,
            BODY: chat_body,
            JSON: chat,
        }
        await self.app(inner, replay_body(chat_body, receive), _Answer(api, request, send).send)


def _kit_error(kind: str, message: str) -> bytes:
    return json.dumps(error_body(kind, message)).encode()


class _Answer:
    """The send that turns the chat route's answer into `api`'s: a JSON answer is held whole and rewritten, a
    stream is rewritten event by event as it goes out."""

    def __init__(self, api: str, request: dict, send) -> None:
        self.api = api
        self.request = request
        self.client_send = send
        self.status = 0
        self.headers: list = []
        self.held = bytearray()
        self.stream: ChatEvents | None = None

    async def send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [
                (k, v) for k, v in message.get("headers", ()) if k not in (b"content-length", b"content-type")
            ]
            streaming = any(
                k == b"content-type" and v.startswith(b"text/event-stream") for k, v in message.get("headers", ())
            )
            if streaming and self.status < 400:
                self.stream = ChatEvents(self.api, self.request)
                await self.client_send(message)
            return
        if message["type"] != "http.response.body":
            return await self.client_send(message)
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        if self.stream is not None:
            out = self.stream.feed(chunk) + (b"" if more else self.stream.close())
            if out or not more:
                await self.client_send({"type": "http.response.body", "body": out, "more_body": more})
            return
        self.held += chunk
        if more:
            return
        if self.status < 400:
            try:
                answer = from_json(self.held)
            except ValueError:
                answer = None
            if isinstance(answer, dict):
                translated = chat_to_message(answer) if self.api == MESSAGES else chat_to_response(answer, self.request)
                return await send_json(self.client_send, self.status, translated, self.headers)
            self.status, self.held = 502, bytearray(_kit_error("upstream_bad_response", "the chat answer was not JSON"))
        await send_json(self.client_send, self.status, error_in(self.api, self.status, bytes(self.held)), self.headers)
