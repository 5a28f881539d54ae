"""The response cache's pieces (gateway_kit.cache): its key, its config checks, and what it stores, in process
with a Redis of a dict. Through nginx and real replicas: tests/stack/test_cache.py."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from conftest import REPO
from gateway_kit.cache import (
    MEMORY_CHECK_SECONDS,
    Policy,
    ResponseCache,
    cache_control,
    cache_key,
    complete_stream,
    config_problems,
    read_config,
)
from gateway_kit.events import NOBODY
from gateway_kit.preflight import ConfigError, check, unknown_keys
from gateway_kit.settings import Settings
from unit.asgi import request

CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
BODY = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.2, "max_tokens": 50}


# ---------------------------------------------------------------- the key
def test_the_key_ignores_key_order_and_spacing():
    reordered = json.loads(json.dumps({"max_tokens": 50, "temperature": 0.2, **BODY}, indent=4))
    assert cache_key("chat", "/v1/chat/completions", BODY) == cache_key("chat", "/v1/chat/completions", reordered)


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.3},
        {"max_tokens": 51},
        {"top_p": 0.9},
        {"seed": 1},
        {"stream": True},
        {"messages": [{"role": "user", "content": "hi!"}]},
    ],
)
def test_any_parameter_sampling_or_stream_makes_another_key(change):
    assert cache_key("chat", "/v1/chat/completions", BODY) != cache_key(
        "chat", "/v1/chat/completions", {**BODY, **change}
    )


def test_the_endpoint_the_route_and_with_scope_client_the_client_make_other_keys():
    key = cache_key("chat", "/v1/chat/completions", BODY)
    assert key.startswith("gateway:cache:chat:")
    assert cache_key("azure-chat", "/v1/chat/completions", BODY) != key
    assert cache_key("chat", "/gateway/{endpoint}/invocations", BODY) != key
    assert cache_key("chat", "/v1/chat/completions", BODY, "team-a") != key
    assert cache_key("chat", "/v1/chat/completions", BODY, "team-a") != cache_key(
        "chat", "/v1/chat/completions", BODY, "team-b"
    )


@pytest.mark.parametrize(
    ("value", "look", "store"),
    [
        (None, True, True),
        ("no-cache", False, True),
        ("No-Store", True, False),
        ("max-age=0, no-cache, no-store", False, False),
    ],
)
def test_cache_control_no_cache_skips_the_lookup_and_no_store_the_write(value, look, store):
    scope = {"headers": [] if value is None else [(b"cache-control", value.encode())]}
    assert cache_control(scope) == (look, store)


def test_only_a_stream_that_ended_with_done_and_no_error_is_complete():
    assert complete_stream(b'data: {"choices":[]}\n\ndata: [DONE]\n\n')
    assert not complete_stream(b'data: {"choices":[]}\n\n')  # cut
    assert not complete_stream(b'data: {"choices":[]}\n\ndata: {"error":{"type":"x"}}\n\n')


# ---------------------------------------------------------------- config
def with_cache(block) -> dict:
    config = copy.deepcopy(CONFIG)
    config["endpoints"][0]["cache"] = block
    return config


def test_a_valid_block_is_read_and_the_shipped_config_caches_nothing():
    assert read_config(CONFIG) == {}
    assert read_config(with_cache({"ttl": 60})) == {"chat": Policy(60)}
    assert read_config(with_cache({"ttl": 60, "scope": "client"})) == {"chat": Policy(60, per_client=True)}
    assert config_problems(with_cache({"ttl": 60, "scope": "client"})) == []


@pytest.mark.parametrize(
    ("block", "where", "message"),
    [
        ({"ttl": 0}, "ttl", "cache.ttl: 0 is not a whole number of seconds above 0"),
        ({"ttl": "1h"}, "ttl", "cache.ttl: '1h' is not a whole number of seconds above 0"),
        ({"ttl": True}, "ttl", "cache.ttl: True is not a whole number of seconds above 0"),
        ({"scope": "client"}, "cache", "cache.ttl: None is not a whole number of seconds above 0"),
        ({"ttl": 5, "scope": "team"}, "scope", "cache.scope: 'team' is not client"),
        (600, "cache", "cache must be a mapping, for example {ttl: 3600}"),
    ],
)
def test_a_bad_value_is_named(block, where, message):
    [(path, what)] = config_problems(with_cache(block))
    assert path[-1] == where and what.startswith(message), what


def test_an_unknown_key_in_the_block_is_named_with_the_nearest_valid_one():
    [(_, what)] = unknown_keys(with_cache({"ttl": 5, "tll": 5}))
    assert what == "endpoint 'chat': cache: unknown key `tll` (did you mean `ttl`?); keys here: ttl, scope"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("{ttl: -5}", "endpoint 'chat': cache.ttl: -5 is not a whole number of seconds above 0"),
        ("{ttl: 5, scop: client}", "endpoint 'chat': cache: unknown key `scop` (did you mean `scope`?)"),
    ],
)
def test_preflight_reports_a_bad_block_with_its_line(tmp_path, block, message):
    config = tmp_path / "config.yaml"
    text = (REPO / "config.yaml").read_text().replace("    model:\n", f"    cache: {block}\n    model:\n", 1)
    config.write_text(text)
    line = text.splitlines().index(f"    cache: {block}") + 1
    with pytest.raises(ConfigError, match="^" + re.escape(f"{config}:{line}: {message}")):
        check(config, Settings.from_env({}), need_keys=False)


# ---------------------------------------------------------------- what is stored (Redis: a dict)
class DictRedis:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.ttls: dict[str, int] = {}
        self.memory = {"used_memory": 1_000_000, "maxmemory": 0}  # INFO memory: no maxmemory set

    async def info(self, section):
        assert section == "memory"
        return self.memory

    async def get(self, key):
        return self.data.get(key)

    async def set(self, key, value, ex):
        self.data[key], self.ttls[key] = value, ex
        return True


class Link:
    timeout, where = 0.5, "127.0.0.1:6379"

    def __init__(self) -> None:
        self.redis = DictRedis()
        self.now = 0.0

    def client(self):
        return self.redis

    def clock(self) -> float:
        return self.now

    def available(self) -> bool:
        return True

    def failed(self) -> None:
        pass


class Provider:
    """An inner app that answers `chunks` with `status` and counts its calls."""

    def __init__(self, chunks: list[bytes], status: int = 200, content_type: bytes = b"application/json") -> None:
        self.chunks, self.status, self.content_type, self.calls = chunks, status, content_type, 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        await send(
            {"type": "http.response.start", "status": self.status, "headers": [(b"content-type", self.content_type)]}
        )
        for i, chunk in enumerate(self.chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": i < len(self.chunks) - 1})


def twice(provider: Provider, max_entry_bytes: int = 1024, body: dict | None = None):
    app = ResponseCache(provider, {"chat": Policy(60)}, Link(), max_entry_bytes, NOBODY)
    first = request(app, "/gateway/chat/invocations", body or BODY)
    second = request(app, "/gateway/chat/invocations", body or BODY)
    return first, second, app.redis.redis


def test_a_200_answer_is_stored_with_its_ttl_and_the_second_request_is_a_hit():
    provider = Provider([b'{"choices":', b"[]}"])
    first, second, redis = twice(provider)
    assert provider.calls == 1
    assert first.headers["x-gateway-cache"] == "miss" and second.headers["x-gateway-cache"] == "hit"
    assert second.body == first.body == b'{"choices":[]}'
    assert second.headers["content-type"] == "application/json"
    assert list(redis.ttls.values()) == [60]


@pytest.mark.parametrize(
    ("provider", "max_entry_bytes"),
    [
        (Provider([b'{"error":{}}'], status=500), 1024),
        (Provider([b'{"error":{}}'], status=429), 1024),
        (Provider([b"x" * 600, b"x" * 600]), 1024),  # above the size cap
        (Provider([b"data: {}\n\n"], content_type=b"text/event-stream"), 1024),  # no [DONE]: cut
        (Provider([b"data: {}\n\n", b'data: {"error":{}}\n\n'], content_type=b"text/event-stream"), 1024),
    ],
    ids=["500", "429", "too large", "stream cut", "stream ended by an error event"],
)
def test_errors_cut_streams_and_answers_over_the_cap_are_never_stored(provider, max_entry_bytes):
    _, second, redis = twice(provider, max_entry_bytes)
    assert provider.calls == 2 and redis.data == {}
    assert second.headers["x-gateway-cache"] == "miss"


def test_a_whole_stream_is_stored_and_replayed_as_the_same_events():
    events = [
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
        b'data: {"choices":[],"usage":{}}\n\n',
        b"data: [DONE]\n\n",
    ]
    provider = Provider(events, content_type=b"text/event-stream; charset=utf-8")
    first, second, _ = twice(provider, body={**BODY, "stream": True})
    assert provider.calls == 1
    assert second.body == b"".join(events) == first.body
    assert second.headers["content-type"].startswith("text/event-stream") and "content-length" not in second.headers


def test_nothing_is_stored_while_redis_is_above_three_quarters_of_its_maxmemory_and_stored_again_with_room(caplog):
    provider = Provider([b'{"choices":[]}'])
    link = Link()
    app = ResponseCache(provider, {"chat": Policy(60)}, link, 1024, NOBODY)
    link.redis.memory = {"used_memory": 151, "maxmemory": 200, "used_memory_human": "151B", "maxmemory_human": "200B"}
    answers = [request(app, "/gateway/chat/invocations", BODY) for _ in range(3)]
    assert provider.calls == 3 and link.redis.data == {}
    assert [a.headers["x-gateway-cache"] for a in answers] == ["miss"] * 3  # looked up, not stored
    full = [r.getMessage() for r in caplog.records if "new answers are not stored" in r.getMessage()]
    assert len(full) == 1 and "151B of its maxmemory 200B (above 75%)" in full[0]

    link.redis.memory = {"used_memory": 149, "maxmemory": 200}
    request(app, "/gateway/chat/invocations", BODY)
    assert link.redis.data == {}  # read again only after MEMORY_CHECK_SECONDS
    link.now += MEMORY_CHECK_SECONDS
    request(app, "/gateway/chat/invocations", BODY)
    assert len(link.redis.data) == 1 and provider.calls == 5
    assert request(app, "/gateway/chat/invocations", BODY).headers["x-gateway-cache"] == "hit"
    assert any("has room again" in r.getMessage() for r in caplog.records)
