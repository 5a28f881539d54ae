"""Limits that hold across replicas and workers, and client keys at the edge (docs/limits-and-keys.md).

The stack tests restart the session's local stack as 3 replicas x 2 workers behind nginx, with a config that sets
limits and with client keys required, and put it back (2 replicas, the demo config, no keys) at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest
import redis
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, clean_env, free_port, start_replica, stop_group

KEYS = REPO / "scripts" / "gateway_keys.sh"
CLIENTS = ["alice", "bob", "erin", "frank", "gina", "tpm", "spender", "hammer", "after", "direct", "refused", "mixed"]
EXACT = 25  # completions: every client together, per minute


def limited_config(path: Path) -> Path:
    """config.yaml plus limits: what the tests below count against."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for endpoint in config["endpoints"]:
        if endpoint["name"] == "completions":
            endpoint["limit"] = {"calls": EXACT, "renewal_period": "minute"}
        if endpoint["name"] == "embeddings":
            endpoint["limit"] = {"calls": 3, "renewal_period": "minute", "key": "client"}
    config["limits"] = {
        "client": {"calls": 1000, "renewal_period": "minute"},
        "clients": {
            "alice": {"calls": 5},
            "bob": {"calls": 8, "renewal_period": "minute"},
            "tpm": {"tokens_per_minute": 60},
            "spender": {"usd_per_day": 0.00002},
            "hammer": {"calls": 5},
            "after": {"calls": 5},
            "refused": {"calls": 2},
            "mixed": {"calls": 2},
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def add_key(keys_file: Path, client: str) -> str:
    result = subprocess.run(
        [str(KEYS), "--file", str(keys_file), "add", client],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def limited(stack, tmp_path_factory):
    """The session stack as 3 replicas x 2 workers with limits and client keys; yields {client: key}."""
    where = tmp_path_factory.mktemp("limited")
    config = limited_config(where / "config.yaml")
    keys_file = where / "keys" / "keys.json"
    keys = {client: add_key(keys_file, client) for client in CLIENTS}
    stack.run("down")
    try:
        stack.run("up", "--replicas", "3", "--config", str(config), "--keys", str(keys_file))
        stack.keys_file = keys_file
        yield keys
    finally:
        stack.run("down", check=False)
        stack.run("up", "--replicas", "2")


@pytest.fixture
def store():
    r = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    yield r
    r.close()


def chat(
    stack,
    key: str | None,
    content: str = "Hello",
    endpoint: str = "chat",
    route: str = "gateway",
    headers: dict | None = None,
) -> requests.Response:
    body = {"messages": [{"role": "user", "content": content}]}
    if route == "v1":
        url, body = f"{stack.url}/v1/chat/completions", {**body, "model": endpoint}
    else:
        url = f"{stack.url}/{route}/{endpoint}/invocations"
    return requests.post(url, json=body, headers={**(bearer(key) if key else {}), **(headers or {})}, timeout=60)


def completion(stack, key: str, i: int) -> requests.Response:
    """Half through /gateway/completions/invocations, half through /v1/completions: both count the same."""
    if i % 2:
        return requests.post(
            f"{stack.url}/v1/completions",
            json={"model": "completions", "prompt": f"p{i}"},
            headers=bearer(key),
            timeout=60,
        )
    return requests.post(
        f"{stack.url}/gateway/completions/invocations", json={"prompt": f"p{i}"}, headers=bearer(key), timeout=60
    )


def assert_names_the_limit(r: requests.Response, name: str, value: float, window: str, kind="rate_limit_exceeded"):
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["type"] == kind
    limit = error["limit"]
    assert (limit["name"], limit["value"], limit["window"]) == (name, value, window), limit
    retry = int(r.headers["Retry-After"])
    assert retry == limit["retry_after_seconds"] and retry >= 1
    assert datetime.strptime(limit["resets_at"], "%Y-%m-%dT%H:%M:%SZ")  # an ISO-8601 UTC time
    assert "resets at" in error["message"]
    return limit


# ------------------------------------------------------------------------------------------ exact limits
@pytest.mark.integration
@pytest.mark.stack
def test_exactly_the_endpoint_limit_is_admitted_across_3_replicas_x_2_workers(stack, limited):
    requests.post(f"{stack.fake_url}/_fake/reset", timeout=5)
    clients = ["erin", "frank", "gina"]
    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(lambda i: completion(stack, limited[clients[i % 3]], i), range(90)))
    statuses = Counter(r.status_code for r in answers)
    assert statuses == {200: EXACT, 429: 90 - EXACT}, statuses
    # Every replica took part, and the provider saw exactly the admitted requests.
    assert {r.headers["X-Gateway-Replica"] for r in answers} == {"gateway-1", "gateway-2", "gateway-3"}
    assert stack.fake_stats()["by_path"].get("/v1/completions") == EXACT
    for r in answers:
        if r.status_code == 429:
            limit = assert_names_the_limit(r, "endpoint", EXACT, "minute")
            assert limit["endpoint"] == "completions" and limit["client"] is None
            assert limit["window_seconds"] == 60 and limit["retry_after_seconds"] <= 60


@pytest.mark.integration
@pytest.mark.stack
def test_each_client_gets_exactly_its_own_limit_on_every_route(stack, limited):
    routes = ["gateway", "endpoints", "v1"]

    def send(job):
        client, i = job
        return client, chat(stack, limited[client], f"q{i}", route=routes[i % 3])

    jobs = [(c, i) for i in range(20) for c in ("alice", "bob")]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(send, jobs))
    admitted = Counter(c for c, r in answers if r.status_code == 200)
    assert admitted == {"alice": 5, "bob": 8}, admitted
    refused = {c: r for c, r in answers if r.status_code == 429}
    assert assert_names_the_limit(refused["alice"], "client_calls", 5, "minute")["client"] == "alice"
    assert assert_names_the_limit(refused["bob"], "client_calls", 8, "minute")["client"] == "bob"


@pytest.mark.integration
@pytest.mark.stack
def test_an_endpoint_limit_keyed_by_client_counts_each_client_apart(stack, limited):
    def send(job):
        client, i = job
        r = requests.post(
            f"{stack.url}/gateway/embeddings/invocations",
            json={"input": f"e{i}"},
            headers=bearer(limited[client]),
            timeout=60,
        )
        return client, r

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, [(c, i) for i in range(6) for c in ("erin", "frank")]))
    assert Counter(c for c, r in answers if r.status_code == 200) == {"erin": 3, "frank": 3}
    refused = next(r for c, r in answers if r.status_code == 429)
    limit = assert_names_the_limit(refused, "endpoint_per_client", 3, "minute")
    assert limit["endpoint"] == "embeddings"


