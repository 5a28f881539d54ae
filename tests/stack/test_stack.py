"""The stack as a client sees it: real nginx (the shipped nginx.conf) -> real gateway replicas -> fake upstream."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from conftest import gone

pytestmark = [pytest.mark.integration, pytest.mark.stack]


def chat(stack, content: str, endpoint: str = "chat", **extra) -> requests.Response:
    body = {"messages": [{"role": "user", "content": content}], **extra}
    return requests.post(f"{stack.url}/gateway/{endpoint}/invocations", json=body, timeout=30)


def access_log_lines(stack) -> list[str]:
    """nginx's JSON access log lines (logs/nginx.log; its error lines are in logs/nginx-error.log)."""
    return [line for line in stack.log("nginx").splitlines() if line.startswith("{")]


def test_chat_completions_and_embeddings_answer_through_nginx(stack):
    r = chat(stack, "What is AI?")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Fake answer to: What is AI?"
    assert r.json()["usage"]["total_tokens"] > 0
    assert r.headers["X-Gateway-Replica"] in stack.replicas

    r = requests.post(f"{stack.url}/gateway/completions/invocations", json={"prompt": "Say hi"}, timeout=30)
    assert r.status_code == 200, r.text
    assert "Say hi" in r.json()["choices"][0]["text"]

    r = requests.post(f"{stack.url}/gateway/embeddings/invocations", json={"input": ["a", "b"]}, timeout=30)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2


@pytest.mark.parametrize("endpoint", ["anthropic-chat", "azure-chat", "chat-split"])
def test_every_provider_and_the_traffic_split_answer(stack, endpoint):
    r = chat(stack, "Hello there", endpoint=endpoint)
    assert r.status_code == 200, r.text
    assert "Hello there" in r.json()["choices"][0]["message"]["content"]


def test_openai_client_drives_the_v1_routes(stack):
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="not-used-by-the-gateway", max_retries=0)
    answer = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Ping"}])
    assert answer.choices[0].message.content == "Fake answer to: Ping"
    assert answer.usage.prompt_tokens > 0

    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Stream me"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Fake answer to: Stream me"

    completion = client.completions.create(model="completions", prompt="Complete me")
    assert "Complete me" in completion.choices[0].text
    vectors = client.embeddings.create(model="embeddings", input="embed me")
    assert len(vectors.data[0].embedding) > 0


