"""The response cache, as a client of the stack sees it: nginx -> 2 replicas -> the fake upstream, the answers
kept in the stack's Redis (docs/usage-and-costs.md, "Response cache").

A stack of its own (1 worker per replica, client keys required) whose config is config.yaml's chat endpoint
three times: `chat` with `cache: {ttl: 3600}`, `mine` with `scope: client`, `brief` with a 1 s ttl. Each test
asks its own question (a fresh uuid), so no test finds another's answers. Provider calls are the fake's count
(/_fake/stats), zeroed before each test.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
import uuid

import anthropic
import openai
import pytest
import redis
import requests
import yaml

from conftest import REPO, own_stack
from gateway_kit.keys import add as add_client_key

pytestmark = [pytest.mark.integration, pytest.mark.stack]

KEYS: dict[str, str] = {}  # client -> gateway key, made by cstack
CACHED = {"chat": {"ttl": 3600}, "mine": {"ttl": 3600, "scope": "client"}, "brief": {"ttl": 1}}


@pytest.fixture(scope="module")
def cstack(tmp_path_factory):
    state = tmp_path_factory.mktemp("cache-stack")
    chat = next(e for e in yaml.safe_load((REPO / "config.yaml").read_text())["endpoints"] if e["name"] == "chat")
    endpoints = [{**copy.deepcopy(chat), "name": name, "cache": block} for name, block in CACHED.items()]
    config = state / "cache.yaml"
    config.write_text(yaml.safe_dump({"endpoints": endpoints}, sort_keys=False))
    keys = state / "keys.json"
    KEYS.update({client: add_client_key(keys, client) for client in ("team-a", "team-b")})
    with own_stack(state, "--replicas", "2", "--workers", "1", "--config", str(config), "--keys", str(keys)) as s:
        yield s


@pytest.fixture(autouse=True)
def zero_calls(cstack):
    requests.post(f"{cstack.fake_url}/_fake/reset", timeout=5).raise_for_status()


def provider_calls(stack) -> int:
    return stack.fake_stats()["requests"]


def question() -> str:
    return f"What is {uuid.uuid4().hex}?"


def ask(stack, content: str, *, endpoint: str = "chat", client: str = "team-a", headers=None, **params):
    body = {"messages": [{"role": "user", "content": content}], **params}
    return requests.post(
        f"{stack.url}/gateway/{endpoint}/invocations",
        json=body,
        headers={"Authorization": f"Bearer {KEYS[client]}", **(headers or {})},
        timeout=30,
    )


def record(stack, request_id: str) -> dict:
    """The usage record of one request, from the stack's ledger (written when the response is done)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for path in (stack.state_dir / "ledger").glob("usage-*.jsonl"):
            for line in path.read_text().splitlines():
                if request_id in line and json.loads(line)["request_id"] == request_id:
                    return json.loads(line)
        time.sleep(0.2)
    raise AssertionError(f"no usage record for {request_id}")


def test_the_same_request_on_another_replica_is_answered_from_the_cache_with_one_provider_call(cstack):
    content = question()
    first = ask(cstack, content)
    assert first.status_code == 200 and first.headers["X-Gateway-Cache"] == "miss", first.text
    for _ in range(8):  # nginx spreads requests over both replicas: go on until one lands on the other
        again = ask(cstack, content)
        assert again.status_code == 200 and again.headers["X-Gateway-Cache"] == "hit", again.text
        if again.headers["X-Gateway-Replica"] != first.headers["X-Gateway-Replica"]:
            break
    assert again.headers["X-Gateway-Replica"] != first.headers["X-Gateway-Replica"]
    assert again.json() == first.json()
    assert provider_calls(cstack) == 1


def test_a_hit_is_recorded_at_no_cost_with_what_it_saved(cstack):
    content = question()
    miss, hit = ask(cstack, content), ask(cstack, content)
    stored, served = record(cstack, miss.headers["X-Request-ID"]), record(cstack, hit.headers["X-Request-ID"])
    assert stored["cache"] == "miss" and stored["saved_usd"] is None and stored["cost_usd"] > 0, stored
    assert served["cache"] == "hit" and served["cost_usd"] == 0, served
    assert served["saved_usd"] == stored["cost_usd"]
    assert served["total_tokens"] == stored["total_tokens"] and served["client"] == "team-a"


def test_other_parameters_are_another_question(cstack):
    content = question()
    answers = [ask(cstack, content, temperature=t) for t in (0.1, 0.9)]
    assert [a.headers["X-Gateway-Cache"] for a in answers] == ["miss", "miss"]
    assert provider_calls(cstack) == 2


def test_no_cache_asks_the_provider_and_no_store_keeps_nothing(cstack):
    content = question()
    ask(cstack, content)
    fresh = ask(cstack, content, headers={"Cache-Control": "no-cache"})
    assert fresh.status_code == 200 and "X-Gateway-Cache" not in fresh.headers
    assert provider_calls(cstack) == 2
    assert ask(cstack, content).headers["X-Gateway-Cache"] == "hit"

    other = question()
    kept_out = ask(cstack, other, headers={"Cache-Control": "no-store"})
    assert kept_out.headers["X-Gateway-Cache"] == "miss"
    assert ask(cstack, other).headers["X-Gateway-Cache"] == "miss"  # nothing was stored
    assert provider_calls(cstack) == 4
    assert record(cstack, kept_out.headers["X-Request-ID"])["cache"] is None