def wait_for_counter(store, key: str, at_least: float, timeout: float = 10) -> float:
    """The Redis counter once the usage-record sink has added what the responses used."""
    deadline = time.monotonic() + timeout
    while True:
        value = float(store.get(key) or 0)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.mark.integration
@pytest.mark.stack
def test_tokens_per_minute_refuse_the_client_once_used_up(stack, limited, store):
    used = 0
    for i in range(20):
        r = chat(stack, limited["tpm"], f"count my tokens please {i}")
        if used >= 60:
            break
        assert r.status_code == 200, r.text
        used += r.json()["usage"]["total_tokens"]
        assert wait_for_counter(store, "gateway:limits:tokens:client:tpm:60", used) == used
    assert used >= 60
    limit = assert_names_the_limit(r, "client_tokens_per_minute", 60, "minute", kind="token_limit_exceeded")
    assert limit["used"] == used and limit["unit"] == "tokens"


@pytest.mark.integration
@pytest.mark.stack
def test_a_daily_dollar_budget_refuses_until_utc_midnight(stack, limited, store):
    key = f"gateway:limits:usd:client:spender:{time.strftime('%Y-%m-%d', time.gmtime())}"
    spent = 0.0
    for i in range(50):
        r = chat(stack, limited["spender"], f"spend a little {i} " * 5)
        if spent >= 0.00002:
            break
        assert r.status_code == 200, r.text
        spent = wait_for_counter(store, key, spent + 1e-12)
        assert spent > 0, "the usage-record sink added no cost"
    limit = assert_names_the_limit(r, "client_usd_per_day", 0.00002, "day (UTC)", kind="budget_exceeded")
    midnight = (int(time.time()) // 86400 + 1) * 86400
    assert limit["resets_at"] == datetime.fromtimestamp(midnight, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert abs(limit["retry_after_seconds"] - (midnight - time.time())) < 30
    assert limit["used"] == pytest.approx(spent, abs=1e-9) and limit["unit"] == "USD"


# ------------------------------------------------------------------------------------------ Redis down
@pytest.mark.integration
@pytest.mark.stack
def test_redis_down_serves_unlimited_loudly_and_limits_resume_after_restart(stack, limited):
    statuses: Counter = Counter()
    stop = threading.Event()

    def traffic():  # a steady client that is not limited, all along
        for i in range(2000):
            if stop.is_set():
                return
            statuses[chat(stack, limited["erin"], f"steady {i}").status_code] += 1

    background = threading.Thread(target=traffic)
    background.start()
    try:
        time.sleep(1)
        os.kill(stack.pid("redis"), signal.SIGKILL)
        time.sleep(0.5)
        down = [chat(stack, limited["hammer"], f"while down {i}") for i in range(12)]
        # Fail-open: more than hammer's 5 per minute get through, each marked as served without limits.
        assert [r.status_code for r in down] == [200] * 12, [r.text for r in down if r.status_code != 200]
        assert all(r.headers.get("X-Gateway-Limits") == "unenforced" for r in down)
        stack.run("restart", "redis")
        deadline = time.monotonic() + 20
        while chat(stack, limited["erin"], "back?").headers.get("X-Gateway-Limits") and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)  # every worker's 1 s pause after its last failure is over
        after = [chat(stack, limited["after"], f"after {i}") for i in range(8)]
    finally:
        stop.set()
        background.join(timeout=120)
    assert [r.status_code for r in after] == [200] * 5 + [429] * 3
    assert not any(r.headers.get("X-Gateway-Limits") for r in after)
    assert set(statuses) == {200}, statuses  # the steady client never saw an error
    logs = "".join(stack.log(f"replica-{i}") for i in (1, 2, 3))
    lines = [line for line in logs.splitlines() if "limits: Redis at 127.0.0.1:6379 does not answer" in line]
    assert lines and "requests are served WITHOUT limits (GATEWAY_LIMITS_ON_REDIS_DOWN=open)" in lines[0]
    # The command that fits the way these replicas were started (the local stack), not Docker's.
    assert "check Redis: scripts/local_stack.sh status" in lines[0] and "docker compose" not in lines[0]
    assert len(lines) <= 6 * 3, "at most one line per worker per 10 s"
    # Each replica's /metrics counts the requests served without their limits (gateway_limits_unenforced_total).
    unenforced = 0.0
    for name in stack.replicas:  # replica i listens on 127.0.10.i:8000
        text = requests.get(f"http://127.0.10.{name.split('-')[1]}:8000/metrics", timeout=10).text
        unenforced += sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "gateway_limits_unenforced_total" and sample.labels == {"policy": "open"}
        )
    assert unenforced >= len(down)