def test_stream_chunks_arrive_as_they_are_produced(stack):
    body = {"messages": [{"role": "user", "content": "[[chunk_delay:300]] one two three four five"}], "stream": True}
    arrivals = []
    with requests.post(f"{stack.url}/gateway/chat/invocations", json=body, stream=True, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith(b"data:"):
                arrivals.append((time.monotonic(), line))
    assert arrivals[-1][1] == b"data: [DONE]"
    assert json.loads(arrivals[-2][1][5:])["usage"]["completion_tokens"] > 0  # then MLflow's usage chunk
    # With 300 ms between chunks, a buffered stream would deliver every chunk at the end at once.
    assert arrivals[-1][0] - arrivals[0][0] > 1.0


def test_request_id_is_kept_echoed_and_logged_by_nginx(stack):
    r = requests.get(f"{stack.url}/health", headers={"X-Request-ID": "deploy-check-42"}, timeout=5)
    assert r.headers["X-Request-ID"] == "deploy-check-42"
    bad = requests.get(f"{stack.url}/health", headers={"X-Request-ID": 'no "quotes" here'}, timeout=5)
    assert bad.headers["X-Request-ID"] != 'no "quotes" here' and len(bad.headers["X-Request-ID"]) == 32

    time.sleep(0.5)
    lines = [json.loads(line) for line in access_log_lines(stack) if "deploy-check-42" in line]
    assert lines and lines[-1]["upstream_addr"].startswith("127.0.10.") and lines[-1]["status"] == 200


def test_nginx_errors_are_json(stack):
    r = requests.post(f"{stack.url}/gateway/chat/invocations", data=b"x" * (11 * 1024 * 1024), timeout=30)
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "request_too_large"


def test_load_spreads_over_every_replica(stack):
    with ThreadPoolExecutor(8) as pool:
        replicas = Counter(pool.map(lambda i: chat(stack, f"q{i}").headers["X-Gateway-Replica"], range(60)))
    assert set(replicas) == set(stack.replicas), replicas
    assert min(replicas.values()) >= 10, replicas


def test_scaling_adds_and_removes_replicas_without_restarting_nginx(stack):
    nginx_pid = stack.pid("nginx")
    try:
        stack.scale(3)
        seen = Counter(chat(stack, "after scale up").headers["X-Gateway-Replica"] for _ in range(40))
        assert "gateway-3" in seen, seen
        stack.scale(2)
        seen = Counter(chat(stack, "after scale down").headers["X-Gateway-Replica"] for _ in range(40))
        assert "gateway-3" not in seen and sum(seen.values()) == 40, seen
    finally:
        stack.scale(2)
    assert stack.pid("nginx") == nginx_pid
    os.kill(nginx_pid, 0)


def test_killing_a_replica_fails_only_requests_already_sent_to_it(stack):
    victim_pid, victim_addr = stack.pid("replica-2"), "127.0.10.2:8000"
    before = stack.fake_stats()["requests"]
    statuses: list[int] = []

    def one(i: int) -> int:
        body = {"messages": [{"role": "user", "content": f"request {i}"}]}
        try:
            r = requests.post(
                f"{stack.url}/gateway/chat/invocations",
                json=body,
                timeout=30,
                headers={"X-Request-ID": f"kill-test-{i}"},
            )
            return r.status_code
        except requests.RequestException:  # the replica died while sending this answer
            return 0

    def killer() -> None:
        while len(statuses) < 60:
            time.sleep(0.01)
        os.killpg(victim_pid, signal.SIGKILL)

    try:
        threading.Thread(target=killer, daemon=True).start()
        with ThreadPoolExecutor(8) as pool:
            statuses.extend(pool.map(one, range(300)))  # map yields in order, so the killer sees progress
        failed = [i for i, status in enumerate(statuses) if status != 200]
        # Only requests nginx had already handed to the killed replica may fail (nginx's log says where
        # each went); every other one, including those that found it refusing connections, succeeded.
        time.sleep(0.5)
        tried = {
            entry["request_id"]: entry["upstream_addr"]
            for entry in map(json.loads, access_log_lines(stack))
            if entry["request_id"].startswith("kill-test-")
        }
        assert all(tried[f"kill-test-{i}"].endswith(victim_addr) for i in failed), [
            (i, statuses[i], tried.get(f"kill-test-{i}")) for i in failed
        ]
        # Per client thread: the one in flight at the kill, and at most one more that the dying replica's
        # listening socket had already accepted (the kernel takes connections until the last process is gone).
        assert len(failed) <= 2 * 8, failed
        assert statuses[-100:] == [200] * 100
        # A POST is never sent twice: the upstream saw at most one call per client request.
        assert stack.fake_stats()["requests"] - before <= 300
    finally:
        stack.scale(2)


def test_sigterm_lets_an_in_flight_stream_finish(stack):
    body = {"messages": [{"role": "user", "content": "[[chunk_delay:250]] a b c d e f g h"}], "stream": True}
    with requests.post(f"{stack.url}/gateway/chat/invocations", json=body, stream=True, timeout=30) as r:
        replica = r.headers["X-Gateway-Replica"]
        name = "replica-" + replica.split("-")[1]
        pid = stack.pid(name)
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith(b"data:"))
        os.kill(pid, signal.SIGTERM)
        rest = [line for line in lines if line.startswith(b"data:")]
    try:
        assert rest[-1] == b"data: [DONE]"  # the stream's end arrived
        chunks = [json.loads(line[5:]) for line in [first, *rest[:-1]]]
        text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
        assert text.endswith("a b c d e f g h")
        assert chunks[-1]["usage"]["completion_tokens"] > 0
        assert gone(pid, 20), f"{name} still running 20 s after SIGTERM"
        # The others keep serving; the stopped one is skipped.
        statuses = {chat(stack, "still there?").status_code for _ in range(10)}
        assert statuses == {200}
    finally:
        stack.scale(2)


def test_scale_starts_replicas_with_the_settings_of_up_and_keeps_the_key_in_one_mode_600_file(tmp_path, fake_upstream):
    """`up` with a provider key only in the environment, `scale 3` from a shell without it: the new replicas
    serve with the key (no demo mode, no death), and the key is in no file of the state dir but replica.env."""
    from conftest import SENTINEL_SECRETS, kept_secret, own_stack
    from gateway_kit.keys import add

    provider_key = SENTINEL_SECRETS["openai"]
    client_key = add(tmp_path / "keys.json", "scaler")
    state = tmp_path / "state"
    up_env = {"OPENAI_API_KEY": provider_key, "OPENAI_API_BASE": f"{fake_upstream}/v1"}
    with own_stack(
        state,
        "--replicas",
        "1",
        "--workers",
        "1",
        "--no-fake",
        "--keys",
        str(tmp_path / "keys.json"),
        "--timeout",
        "150",
        env=up_env,
    ) as own:
        own.env = {}  # a new shell: neither the key nor the base URL is exported any more
        own.run("scale", "3", "--timeout", "150")
        assert own.replicas == ["gateway-1", "gateway-2", "gateway-3"]
        for i in (1, 2, 3):
            r = requests.post(
                f"http://127.0.10.{i}:8000/gateway/chat/invocations",
                timeout=30,
                json={"messages": [{"role": "user", "content": f"replica {i}"}]},
                headers={"Authorization": f"Bearer {client_key}"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == f"Fake answer to: replica {i}"
            assert "endpoints ready: chat, completions, embeddings" in own.log(f"replica-{i}")
            assert "DEMO MODE" not in own.log(f"replica-{i}")
    holding = sorted(p for p in state.rglob("*") if p.is_file() and provider_key.encode() in p.read_bytes())
    assert holding == [state / "replica.env"]
    kept_secret(holding[0])
