"""A fake LLM provider (OpenAI, Azure OpenAI, Anthropic) for offline tests, the demo and benchmarks.

It answers what MLflow 3.17.2's gateway providers send, with the fields they parse, deterministically
and fast (it is the baseline in bench/). It never calls a real API.

Usage:
    python -m gateway_kit.fake_upstream --host 127.0.0.1 --port 9000
    python -m gateway_kit.fake_upstream --ttft-ms 300 --chunk-delay-ms 20       # feel like a model
    python -m gateway_kit.fake_upstream --fault-rate 0.05 --fault 500 --seed 1  # soak test

Gateway config: openai_api_base and anthropic_api_base http://HOST:PORT/v1; Azure openai_api_base
http://HOST:PORT (MLflow appends /openai/deployments/<deployment>/<route>?api-version=<version>).

    POST /v1/chat/completions, /v1/completions, /v1/embeddings             OpenAI (stream and not)
    POST /openai/deployments/{d}/chat/completions|completions|embeddings   Azure OpenAI
    POST /v1/messages                                                      Anthropic (stream and not)
    GET /health; GET /_fake/stats -> {requests, by_path, by_host, by_fault, auth_headers, key_fingerprints,
    connections, cancelled (answers abandoned by the caller), trace_headers (the W3C traceparent and
    tracestate of the last 100 requests that had one)}; POST /_fake/reset

Keys are never stored: key_fingerprints counts the first 16 hex digits of the SHA-256 of each key received
(Authorization without "Bearer ", x-api-key, api-key), so a test can check which key arrived. [[fault:401]]
answers like OpenAI, naming the key it got, but in full (OpenAI masks the middle): the worst case for a
gateway that passes provider errors on.

Answers: "Fake answer to: <last user message>", plus "(context: N earlier messages; first said:
'<first 60 chars of the first user message>')" when there are earlier messages (an Anthropic system
prompt counts as one), cut before the first of the request's stop sequences (`stop`, Anthropic
`stop_sequences`). Tokens: about 1 per 4 characters (min 1) of each text. max_tokens truncates the
reply (finish_reason "length", Anthropic stop_reason "max_tokens"). The model is the request's `model`,
else the Azure deployment, else gpt-4o-mini / gpt-3.5-turbo-instruct / text-embedding-3-small /
claude-3-5-haiku-latest by route. OpenAI streams end with a usage chunk (choices: []) and [DONE], unless
the request sets stream_options.include_usage to false. Embeddings: 8 dims (or `dimensions`), float or
base64 as asked.

Markers anywhere in a message, prompt or input: [[fault:429]] [[fault:quota]] [[fault:500]]
[[fault:400]] (a bad request: context too long) [[fault:401]] [[fault:drop]] [[fault:malformed]] [[fault:slow]] [[fault:truncate]] [[latency:MS]]
[[ttft:MS]] [[chunk_delay:MS]] [[reply:TEXT]]. --fault-rate/--fault inject one fault at random (seeded by --seed).
A marker scoped with @WHO applies only to requests for that model (or Azure deployment) or sent to that host
name, so one prompt can fail one endpoint and not its fallback: [[fault@gpt-4o-mini:500]],
[[ttft@127.0.20.1:5000]]. --host takes several addresses, comma-separated (one upstream per address).
Environment defaults: FAKE_LLM_HOST, FAKE_LLM_PORT, FAKE_LLM_LATENCY_MS, FAKE_LLM_TTFT_MS,
FAKE_LLM_CHUNK_DELAY_MS, FAKE_LLM_FAULT_RATE, FAKE_LLM_FAULT, FAKE_LLM_SEED; flags override them.
Exit codes: 0 stopped by SIGTERM/SIGINT, 1 cannot listen, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import random
import re
import signal
import struct
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway_kit.exit_status import ExitStatus

from aiohttp import web

from gateway_kit.settings import tool_variables

FAULTS = ("429", "quota", "500", "400", "401", "drop", "malformed", "slow", "truncate")
SLOW_FAULT_SECONDS = 30.0
SHUTDOWN_GRACE_SECONDS = 1.0
DEFAULT_MODELS = {
    "chat": "gpt-4o-mini",
    "completions": "gpt-3.5-turbo-instruct",
    "embeddings": "text-embedding-3-small",
    "messages": "claude-3-5-haiku-latest",
}
AUTH_HEADERS = ("authorization", "x-api-key", "api-key")
_MARKER = re.compile(r"\[\[(fault|latency|ttft|chunk_delay|reply)(?:@([^:\]]+))?:(.*?)\]\]", re.DOTALL)
_WORD = re.compile(r"\S+\s*")
_dumps = json.JSONEncoder(separators=(",", ":")).encode  # compact, and built once (json.dumps is not)

# fault -> (status, OpenAI error type, OpenAI error code, Anthropic error type, message)
_ERRORS = {
    "429": (
        429,
        "requests",
        "rate_limit_exceeded",
        "rate_limit_error",
        "Rate limit reached for requests. Please try again in 1s.",
    ),
    "quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "rate_limit_error",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "500": (
        500,
        "server_error",
        None,
        "api_error",
        "The server had an error while processing your request. Sorry about that!",
    ),
    "400": (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "invalid_request_error",
        "This model's maximum context length is 128000 tokens. Please reduce the length of the messages.",
    ),
    "401": (401, "invalid_request_error", "invalid_api_key", "authentication_error", "Incorrect API key provided."),
}


@dataclass(frozen=True)
class Settings:
    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    fault_rate: float = 0.0
    fault: str = "500"
    seed: int = 0


@dataclass(frozen=True)
class Directives:
    """What the markers of one request ask for, over the server defaults."""

    fault: str | None
    latency_ms: float
    ttft_ms: float
    chunk_delay_ms: float
    reply: str | None


@dataclass(frozen=True)
class Answer:
    model: str
    text: str
    finish: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


class Stats:
    """Request counters: exact, since every handler runs on the one event-loop thread."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.by_path: Counter[str] = Counter()
        self.by_host: Counter[str] = Counter()
        self.cancelled = 0
        self.by_fault: Counter[str] = Counter()
        self.auth: Counter[str] = Counter()
        self.keys: Counter[str] = Counter()
        self.peers: set[Any] = set()  # client (address, port) pairs: one per TCP connection
        self.traces: deque[dict[str, str | None]] = deque(maxlen=100)  # the last requests' trace headers

    def record(self, request: web.Request) -> None:
        self.requests += 1
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        self.by_path[request.path] += 1
        self.by_host[request.host] += 1
        present = [name for name in AUTH_HEADERS if name in request.headers]  # presence only, no values
        self.auth.update(present or ["none"])
        self.keys.update(key_fingerprint(received_key(request.headers, name)) for name in present)
        if "traceparent" in request.headers:
            self.traces.append({name: request.headers.get(name) for name in ("traceparent", "tracestate")})

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "by_host": dict(self.by_host),
            "by_fault": dict(self.by_fault),
            "auth_headers": dict(self.auth),
            "key_fingerprints": dict(self.keys),
            "connections": len(self.peers),
            "cancelled": self.cancelled,
            "trace_headers": list(self.traces),
        }


