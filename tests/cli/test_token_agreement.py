"""One answer, one count: evaluate_gateway.py's results, the gateway's usage record and analyze_costs.py's report
give the same tokens for it, whatever the provider's shape: OpenAI's, and Anthropic's, whose input_tokens leave
out the cache reads and writes that its prompt_tokens include.

The gateway here is the kit's usage recorder (gateway_kit.recording.UsageRecorder, its records written by the
kit's usage log to stdout and a ledger) in front of a scripted app that answers every request with one provider
answer as it is, served by uvicorn on a free port in the test's process. The two commands run as a user runs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from conftest import REPO, clean_env, free_port
from gateway_kit.app import UsageLog
from gateway_kit.events import Events
from gateway_kit.pricing import Pricer
from gateway_kit.recording import EndpointInfo, UsageRecorder
from gateway_kit.usage import Ledger

pytestmark = [pytest.mark.integration]

OPENAI_MODEL = "gpt-4o-mini-2024-07-18"
ANTHROPIC_MODEL = "claude-3-5-haiku-20241022"


def sse(*events: dict) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events)


OPENAI_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 80,
    "total_tokens": 1280,
    "prompt_tokens_details": {"cached_tokens": 1024},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
# Anthropic's own usage: 20 new input tokens, 1000 read from the cache, 300 written to it.
ANTHROPIC_USAGE = {
    "input_tokens": 20,
    "cache_read_input_tokens": 1000,
    "cache_creation_input_tokens": 300,
    "output_tokens": 70,
}
OPENAI_TOKENS = {"prompt": 1200, "completion": 80, "cached": 1024, "reasoning": 0, "total": 1280}
ANTHROPIC_TOKENS = {"prompt": 1320, "completion": 70, "cached": 1000, "reasoning": 0, "total": 1390}


def openai_chunk(content: str | None, usage: dict | None = None) -> dict:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
    return {"id": "c1", "object": "chat.completion.chunk", "model": OPENAI_MODEL, "choices": choices, "usage": usage}


ANSWERS = {  # name: (content type, the answer's bytes, the tokens every reader must give)
    "openai": (
        "application/json",
        json.dumps(
            {
                "id": "c1",
                "object": "chat.completion",
                "model": OPENAI_MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}],
                "usage": OPENAI_USAGE,
            }
        ).encode(),
        OPENAI_TOKENS,
    ),
    "openai-stream": (
        "text/event-stream",
        sse(openai_chunk("po"), openai_chunk("ng"), openai_chunk(None, OPENAI_USAGE)) + b"data: [DONE]\n\n",
        OPENAI_TOKENS,
    ),
    "anthropic": (
        "application/json",
        json.dumps(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": ANTHROPIC_MODEL,
                "content": [{"type": "text", "text": "pong"}],
                "stop_reason": "end_turn",
                "usage": ANTHROPIC_USAGE,
            }
        ).encode(),
        ANTHROPIC_TOKENS,
    ),
    "anthropic-stream": (
        "text/event-stream",
        sse(
            {
                "type": "message_start",
                "message": {"model": ANTHROPIC_MODEL, "usage": {**ANTHROPIC_USAGE, "output_tokens": 1}},
            },
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "pong"}},
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 70}},
            {"type": "message_stop"},
        ),
        ANTHROPIC_TOKENS,
    ),
    "anthropic-as-mlflow-answers-it": (  # MLflow's chat answer for Anthropic: OpenAI's shape, cache added in
        "application/json",
        json.dumps(
            {
                "id": "msg_1",
                "object": "chat.completion",
                "model": ANTHROPIC_MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": 1320,
                    "completion_tokens": 70,
                    "total_tokens": 1390,
                    "prompt_tokens_details": {"cached_tokens": 1000},
                    "cache_creation_input_tokens": 300,
                },
            }
        ).encode(),
        ANTHROPIC_TOKENS,
    ),
}


class Provider:
    """Stands in for MLflow's app behind the recorder: GET /health, and every POST answered with one answer."""

    def __init__(self, content_type: str, answer: bytes) -> None:
        self.content_type, self.answer = content_type.encode(), answer

    async def __call__(self, scope, receive, send) -> None:
        while (await receive()).get("more_body"):
            pass
        status, content_type, body = 200, self.content_type, self.answer
        if scope["method"] != "POST":
            status, content_type, body = (200 if scope["path"] == "/health" else 404), b"application/json", b"{}"
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": body})


@contextmanager
def scripted_gateway(answer: str, ledger_dir: Path) -> Iterator[str]:
    """The recorder, writing to a ledger in ledger_dir, in front of ANSWERS[answer]; yields its base URL."""
    content_type, body, _ = ANSWERS[answer]
    provider = "anthropic" if answer.startswith("anthropic") else "openai"
    ledger = Ledger(ledger_dir, "replica-1")
    endpoints = {"chat": EndpointInfo(provider, None)}
    app = UsageRecorder(Provider(content_type, body), endpoints, "replica-1", Pricer(), Events([UsageLog(ledger)]))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the scripted gateway did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        ledger.close()


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=120, check=False
    )


def report_tokens(*source: str, cwd: Path) -> dict[str, int]:
    result = run(str(REPO / "analyze_costs.py"), *source, "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests"]["total"] == 1
    return report["tokens"]


def tokens_of(fields: dict) -> dict[str, int]:
    """A record's or a result's token fields, named as the report names them."""
    return {kind: fields[f"{kind}_tokens"] for kind in ("prompt", "completion", "cached", "reasoning", "total")}


@pytest.mark.parametrize("answer", list(ANSWERS))
def test_evaluate_the_usage_record_and_analyze_costs_count_the_same_tokens(answer, tmp_path):
    cases = tmp_path / "cases.json"
    case = {"name": "ping", "endpoint": "chat", "messages": [{"role": "user", "content": "ping"}]}
    cases.write_text(json.dumps([{**case, "params": {"stream": answer.endswith("stream")}}]))
    with scripted_gateway(answer, tmp_path / "ledger") as url:
        evaluated = run(
            str(REPO / "evaluate_gateway.py"),
            "--url",
            url,
            "--test-file",
            str(cases),
            "--output",
            "results.json",
            cwd=tmp_path,
        )
    assert evaluated.returncode in (0, 1), evaluated.stderr  # 1: not a chat answer where MLflow puts it
    (result,) = json.loads((tmp_path / "results.json").read_text())["requests"]
    (path,) = (tmp_path / "ledger").glob("usage-*.jsonl")
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]

    expected = ANSWERS[answer][2]
    assert tokens_of(result) == expected  # evaluate_gateway.py's results
    assert tokens_of(record) == expected  # the gateway's usage record
    assert report_tokens("--ledger", "ledger", cwd=tmp_path) == expected  # analyze_costs.py over the ledger
    assert report_tokens("--response-file", "results.json", cwd=tmp_path) == expected  # and over the results
