"""The fallback chain (gateway_kit.resilience.Fallback) as a client sees it, with a scripted inner app in place of
MLflow: which endpoint answers, what the client receives, what the usage record is told. No processes, no
network; each test runs one request on its own event loop (asyncio.run)."""

from __future__ import annotations

import asyncio
import json

from gateway_kit.resilience import Fallback, Policy, policies
from gateway_kit.settings import Settings

SSE = [(b"content-type", b"text/event-stream")]
JSON = [(b"content-type", b"application/json")]


def fallback(after_s: float | None = None, race: bool = False, chain=("azure-chat",)):
    """Fallback middleware over `app` for config.yaml-like endpoints: chat falls back along `chain`."""
    settings = Settings(upstream_retries=0)
    spec = {"to": list(chain), **({"after_s": after_s, "race": race} if after_s is not None else {})}
    config = {"endpoints": [{"name": "chat", "fallback": spec}, *({"name": n} for n in chain)]}

    def wrap(app) -> Fallback:
        return Fallback(app, policies(config, settings), Policy.default(settings))

    return wrap


class Provider:
    """The inner app: each endpoint's scripted behaviour, and a log of which endpoints ran and how they ended."""

    def __init__(self, **scripts) -> None:
        self.scripts = scripts
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.fallback_started = asyncio.Event()

    async def __call__(self, scope, receive, send) -> None:
        if scope["path"].startswith("/v1/"):
            name = json.loads((await receive())["body"])["model"]
        else:
            name = scope["path"].split("/")[2]
        self.started.append(name)
        if len(self.started) > 1:
            self.fallback_started.set()
        try:
            await self.scripts[name](self, send)
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise


def answer(status: int, body: dict):
    async def script(provider, send):
        await send({"type": "http.response.start", "status": status, "headers": JSON})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return script


def stream(*events: str, then_fail: Exception | None = None):
    """A stream as MLflow sends one: the 200 first, then an event per chunk; the provider may fail after
    `events` (with none: before the first byte)."""

    async def script(provider, send):
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        for event in events:
            await send({"type": "http.response.body", "body": f"data: {event}\n\n".encode(), "more_body": True})
        if then_fail is not None:
            raise then_fail
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return script


def after(waiting_for: str, script):
    """`script`, once the provider has started another endpoint too (a race's fallback)."""

    async def delayed(provider, send):
        await provider.fallback_started.wait()
        await script(provider, send)

    return delayed


async def never(provider, send):
    await asyncio.sleep(3600)


class Client:
    """What the client received: the status, the body, every message, and the record's fallback fields."""

    def __init__(self, messages: list[dict], state: dict) -> None:
        self.messages = messages
        starts = [m for m in messages if m["type"] == "http.response.start"]
        assert len(starts) == 1, messages  # exactly one answer, whoever gave it
        self.status = starts[0]["status"]
        self.body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        self.ended = messages[-1]["type"] == "http.response.body" and not messages[-1].get("more_body", False)
        self.served_by, self.reason = state.get("served_by"), state.get("fallback_reason")

    def json(self) -> dict:
        return json.loads(self.body)

    def events(self) -> list[str]:
        return [line[len("data: ") :] for line in self.body.decode().split("\n\n") if line]


def request(wrap, provider: Provider, path: str = "/gateway/chat/invocations") -> Client:
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "Hi"}]}).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "state": {"request_id": "unit-1"},
    }
    messages: list[dict] = []
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # the client stays connected

    async def send(message):
        messages.append(message)

    async def run():
        provider.fallback_started = asyncio.Event()  # bound to this run's loop
        await wrap(provider)(scope, receive, send)

    asyncio.run(asyncio.wait_for(run(), 10))  # a regression fails the test instead of hanging it
    return Client(messages, scope["state"])


# ------------------------------------------------------------------------------------------------ the tests
def test_a_500_from_the_primary_is_answered_by_the_next_endpoint():
    provider = Provider(chat=answer(500, {"error": "boom"}), **{"azure-chat": answer(200, {"answer": "azure"})})
    got = request(fallback(), provider)
    assert (got.status, got.json()) == (200, {"answer": "azure"})
    assert provider.started == ["chat", "azure-chat"]
    assert (got.served_by, got.reason) == ("azure-chat", "http_500")