def received_key(headers: Any, name: str) -> str:
    value = headers.get(name, "")
    return value[7:] if name == "authorization" and value[:7].lower() == "bearer " else value


def key_fingerprint(key: str) -> str:
    """What the stats keep of a key: enough to tell which key arrived, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- reading requests


def content_text(content: Any) -> str:
    """The text of an OpenAI or Anthropic content value: a string or a list of parts / blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            content_text(p.get("text", p.get("content"))) if isinstance(p, dict) else str(p) for p in content
        )
    return "" if content is None else str(content)


def read_messages(kind: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """The request as (role, text) pairs; a prompt, or an Anthropic system prompt, becomes a message."""
    if kind == "completions":
        prompt = body.get("prompt", "")
        return [("user", "\n".join(map(str, prompt)) if isinstance(prompt, list) else str(prompt))]
    messages = [
        (str(m.get("role", "user")), content_text(m.get("content")))
        for m in body.get("messages", [])
        if isinstance(m, dict)
    ]
    if kind == "messages" and body.get("system"):
        messages.insert(0, ("system", content_text(body["system"])))
    return messages


def embedding_inputs(body: dict[str, Any]) -> list[str]:
    value = body.get("input", "")
    if isinstance(value, list) and value and not isinstance(value[0], int):  # not one list of token ids
        return [v if isinstance(v, str) else json.dumps(v) for v in value]
    return [value if isinstance(value, str) else json.dumps(value)]


def read_directives(
    texts: list[str], settings: Settings, rng: random.Random, targets: frozenset[str] = frozenset()
) -> Directives:
    """The markers of a request; one scoped `@WHO` counts only when WHO is in `targets` (model, host)."""
    found: dict[str, str] = {}
    for text in texts:
        if "[[" in text:
            for name, scope, value in _MARKER.findall(text):
                if not scope or scope in targets:
                    found.setdefault(name, value)
    fault = found.get("fault")
    if fault is None and settings.fault_rate > 0 and rng.random() < settings.fault_rate:
        fault = settings.fault
    return Directives(
        fault,
        _ms(found.get("latency"), settings.latency_ms),
        _ms(found.get("ttft"), settings.ttft_ms),
        _ms(found.get("chunk_delay"), settings.chunk_delay_ms),
        found.get("reply"),
    )


def _ms(value: str | None, default: float) -> float:
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


# ------------------------------------------------------------------------------------- answers


def count_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def compose_reply(messages: list[tuple[str, str]]) -> str:
    user_texts = [text for role, text in messages if role == "user"]
    last = user_texts[-1] if user_texts else (messages[-1][1] if messages else "")
    reply = f"Fake answer to: {last}"
    if (earlier := len(messages) - 1) > 0:
        first = (user_texts[0] if user_texts else messages[0][1])[:60]
        plural = "s" if earlier > 1 else ""
        reply += f" (context: {earlier} earlier message{plural}; first said: '{first}')"
    return reply


def stop_list(stops: Any) -> list[str]:
    """OpenAI's `stop` (a string or a list) or Anthropic's `stop_sequences`, as a list of strings."""
    if isinstance(stops, str):
        return [stops]
    return [s for s in stops if isinstance(s, str) and s] if isinstance(stops, list) else []


def make_answer(
    model: str, messages: list[tuple[str, str]], d: Directives, max_tokens: Any, stops: list[str] = ()
) -> Answer:
    text = d.reply if d.reply is not None else compose_reply(messages)
    cuts = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    if cuts:  # as the providers do: the reply ends before the first stop sequence, which is not sent
        text = text[: min(cuts)]
    finish = "stop"
    if isinstance(max_tokens, int) and max_tokens > 0 and count_tokens(text) > max_tokens:
        text, finish = text[: max_tokens * 4], "length"
    prompt_tokens = sum(count_tokens(t) for _, t in messages)
    return Answer(model, text, finish, prompt_tokens, count_tokens(text))


def embed(text: str, dims: int) -> list[float]:
    """A deterministic unit vector derived from SHA-256 of the text."""
    raw = b"".join(hashlib.sha256(f"{i}:{text}".encode()).digest() for i in range((dims + 7) // 8))
    values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dims}I", raw[: dims * 4])]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]


def openai_usage(a: Answer) -> dict[str, Any]:
    return {
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "total_tokens": a.prompt_tokens + a.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_body(a: Answer) -> dict[str, Any]:
    message = {"role": "assistant", "content": a.text, "refusal": None, "annotations": []}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": a.finish}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": a.model,
        "choices": [choice],
        "usage": openai_usage(a),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def completion_body(a: Answer) -> dict[str, Any]:
    choice = {"text": a.text, "index": 0, "logprobs": None, "finish_reason": a.finish}
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": a.model,
        "choices": [choice],
        "usage": openai_usage(a),
        "system_fingerprint": "fp_fake",
    }


def anthropic_body(a: Answer) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": a.model,
        "content": [{"type": "text", "text": a.text}],
        "stop_reason": _anthropic_stop(a),
        "stop_sequence": None,
        "usage": {"input_tokens": a.prompt_tokens, "output_tokens": a.completion_tokens},
    }


def _anthropic_stop(a: Answer) -> str:
    return "max_tokens" if a.finish == "length" else "end_turn"


# A stream is a list of (SSE frame, carries reply text): the writer puts TTFT and chunk delays before
# the frames with text.
Frame = tuple[bytes, bool]


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {_dumps(data)}\n\n".encode()


def openai_stream(kind: str, a: Answer, include_usage: bool) -> Iterator[Frame]:
    head = _dumps(
        {
            "id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": a.model,
            "system_fingerprint": "fp_fake",
        }
    )[:-1]

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        # The fields every chunk shares are serialised once; as OpenAI, usage is null but on the last.
        tail = f',"usage":{_dumps(usage)}' if include_usage else ""
        return f'data: {head},"choices":{_dumps(choices)}{tail}}}\n\n'.encode()

    def choice(piece: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if kind != "chat":
            return {"text": piece or "", "index": 0, "logprobs": None, "finish_reason": finish}
        delta: dict[str, Any] = {} if piece is None else {"content": piece}
        if first:
            delta = {"role": "assistant", **delta}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    for i, piece in enumerate(_WORD.findall(a.text) or [a.text]):
        yield chunk([choice(piece, None, first=i == 0)]), True
    yield chunk([choice(None, a.finish)]), False
    if include_usage:
        yield chunk([], openai_usage(a)), False
    yield b"data: [DONE]\n\n", False


def anthropic_stream(a: Answer) -> Iterator[Frame]:
    message = {
        **anthropic_body(a),
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": a.prompt_tokens, "output_tokens": 1},
    }
    yield _sse({"type": "message_start", "message": message}, "message_start"), False
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    yield _sse(block, "content_block_start"), False
    for piece in _WORD.findall(a.text) or [a.text]:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        yield _sse(delta, "content_block_delta"), True
    yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"), False
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": _anthropic_stop(a), "stop_sequence": None},
        "usage": {"output_tokens": a.completion_tokens},
    }
    yield _sse(end, "message_delta"), False
    yield _sse({"type": "message_stop"}, "message_stop"), False


# ------------------------------------------------------------------------------------- responses


def error_response(
    status: int,
    message: str,
    anthropic: bool,
    openai_type: str = "invalid_request_error",
    code: str | None = None,
    anthropic_type: str = "invalid_request_error",
) -> web.Response:
    if anthropic:
        body: dict[str, Any] = {"type": "error", "error": {"type": anthropic_type, "message": message}}
    else:
        body = {"error": {"message": message, "type": openai_type, "param": None, "code": code}}
    headers = {"Retry-After": "1"} if status == 429 else None
    return web.json_response(body, status=status, headers=headers)


def fault_response(fault: str, anthropic: bool, key: str = "") -> web.Response:
    status, openai_type, code, anthropic_type, message = _ERRORS[fault]
    if fault == "401" and key:
        message = (
            f"Incorrect API key provided: {key}. "
            "You can find your API key at https://platform.openai.com/account/api-keys."
        )
    return error_response(status, message, anthropic, openai_type, code, anthropic_type)


def drop_connection(request: web.Request) -> web.Response:
    """Close the socket, nothing more sent; aiohttp then fails, quietly, to write the returned response."""
    if request.transport is not None:
        request.transport.close()
    return web.Response()


async def send_stream(
    request: web.Request, frames: Iterator[Frame], d: Directives, truncate: bool
) -> web.StreamResponse:
    frames_list = list(frames)
    cut_after = min(2, sum(has_text for _, has_text in frames_list)) if truncate else -1
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    delay, sent = d.ttft_ms, 0
    for frame, has_text in frames_list:
        if has_text:
            if delay > 0:
                await asyncio.sleep(delay / 1000)
            delay, sent = d.chunk_delay_ms, sent + 1
        await response.write(frame)  # goes to the socket now: aiohttp does not buffer a stream
        if sent == cut_after:
            return drop_connection(request)
    await response.write_eof()
    return response


async def send_json(request: web.Request, body: dict[str, Any], truncate: bool) -> web.StreamResponse:
    if not truncate:
        return web.json_response(body)
    data = json.dumps(body).encode()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])  # half the promised Content-Length, then hang up
    return drop_connection(request)


