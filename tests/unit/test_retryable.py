"""One definition of a passing failure (gateway_kit.resilience.retryable), and the three places that follow it:
the retry of the upstream client (retry_wait), the fallback chain (Fallback), and the circuit breaker (outcome).
A 501 once failed over but was never retried; now every place agrees on every status."""

from __future__ import annotations

import random

import pytest

from gateway_kit import resilience
from gateway_kit.resilience import Policy, outcome, retry_wait, retryable
from gateway_kit.settings import Settings
from unit.test_fallback import Provider, answer, fallback, request

PASSING = [429, 500, 502, 503, 504, 507, 520, 522, 524, 529]  # 529: Anthropic's "overloaded"; 52x: a proxy's
FINAL = [200, 201, 204, 301, 400, 401, 403, 404, 409, 413, 422, 501, 505]
POLICY = Policy.default(Settings(upstream_retries=3))


@pytest.mark.parametrize("status", PASSING)
def test_a_rate_limit_and_a_failing_provider_are_passing_failures(status):
    assert retryable(status)


@pytest.mark.parametrize("status", FINAL)
def test_success_a_bad_request_and_not_implemented_are_final(status):
    assert not retryable(status)


@pytest.mark.parametrize("status", PASSING + FINAL)
def test_the_upstream_client_retries_exactly_the_passing_failures(status):
    wait = retry_wait(status, {}, b"", 0, POLICY, 300.0, clock=lambda: 0.0, uniform=random.Random(1).uniform)
    assert (wait is not None) is retryable(status)


@pytest.mark.parametrize("status", PASSING + FINAL)
def test_the_breaker_counts_the_passing_5xx_as_failures_and_nothing_else_as_one(status):
    assert (outcome(status) is False) is (retryable(status) and status != 429)


@pytest.mark.parametrize("status", [501, 505])
def test_not_implemented_neither_opens_nor_closes_a_breaker(status):
    assert outcome(status) is None


@pytest.mark.parametrize("status", [500, 503, 529, 429])
def test_a_passing_failure_is_answered_by_the_next_endpoint(status):
    provider = Provider(chat=answer(status, {"error": "busy"}), **{"azure-chat": answer(200, {"answer": "azure"})})
    got = request(fallback(), provider)
    assert (got.status, got.json()) == (200, {"answer": "azure"})
    assert provider.started == ["chat", "azure-chat"] and got.reason == f"http_{status}"


@pytest.mark.parametrize("status", [501, 505, 400])
def test_a_final_answer_reaches_the_client_and_no_fallback_is_tried(status):
    provider = Provider(chat=answer(status, {"error": "not here"}), **{"azure-chat": answer(200, {"answer": "no"})})
    got = request(fallback(), provider)
    assert (got.status, got.json()) == (status, {"error": "not here"})
    assert provider.started == ["chat"] and got.served_by is None


def test_there_is_no_second_list_of_retryable_statuses():
    assert not hasattr(resilience, "RETRYABLE_STATUSES") and not hasattr(resilience, "_retryable")
