"""The circuit breaker as units: which breaker a call belongs to, what moves it, and its shared state in Redis.

Time is a Clock moved by hand (the `clock=` parameter); Redis is tests/unit/fakes.FakeRedis, which runs the
breaker's scripts in memory and counts round trips. The same behaviour against real Redis, workers and a
provider is in tests/stack/test_resilience.py.
"""

from __future__ import annotations

import asyncio

import pytest

from gateway_kit import resilience
from gateway_kit.events import NOBODY, Events, Listener
from gateway_kit.resilience import (
    CIRCUIT_PREFIX,
    CLOSED,
    HALF_OPEN,
    OPEN,
    SHARED_READ_S,
    Breaker,
    Circuit,
    CircuitName,
    CircuitOpenError,
    circuit_name,
    outcome,
)
from gateway_kit.shared_redis import DOWN_PAUSE

from .fakes import Clock, FakeRedis

K, S = 3, 60.0  # failures that open a circuit, seconds it stays open
CHAT = CircuitName("https://api.openai.com/v1", "gpt-4o-mini")
EMBED = CircuitName("https://api.openai.com/v1", "text-embedding-3-small")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def seen() -> list[tuple]:
    """Every change reported to told(seen), as (name, old state, new state)."""
    return []


def told(seen: list[tuple]) -> Events:
    """Events whose one listener hears each circuit change as metrics do, and appends it to `seen`."""

    class Changes(Listener):
        def circuit_changed(self, name, old, new) -> None:
            seen.append((name, old, new))

    return Events([Changes()])


def run(coroutine):
    return asyncio.run(coroutine)


# ---------------------------------------------------------------- which breaker a call belongs to


@pytest.mark.parametrize(
    ("base_url", "payload", "url", "model"),
    [
        (
            "https://api.openai.com/v1",
            {"model": "gpt-4o-mini", "messages": []},
            "https://api.openai.com/v1",
            "gpt-4o-mini",
        ),
        (
            "https://api.anthropic.com/v1/",
            {"model": "claude-sonnet-4"},
            "https://api.anthropic.com/v1",
            "claude-sonnet-4",
        ),
        (
            "https://res.openai.azure.com/openai/deployments/gpt4o-prod?api-version=2024-06-01",
            {"messages": []},
            "https://res.openai.azure.com/openai/deployments/gpt4o-prod",
            "gpt4o-prod",
        ),
        ("http://user:secret@127.0.0.1:9000/v1", {"model": "m"}, "http://127.0.0.1:9000/v1", "m"),
        ("http://[::1]:9000/v1", None, "http://[::1]:9000/v1", None),
    ],
)
def test_a_breaker_is_named_by_the_providers_base_url_and_the_model_never_by_a_credential(
    base_url, payload, url, model
):
    name = circuit_name(base_url, payload)
    assert name == CircuitName(url, model)
    assert name.key.startswith(CIRCUIT_PREFIX) and "secret" not in name.key and "api-version" not in name.key


def test_calls_for_two_models_on_one_host_get_two_breakers_and_one_model_one(monkeypatch):
    monkeypatch.setattr(resilience, "_breakers", {})
    monkeypatch.setattr("gateway_kit.shared_redis.link_for", lambda settings: None)
    chat = resilience.circuit_for("https://api.openai.com/v1", {"model": "gpt-4o-mini"})
    embed = resilience.circuit_for("https://api.openai.com/v1", {"model": "text-embedding-3-small"})
    assert chat is not embed and chat.name == CHAT and embed.name == EMBED
    assert resilience.circuit_for("https://api.openai.com/v1/", {"model": "gpt-4o-mini"}) is chat


def test_model_a_failing_opens_its_own_breaker_and_model_b_on_the_same_host_keeps_being_called(clock):
    chat, embed = Breaker(CHAT, K, S, clock=clock), Breaker(EMBED, K, S, clock=clock)

    async def scenario():
        for _ in range(K):
            ticket = await chat.before_call()
            await chat.record(False, ticket)
        with pytest.raises(CircuitOpenError) as refused:
            await chat.before_call()
        ticket = await embed.before_call()
        await embed.record(True, ticket)
        return str(refused.value)

    message = run(scenario())
    assert message == (
        "the provider https://api.openai.com/v1 failed 3 times in a row for model gpt-4o-mini; "
        "the gateway stops calling it and tries again in 60 s (circuit breaker)"
    )
    assert chat.local.state == OPEN and embed.local.state == CLOSED


# ---------------------------------------------------------------- what counts