@pytest.mark.integration
def test_redis_down_with_the_closed_policy_refuses_with_503(tmp_path, fake_upstream):
    keys_file = tmp_path / "keys.json"
    key = add_key(keys_file, "direct")
    port = free_port()
    log = tmp_path / "gateway.log"
    ledger = tmp_path / "ledger"
    proc = start_replica(
        tmp_path,
        port,
        log=log,
        GATEWAY_LEDGER_DIR=str(ledger),
        GATEWAY_DEMO_UPSTREAM=fake_upstream,
        GATEWAY_CONFIG=str(limited_config(tmp_path / "c.yaml")),
        GATEWAY_AUTH="on",
        GATEWAY_KEYS_FILE=str(keys_file),
        GATEWAY_LIMITS_ON_REDIS_DOWN="closed",
        GATEWAY_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )  # nothing listens there
    try:
        requests.post(f"{fake_upstream}/_fake/reset", timeout=5)
        body = {"messages": [{"role": "user", "content": "hi"}]}
        answers = [
            requests.post(
                f"http://127.0.0.1:{port}/gateway/chat/invocations", json=body, headers=bearer(key), timeout=30
            )
            for _ in range(3)
        ]
        upstream = requests.get(f"{fake_upstream}/_fake/stats", timeout=5).json()["requests"]
    finally:
        stop_group(proc.pid)
    assert [r.status_code for r in answers] == [503] * 3
    error = answers[0].json()["error"]
    assert error["type"] == "limits_unavailable" and "GATEWAY_LIMITS_ON_REDIS_DOWN=closed" in error["message"]
    assert answers[0].headers["Retry-After"] == "5"
    assert upstream == 0
    assert "requests are refused with 503" in log.read_text()
    records = [json.loads(line) for path in ledger.glob("usage-*.jsonl") for line in path.read_text().splitlines()]
    assert sorted(r["request_id"] for r in records) == sorted(r.headers["X-Request-ID"] for r in answers)
    assert {(r["status"], r["error"], r["client"], r["endpoint"], r["cost_usd"]) for r in records} == {
        (503, "refused:limits_unavailable", "direct", "chat", 0.0)
    }