# ------------------------------------------------------------------------------------- the server


class FakeUpstream:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.rng = random.Random(settings.seed)
        self.inflight: set[asyncio.Task[Any]] = set()  # so that shutdown can cancel slow answers

    def app(self) -> web.Application:
        app = web.Application()
        for route, kind in (
            ("chat/completions", "chat"),
            ("completions", "completions"),
            ("embeddings", "embeddings"),
            ("messages", "messages"),
        ):
            app.router.add_post(f"/v1/{route}", self._handler(kind))
            if kind != "messages":
                app.router.add_post(f"/openai/deployments/{{deployment}}/{route}", self._handler(kind))
        app.router.add_get("/health", self.health)
        app.router.add_get("/_fake/stats", self.stats_handler)
        app.router.add_post("/_fake/reset", self.reset_handler)
        return app

    def _handler(self, kind: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            task = asyncio.current_task()
            assert task is not None
            self.inflight.add(task)
            try:
                return await self.answer(request, kind)
            except asyncio.CancelledError:  # the caller hung up (a timeout, a lost race)
                self.stats.cancelled += 1
                raise
            finally:
                self.inflight.discard(task)

        return handler

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def stats_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_json())

    async def reset_handler(self, request: web.Request) -> web.Response:
        self.stats.reset()
        return web.json_response(self.stats.as_json())

    async def answer(self, request: web.Request, kind: str) -> web.StreamResponse:
        self.stats.record(request)
        anthropic = kind == "messages"
        deployment = request.match_info.get("deployment")
        if deployment and "api-version" not in request.query:
            return error_response(
                404, "Resource not found: the api-version query parameter is missing.", anthropic, code="404"
            )
        try:
            body = await request.json()
        except ValueError as e:
            return error_response(400, f"We could not parse the JSON body of your request: {e}", anthropic)
        if not isinstance(body, dict):
            return error_response(400, "The request body must be a JSON object.", anthropic)

        messages = read_messages(kind, body) if kind != "embeddings" else []
        texts = embedding_inputs(body) if kind == "embeddings" else [text for _, text in messages]
        targets = frozenset(filter(None, (body.get("model"), deployment, request.host.rsplit(":", 1)[0])))
        d = read_directives(texts, self.settings, self.rng, targets)
        if d.fault:
            self.stats.by_fault[d.fault] += 1
        if d.latency_ms > 0:
            await asyncio.sleep(d.latency_ms / 1000)
        if d.fault == "slow":
            await asyncio.sleep(SLOW_FAULT_SECONDS)  # cancelled if the client hangs up (handler_cancellation)
        elif d.fault in _ERRORS:
            key = next((received_key(request.headers, n) for n in AUTH_HEADERS if n in request.headers), "")
            return fault_response(d.fault, anthropic, key)
        elif d.fault == "drop":
            return drop_connection(request)
        elif d.fault == "malformed":
            return web.Response(body=b'{"id": "oops", this is not JSON', content_type="application/json")

        model = body.get("model") or deployment or DEFAULT_MODELS[kind]
        truncate = d.fault == "truncate"
        if kind == "embeddings":
            return await send_json(request, embeddings_body(body, model, texts), truncate)
        stops = body.get("stop_sequences") if anthropic else body.get("stop")
        answer = make_answer(
            model, messages, d, body.get("max_tokens") or body.get("max_completion_tokens"), stop_list(stops)
        )
        if body.get("stream"):
            if anthropic:
                frames = anthropic_stream(answer)
            else:
                include_usage = (body.get("stream_options") or {}).get("include_usage") is not False
                frames = openai_stream(kind, answer, include_usage)
            return await send_stream(request, frames, d, truncate)
        if d.ttft_ms > 0:
            await asyncio.sleep(d.ttft_ms / 1000)
        to_body = {"chat": chat_body, "completions": completion_body, "messages": anthropic_body}[kind]
        return await send_json(request, to_body(answer), truncate)