@pytest.mark.parametrize(
    ("status", "counts_as"),
    [
        (200, True),
        (201, True),
        (500, False),
        (502, False),
        (503, False),
        (504, False),
        (529, False),
        (400, None),
        (401, None),
        (404, None),
        (413, None),
        (422, None),
        (429, None),
        (501, None),
        (505, None),
    ],
)
def test_only_a_5xx_answer_counts_as_a_failure_and_no_4xx_moves_the_breaker(status, counts_as):
    assert outcome(status) is counts_as


def test_k_failures_in_a_row_open_it_and_a_success_between_them_starts_the_count_again(clock):
    c = Circuit(CHAT, K, S, clock)
    for ok in (False, False, True, False, False):
        c.record(ok, c.before_call())
    assert c.state == CLOSED and c.failures == 2
    c.record(False, c.before_call())
    assert c.state == OPEN


def test_bad_requests_and_429s_between_failures_neither_count_nor_reset_the_count(clock):
    c = Circuit(CHAT, K, S, clock)
    for ok in (False, None, False, outcome(429), outcome(400)):
        c.record(ok, c.before_call())
    assert c.state == CLOSED and c.failures == 2
    c.record(False, c.before_call())
    assert c.state == OPEN


def test_a_thousand_bad_requests_never_open_it(clock):
    c = Circuit(CHAT, K, S, clock)
    for _ in range(1000):
        c.record(outcome(400), c.before_call())
    assert c.state == CLOSED and c.failures == 0


def test_open_fails_fast_until_the_reset_time_then_lets_one_probe_through(clock, seen):
    c = Circuit(CHAT, K, S, clock, told(seen))
    for _ in range(K):
        c.record(False, c.before_call())
    clock.advance(S - 18)
    with pytest.raises(CircuitOpenError) as refused:
        c.before_call()
    assert refused.value.retry_in == pytest.approx(18)
    clock.advance(18)
    assert c.before_call() is True  # the probe
    with pytest.raises(CircuitOpenError):
        c.before_call()  # everyone else while the probe runs
    c.record(True, True)
    assert c.state == CLOSED and c.before_call() is False
    assert [(old, new) for _, old, new in seen] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_a_failed_probe_opens_it_for_the_whole_reset_time_again(clock):
    c = Circuit(CHAT, K, S, clock)
    for _ in range(K):
        c.record(False, c.before_call())
    clock.advance(S)
    c.record(False, c.before_call())
    assert c.state == OPEN
    clock.advance(S - 1)
    with pytest.raises(CircuitOpenError):
        c.before_call()


def test_a_probe_answered_429_or_cancelled_decides_nothing_and_the_next_call_probes(clock):
    c = Circuit(CHAT, K, S, clock)
    for _ in range(K):
        c.record(False, c.before_call())
    clock.advance(S)
    for ok in (outcome(429), None):
        assert c.before_call() is True
        c.record(ok, True)
        assert c.state == HALF_OPEN
    assert c.before_call() is True


def test_a_threshold_of_0_turns_it_off(clock):
    c = Circuit(CHAT, 0, S, clock)
    for _ in range(100):
        c.record(False, c.before_call())
    assert c.before_call() is False


# ---------------------------------------------------------------- shared by the workers through Redis


def workers(clock, redis, n=2, name=CHAT, events=NOBODY):
    """The same breaker in n workers sharing one Redis."""
    return [Breaker(name, K, S, redis, clock, events) for _ in range(n)]


async def call(breaker: Breaker, ok: bool | None) -> None:
    await breaker.record(ok, await breaker.before_call())


def test_failures_spread_over_workers_open_it_for_every_worker(clock):
    redis = FakeRedis(clock)
    a, b = workers(clock, redis)

    async def scenario():
        await call(a, False)
        await call(b, False)
        await call(a, False)  # the third in the deployment: open
        with pytest.raises(CircuitOpenError):
            await a.before_call()
        clock.advance(SHARED_READ_S)  # b trusts what it read for at most this long
        with pytest.raises(CircuitOpenError) as refused:
            await b.before_call()
        return refused.value

    refused = run(scenario())
    assert "failed 3 times in a row for model gpt-4o-mini" in str(refused)
    assert refused.retry_in == pytest.approx(S - SHARED_READ_S)
    assert a.local.failures == b.local.failures == 0  # nothing was decided alone
    assert sorted(redis.live_keys()) == [CHAT.key + "failures", CHAT.key + "open"]
    assert all(k.startswith(CIRCUIT_PREFIX) for k in redis.live_keys())


def test_successful_calls_cost_no_redis_round_trip_only_one_read_per_second_per_worker(clock):
    redis = FakeRedis(clock)
    (a,) = workers(clock, redis, 1)

    async def scenario():
        for _ in range(1000):
            await call(a, True)
            clock.advance(0.0009)  # 1000 calls in 0.9 s

    run(scenario())
    assert redis.commands == 1
    clock.advance(0.1)
    run(call(a, True))
    assert redis.commands == 2