def test_the_v1_route_falls_back_under_the_model_name_of_the_next_endpoint():
    provider = Provider(chat=answer(503, {"error": "busy"}), **{"azure-chat": answer(200, {"answer": "azure"})})
    got = request(fallback(), provider, path="/v1/chat/completions")
    assert (got.status, got.json()) == (200, {"answer": "azure"})
    assert provider.started == ["chat", "azure-chat"]


def test_a_400_is_final_and_no_fallback_is_tried():
    provider = Provider(chat=answer(400, {"error": "bad request"}), **{"azure-chat": answer(200, {"answer": "no"})})
    got = request(fallback(), provider)
    assert (got.status, got.json()) == (400, {"error": "bad request"})
    assert provider.started == ["chat"]
    assert got.served_by is None


def test_without_race_a_primary_silent_for_after_s_is_cancelled_and_the_next_endpoint_answers():
    provider = Provider(chat=never, **{"azure-chat": answer(200, {"answer": "azure"})})
    got = request(fallback(after_s=0.01), provider)
    assert (got.status, got.json()) == (200, {"answer": "azure"})
    assert provider.cancelled == ["chat"]
    assert (got.served_by, got.reason) == ("azure-chat", "no_answer_in_0.01s")


def test_with_race_the_primary_keeps_running_after_after_s_and_the_first_answer_wins():
    provider = Provider(chat=after("azure-chat", answer(200, {"answer": "openai"})), **{"azure-chat": never})
    got = request(fallback(after_s=0.01, race=True), provider)
    assert (got.status, got.json()) == (200, {"answer": "openai"})  # the primary won the race
    assert provider.started == ["chat", "azure-chat"] and provider.cancelled == ["azure-chat"]
    assert (got.served_by, got.reason) == (None, "no_answer_in_0.01s")


def test_a_stream_that_fails_before_its_first_byte_falls_back_to_the_next_endpoints_stream():
    provider = Provider(
        chat=stream(then_fail=ConnectionResetError("provider hung up")), **{"azure-chat": stream('{"n":1}', '{"n":2}')}
    )
    got = request(fallback(), provider)
    assert got.status == 200 and got.ended
    assert got.events() == ['{"n":1}', '{"n":2}', "[DONE]"]  # the fallback's stream, whole, and only it
    assert got.served_by == "azure-chat"


def test_a_stream_that_ends_before_its_first_event_falls_back():
    async def empty(provider, send):  # MLflow's stream when the provider's had nothing it could read
        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    provider = Provider(chat=empty, **{"azure-chat": stream('{"n":1}')})
    got = request(fallback(), provider)
    assert got.status == 200 and got.events() == ['{"n":1}', "[DONE]"]
    assert (got.served_by, got.reason) == ("azure-chat", "empty_stream")


def test_a_stream_that_fails_after_bytes_went_out_ends_with_an_error_event_and_no_fallback():
    provider = Provider(
        chat=stream('{"n":1}', then_fail=ConnectionResetError("provider hung up")),
        **{"azure-chat": stream('{"n":"azure"}')},
    )
    got = request(fallback(), provider)
    assert got.status == 200 and got.ended
    first, last = got.events()
    assert first == '{"n":1}'
    assert json.loads(last)["error"]["type"].startswith("upstream_")  # an error event, and no [DONE] after it
    assert provider.started == ["chat"]


def test_when_every_endpoint_fails_the_client_gets_the_last_error():
    provider = Provider(
        chat=answer(500, {"error": "first"}),
        **{"azure-chat": answer(502, {"error": "second"}), "anthropic-chat": answer(503, {"error": "last"})},
    )
    got = request(fallback(chain=("azure-chat", "anthropic-chat")), provider)
    assert (got.status, got.json()) == (503, {"error": "last"})
    assert provider.started == ["chat", "azure-chat", "anthropic-chat"]
    assert got.reason == "http_500"  # why the requested endpoint was left