def embeddings_body(body: dict[str, Any], model: str, texts: list[str]) -> dict[str, Any]:
    dims = body.get("dimensions")
    dims = min(max(dims, 1), 4096) if isinstance(dims, int) else 8
    data = []
    for i, text in enumerate(texts):
        vector: Any = embed(text, dims)
        if body.get("encoding_format") == "base64":  # the official client asks for this by default
            vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(count_tokens(t) for t in texts)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


# ------------------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = tool_variables("FAKE_LLM_").get
    p = argparse.ArgumentParser(prog="fake_upstream", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--host",
        default=env("FAKE_LLM_HOST", "127.0.0.1"),
        help="bind address, or several comma-separated (FAKE_LLM_HOST)",
    )
    p.add_argument(
        "--port", type=int, default=int(env("FAKE_LLM_PORT", "9000")), help="port; 0 picks a free one (FAKE_LLM_PORT)"
    )
    p.add_argument(
        "--latency-ms",
        type=float,
        default=float(env("FAKE_LLM_LATENCY_MS", "0")),
        help="delay before every response (FAKE_LLM_LATENCY_MS)",
    )
    p.add_argument(
        "--ttft-ms",
        type=float,
        default=float(env("FAKE_LLM_TTFT_MS", "0")),
        help="further delay before the first reply text (FAKE_LLM_TTFT_MS)",
    )
    p.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=float(env("FAKE_LLM_CHUNK_DELAY_MS", "0")),
        help="delay between streamed text chunks (FAKE_LLM_CHUNK_DELAY_MS)",
    )
    p.add_argument(
        "--fault-rate",
        type=float,
        default=float(env("FAKE_LLM_FAULT_RATE", "0")),
        help="share of requests, 0..1, that get --fault at random (FAKE_LLM_FAULT_RATE)",
    )
    p.add_argument(
        "--fault",
        choices=FAULTS,
        default=env("FAKE_LLM_FAULT", "500"),
        help="the fault that --fault-rate injects (FAKE_LLM_FAULT)",
    )
    p.add_argument(
        "--seed", type=int, default=int(env("FAKE_LLM_SEED", "0")), help="random seed for --fault-rate (FAKE_LLM_SEED)"
    )
    p.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    settings = Settings(args.latency_ms, args.ttft_ms, args.chunk_delay_ms, args.fault_rate, args.fault, args.seed)
    upstream = FakeUpstream(settings)
    runner = web.AppRunner(
        upstream.app(),
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        **({} if args.access_log else {"access_log": None}),
    )
    await runner.setup()
    try:
        for host in args.host.split(","):
            await web.TCPSite(runner, host.strip(), args.port, reuse_address=True).start()
        port = runner.addresses[0][1] if runner.addresses else args.port
        print(f"fake upstream listening on http://{args.host}:{port}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        for site in list(runner.sites):
            await site.stop()  # no new connections
        if upstream.inflight:  # answers in flight may finish, but not a [[fault:slow]] or an endless stream
            await asyncio.wait(list(upstream.inflight), timeout=SHUTDOWN_GRACE_SECONDS)
            for task in list(upstream.inflight):
                task.cancel()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.access_log:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import uvloop  # comes with mlflow[gateway] (uvicorn[standard]); about twice the throughput

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(args))
    except OSError as e:
        print(
            f"fake_upstream: error: cannot listen on {args.host}:{args.port}: {e.strerror or e}"
            " — pick another --port or stop what holds it",
            file=sys.stderr,
        )
        return ExitStatus.FAILED
    return ExitStatus.OK


if __name__ == "__main__":
    raise SystemExit(main())