def test_a_success_clears_the_shared_count_only_when_the_worker_knows_it_is_not_zero(clock):
    redis = FakeRedis(clock)
    a, b = workers(clock, redis)

    async def scenario():
        await call(a, True)  # a has read: 0 failures
        await call(b, False)
        await call(b, False)
        before = redis.commands
        await call(a, True)  # a does not know yet: no round trip, the count stays
        assert redis.commands == before and redis.data[CHAT.key + "failures"][0] == "2"
        await call(b, True)  # b made them: it clears the count
        assert CHAT.key + "failures" not in redis.live_keys()

    run(scenario())


def test_one_probe_in_the_whole_deployment_and_its_success_closes_it_for_everyone(clock, seen):
    redis = FakeRedis(clock)
    a, b = workers(clock, redis, events=told(seen))

    async def scenario():
        for w in (a, b, a):
            await call(w, False)
        clock.advance(S)
        probe = await a.before_call()
        assert probe == resilience.SHARED_PROBE
        with pytest.raises(CircuitOpenError):
            await b.before_call()
        with pytest.raises(CircuitOpenError):
            await a.before_call()  # a's other calls wait for the probe too
        await a.record(True, probe)
        assert await a.before_call() == resilience.SHARED
        clock.advance(SHARED_READ_S)
        assert await b.before_call() == resilience.SHARED

    run(scenario())
    assert redis.live_keys() == []
    assert (CHAT, HALF_OPEN, CLOSED) in seen


def test_a_failed_probe_opens_it_again_for_everyone(clock):
    redis = FakeRedis(clock)
    a, b = workers(clock, redis)

    async def scenario():
        for w in (a, b, a):
            await call(w, False)
        clock.advance(S)
        await call(b, False)  # b's call is the probe, and fails
        clock.advance(SHARED_READ_S)
        for w in (a, b):
            with pytest.raises(CircuitOpenError) as refused:
                await w.before_call()
            assert refused.value.retry_in == pytest.approx(S - SHARED_READ_S)

    run(scenario())


def test_a_cancelled_probe_lets_another_call_probe(clock):
    redis = FakeRedis(clock)
    a, b = workers(clock, redis)

    async def scenario():
        for w in (a, b, a):
            await call(w, False)
        clock.advance(S)
        await call(a, None)  # the probe's client left
        clock.advance(SHARED_READ_S)
        assert await b.before_call() == resilience.SHARED_PROBE

    run(scenario())


def test_deleting_the_breaker_keys_closes_it_for_every_worker_within_the_read_interval(clock):
    redis = FakeRedis(clock)
    a, b = workers(clock, redis)

    async def scenario():
        for w in (a, b, a):
            await call(w, False)
        clock.advance(SHARED_READ_S)
        for w in (a, b):
            with pytest.raises(CircuitOpenError):
                await w.before_call()
        redis.flush_breakers()
        clock.advance(SHARED_READ_S)
        for w in (a, b):
            assert await w.before_call() == resilience.SHARED
            assert w.state == CLOSED and w.failures == 0

    run(scenario())


def test_while_redis_is_down_each_worker_decides_alone_and_forgets_it_once_redis_answers(clock):
    redis = FakeRedis(clock)
    a, b = workers(clock, redis)

    async def scenario():
        await call(a, True)
        redis.down = True
        clock.advance(SHARED_READ_S)
        for _ in range(K):
            await call(a, False)  # counted by a alone
        with pytest.raises(CircuitOpenError):
            await a.before_call()
        assert await b.before_call() == resilience.LOCAL  # b's own breaker: closed, calls go through
        calls_while_down = redis.commands
        for _ in range(100):
            with pytest.raises(CircuitOpenError):
                await a.before_call()
        assert redis.commands == calls_while_down  # Redis is left alone for DOWN_PAUSE
        redis.down = False
        clock.advance(DOWN_PAUSE)
        assert await a.before_call() == resilience.SHARED  # Redis answers: closed, a's own state dropped
        assert a.local.state == CLOSED and a.local.failures == 0

    run(scenario())


def test_without_redis_the_breaker_is_the_workers_own_as_before(clock):
    (a,) = workers(clock, None, 1)

    async def scenario():
        for _ in range(K):
            await call(a, False)
        with pytest.raises(CircuitOpenError):
            await a.before_call()
        clock.advance(S)
        assert await a.before_call() == resilience.LOCAL_PROBE

    run(scenario())