def test_a_stream_is_replayed_from_the_cache_as_a_stream_the_sdk_reads(cstack):
    client = openai.OpenAI(base_url=f"{cstack.url}/v1", api_key=KEYS["team-a"], max_retries=0)
    content = question()
    answers = []
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="chat",
            messages=[{"role": "user", "content": content}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(raw.parse())
        answers.append((raw.headers["x-gateway-cache"], chunks))
    (first, streamed), (second, replayed) = answers
    assert (first, second) == ("miss", "hit")
    text = "".join(c.choices[0].delta.content or "" for c in replayed if c.choices)
    assert text == "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text.startswith("Fake answer to:")
    assert replayed[-1].usage is not None and replayed[-1].usage.total_tokens > 0
    assert provider_calls(cstack) == 1
    plain = ask(cstack, content)  # the same question not streamed: another answer (stream is in the key)
    assert plain.headers["X-Gateway-Cache"] == "miss"


def test_the_messages_and_responses_apis_are_answered_from_the_cache_too(cstack):
    """Both APIs become chat requests before the cache (gateway_kit.dialects): a repeated question is a hit,
    translated back into the API the client spoke, streams included."""
    claude = anthropic.Anthropic(base_url=cstack.url, api_key=KEYS["team-a"], max_retries=0)
    gpt = openai.OpenAI(base_url=f"{cstack.url}/v1", api_key=KEYS["team-a"], max_retries=0)
    content = question()
    messages = [
        claude.messages.with_raw_response.create(
            model="chat", max_tokens=64, messages=[{"role": "user", "content": content}]
        )
        for _ in range(2)
    ]
    assert [m.headers["x-gateway-cache"] for m in messages] == ["miss", "hit"]
    first, second = (m.parse() for m in messages)
    assert second.content[0].text == first.content[0].text and second.usage.output_tokens > 0

    responses = [gpt.responses.with_raw_response.create(model="chat", input=content) for _ in range(2)]
    assert [r.headers["x-gateway-cache"] for r in responses] == ["miss", "hit"]  # another body: another key
    assert responses[1].parse().output_text == responses[0].parse().output_text

    streamed = []
    for _ in range(2):
        with claude.messages.stream(
            model="chat", max_tokens=64, messages=[{"role": "user", "content": content}]
        ) as stream:
            streamed.append(("".join(stream.text_stream), stream.get_final_message().usage.output_tokens))
    assert streamed[1] == streamed[0] and streamed[0][0].startswith("Fake answer to:")
    assert provider_calls(cstack) == 3  # one per distinct chat request: messages, responses, a stream


def test_a_replayed_stream_ends_with_done(cstack):
    content = question()
    answers = [ask(cstack, content, stream=True) for _ in range(2)]
    assert answers[1].headers["X-Gateway-Cache"] == "hit"
    assert answers[1].headers["content-type"].startswith("text/event-stream")
    assert answers[1].text == answers[0].text and answers[1].text.endswith("data: [DONE]\n\n")


def test_an_answer_expires_after_its_ttl(cstack):
    content = question()
    assert [ask(cstack, content, endpoint="brief").headers["X-Gateway-Cache"] for _ in range(2)] == ["miss", "hit"]
    store = redis.Redis.from_url(cstack.redis_url, socket_timeout=5)
    deadline = time.monotonic() + 10
    while list(store.scan_iter(match="gateway:cache:brief:*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ask(cstack, content, endpoint="brief").headers["X-Gateway-Cache"] == "miss"
    assert provider_calls(cstack) == 2


def test_scope_client_keeps_each_clients_answers_apart(cstack):
    content = question()
    seen = [ask(cstack, content, endpoint="mine", client=c).headers["X-Gateway-Cache"] for c in ("team-a", "team-b")]
    assert seen == ["miss", "miss"]
    assert ask(cstack, content, endpoint="mine", client="team-b").headers["X-Gateway-Cache"] == "hit"
    assert provider_calls(cstack) == 2
    shared = question()  # without scope: client, one client's answer is another's hit
    assert ask(cstack, shared, client="team-a").headers["X-Gateway-Cache"] == "miss"
    assert ask(cstack, shared, client="team-b").headers["X-Gateway-Cache"] == "hit"


def test_prometheus_counts_hits_and_misses(cstack):
    content = question()
    ask(cstack, content), ask(cstack, content)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = "".join(requests.get(f"http://127.0.10.{i}:8000/metrics", timeout=5).text for i in (1, 2))
        if (
            'gateway_cache_hits_total{client="team-a",endpoint="chat"}' in text
            and "gateway_cache_misses_total{" in text
        ):
            break
        time.sleep(0.3)
    assert 'gateway_cache_hits_total{client="team-a",endpoint="chat"}' in text
    assert 'gateway_cache_misses_total{client="team-a",endpoint="chat"}' in text


def test_with_redis_down_requests_are_served_without_the_cache_and_it_is_said_once(cstack):
    content = question()
    os.kill(cstack.pid("redis"), signal.SIGKILL)
    try:
        answers = [ask(cstack, content) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 6
        assert all("X-Gateway-Cache" not in a.headers for a in answers)
        assert provider_calls(cstack) == 6
        lines = [
            line
            for replica in ("replica-1", "replica-2")
            for line in cstack.log(replica).splitlines()
            if "cache: Redis at" in line and "does not answer" in line
        ]
        assert 1 <= len(lines) <= 2, lines  # one line per worker (1 per replica here), not one per request
        assert "requests are served without the cache" in lines[0]
    finally:
        cstack.run("restart", "redis")
    content, seen = question(), []
    deadline = time.monotonic() + 15  # each worker asks Redis again a second after its last failure
    while "hit" not in seen and time.monotonic() < deadline:
        seen.append(ask(cstack, content).headers.get("X-Gateway-Cache"))
        time.sleep(0.2)
    assert seen[-1] == "hit", seen