# ------------------------------------------------------------------------------------------ client keys
@pytest.mark.integration
@pytest.mark.stack
def test_a_missing_or_unknown_key_gets_a_401_that_says_what_to_do(stack, limited):
    missing = chat(stack, None)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "gateway_key_required"
    assert "Authorization: Bearer <key>" in missing.json()["error"]["message"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    unknown = chat(stack, "gwk_not-a-key-anyone-was-given")
    assert unknown.status_code == 401 and unknown.json()["error"]["type"] == "invalid_gateway_key"
    assert "gwk_not-a-key" not in unknown.text
    assert requests.get(f"{stack.url}/health", timeout=5).status_code == 200  # health needs no key


@pytest.mark.integration
@pytest.mark.stack
def test_openai_and_anthropic_style_keys_work_and_never_reach_the_provider(stack, limited):
    key = limited["gina"]
    requests.post(f"{stack.fake_url}/_fake/reset", timeout=5)
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Ping"}])
    assert answer.choices[0].message.content == "Fake answer to: Ping"
    assert chat(stack, None, "x-api-key to OpenAI", headers={"x-api-key": key}).status_code == 200
    # The OpenAI provider got its own Authorization header only, never the client's x-api-key.
    assert stack.fake_stats()["auth_headers"] == {"authorization": 2}

    requests.post(f"{stack.fake_url}/_fake/reset", timeout=5)
    assert chat(stack, key, "Bearer to Anthropic", endpoint="anthropic-chat").status_code == 200
    # The Anthropic provider got its own x-api-key only, never the client's Authorization.
    assert stack.fake_stats()["auth_headers"] == {"x-api-key": 1}
    logs = "".join(stack.log(f"replica-{i}") for i in (1, 2, 3)) + stack.log("nginx")
    assert key not in logs


@pytest.mark.integration
@pytest.mark.stack
def test_the_key_names_the_client_in_usage_records_whatever_the_client_claims(stack, limited):
    request_id = f"who-{uuid.uuid4().hex[:10]}"
    # Straight to a replica, past nginx (which drops X-Gateway-Client): the key still decides.
    r = requests.post(
        "http://127.0.10.1:8000/gateway/chat/invocations",
        json={"messages": [{"role": "user", "content": "who am I"}]},
        headers={**bearer(limited["gina"]), "X-Gateway-Client": "mallory", "X-Request-ID": request_id},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    found = []
    while not found and time.monotonic() < deadline:
        for path in (stack.state_dir / "ledger").glob("usage-*.jsonl"):
            found += [json.loads(line) for line in path.read_text().splitlines() if request_id in line]
        time.sleep(0.1)
    assert [rec["client"] for rec in found] == ["gina"]


@pytest.mark.integration
@pytest.mark.stack
def test_added_and_revoked_keys_take_effect_on_every_replica_within_seconds(stack, limited):
    key = add_key(stack.keys_file, "temporary")
    replicas = [f"http://127.0.10.{i}:8000" for i in (1, 2, 3)]
    body = {"messages": [{"role": "user", "content": "hi"}]}

    def statuses() -> list[int]:
        return [
            requests.post(f"{url}/gateway/chat/invocations", json=body, headers=bearer(key), timeout=30).status_code
            for url in replicas
            for _ in range(2)
        ]  # both workers, most likely

    deadline = time.monotonic() + 15
    while (seen := statuses()) != [200] * 6 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert seen == [200] * 6
    result = subprocess.run(
        [str(KEYS), "--file", str(stack.keys_file), "revoke", "temporary"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 15
    while (seen := statuses()) != [401] * 6 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert seen == [401] * 6


# ------------------------------------------------------------------------------------------ usage records
def ledger_records(stack, request_ids: set[str], timeout: float = 15) -> list[dict]:
    """The ledger's records of these requests, once there is one for each (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for path in (stack.state_dir / "ledger").glob("usage-*.jsonl"):
            found += [r for r in map(json.loads, path.read_text().splitlines()) if r["request_id"] in request_ids]
        if {r["request_id"] for r in found} >= request_ids or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


@pytest.mark.integration
@pytest.mark.stack
def test_each_refused_request_leaves_one_usage_record_saying_why(stack, limited):
    no_key = chat(stack, None)
    bad_key = chat(stack, "gwk_not-a-key-anyone-was-given", route="v1")
    # 5 calls at 2 a minute: some are over, even if a minute ends in between
    over = next(r for r in [chat(stack, limited["refused"], route="v1") for _ in range(5)] if r.status_code == 429)
    assert (no_key.status_code, bad_key.status_code) == (401, 401)
    found = ledger_records(stack, {r.headers["X-Request-ID"] for r in (no_key, bad_key, over)})
    assert len(found) == 3  # one each
    records = {rec["request_id"]: rec for rec in found}
    expected = {  # request: (endpoint, client, error)
        no_key: ("chat", None, "refused:gateway_key_required"),
        bad_key: (None, None, "refused:invalid_gateway_key"),  # its /v1 body is not read: no key, no parsing
        over: ("chat", "refused", "refused:rate_limit_exceeded:client_calls"),
    }
    for r, (endpoint, client, error) in expected.items():
        rec = records[r.headers["X-Request-ID"]]
        assert (rec["status"], rec["endpoint"], rec["client"], rec["error"]) == (r.status_code, endpoint, client, error)
        assert (rec["prompt_tokens"], rec["completion_tokens"], rec["total_tokens"], rec["cost_usd"]) == (0, 0, 0, 0.0)
        assert rec["replica"] == r.headers["X-Gateway-Replica"] and rec["provider"] is None
    assert "gwk_not-a-key" not in json.dumps(list(records.values()))


@pytest.mark.integration
@pytest.mark.stack
def test_the_ledger_has_one_record_for_every_request_in_nginxs_access_log(stack, limited):
    key = limited["mixed"]
    sent = [
        chat(stack, limited["gina"], "fine"),
        chat(stack, limited["gina"], "fine too", route="v1"),
        chat(stack, None),
        chat(stack, None, route="v1"),
        chat(stack, "gwk_unknown", endpoint="anthropic-chat"),
        chat(stack, limited["gina"], endpoint="no-such-endpoint"),
        chat(stack, limited["gina"], "[[fault:500]]"),
        requests.post(
            f"{stack.url}/gateway/chat/invocations", data=b"{not json", headers=bearer(limited["gina"]), timeout=30
        ),
        *(chat(stack, key, f"over {i}") for i in range(5)),  # some of these are over its 2 per minute
    ]
    ids = {r.headers["X-Request-ID"] for r in sent}
    assert len(ids) == len(sent)
    assert {401, 404, 429, 200}.issubset({r.status_code for r in sent})
    deadline = time.monotonic() + 15
    while True:
        logged = [
            json.loads(line)
            for line in stack.log("nginx").splitlines()
            if line.startswith("{") and json.loads(line)["request_id"] in ids
        ]
        if len(logged) >= len(sent) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    records = ledger_records(stack, ids)
    assert sorted(r["request_id"] for r in records) == sorted(entry["request_id"] for entry in logged)
    assert {r["request_id"]: r["status"] for r in records} == {e["request_id"]: e["status"] for e in logged}


# ------------------------------------------------------------------------------------------ no stack
def test_the_keys_script_prints_a_key_once_and_stores_only_its_hash(tmp_path):
    keys_file = tmp_path / "keys.json"
    key = add_key(keys_file, "team-search")
    assert key.startswith("gwk_") and len(key) > 40
    stored = keys_file.read_text()
    assert key not in stored and json.loads(stored)["keys"][0]["client"] == "team-search"
    listed = subprocess.run(
        [str(KEYS), "--file", str(keys_file), "list"], capture_output=True, text=True, env=clean_env(), timeout=30
    )
    assert listed.returncode == 0 and "team-search" in listed.stdout and key[:12] + "..." in listed.stdout
    assert key not in listed.stdout + listed.stderr
    again = subprocess.run(
        [str(KEYS), "--file", str(keys_file), "revoke", "nobody"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    assert again.returncode == 1 and "no key for client 'nobody'" in again.stderr
    bad = subprocess.run(
        [str(KEYS), "--file", str(keys_file), "add", "two words"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    assert bad.returncode == 2 and "is not a client name" in bad.stderr


def preflight(config: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "entrypoint.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(GATEWAY_CONFIG=str(config), OPENAI_API_KEY="sk-proj-Zq8RealLookingKey", **env),
    )


@pytest.mark.parametrize(
    ("limits", "line", "message"),
    [
        ({"client": {"calls": 0}}, "calls: 0", "limits.client.calls: calls must be a whole number of at least 1"),
        (
            {"client": {"calls": 5, "renewal_period": "fortnight"}},
            "renewal_period: fortnight",
            "renewal_period 'fortnight' is not a period",
        ),
        ({"clients": {"ci": {"usd_per_day": -1}}}, "usd_per_day: -1", "usd_per_day must be a number above 0"),
        ({"per_user": {}}, "per_user:", "limits: unknown key `per_user`; keys here: endpoint, client, clients"),
    ],
)
def test_a_wrong_limit_is_reported_with_its_line_and_the_gateway_does_not_start(tmp_path, limits, line, message):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["limits"] = limits
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = preflight(path)
    assert result.returncode == 78, result.stderr
    number = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith(line))
    assert f"{path}:{number}: " in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_endpoint_limit_with_an_unknown_key_is_reported_with_its_line(tmp_path):
    text = (
        (REPO / "config.yaml")
        .read_text()
        .replace(
            "  - name: embeddings\n", "  - name: embeddings\n    limit: {calls: 5, renewal_period: minute, key: ip}\n"
        )
    )
    path = tmp_path / "config.yaml"
    path.write_text(text)
    result = preflight(path)
    number = next(i for i, t in enumerate(text.splitlines(), 1) if "key: ip" in t)
    assert result.returncode == 78
    assert f"{path}:{number}: endpoint 'embeddings': limit.key: key 'ip' is not supported" in result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_AUTH": "off"}, "GATEWAY_AUTH=off is only allowed in demo mode"),
        ({"GATEWAY_AUTH": "maybe"}, "GATEWAY_AUTH='maybe' is not one of auto, on, off"),
        ({"GATEWAY_LIMITS_ON_REDIS_DOWN": "ajar"}, "GATEWAY_LIMITS_ON_REDIS_DOWN='ajar' is not open or closed"),
    ],
)
def test_auth_off_with_real_provider_keys_or_a_bad_setting_refuses_to_start(env, message):
    result = preflight(REPO / "config.yaml", **env)
    assert result.returncode == 78
    assert message in result.stderr and "Traceback" not in result.stderr
