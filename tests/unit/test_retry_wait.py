"""How long the upstream client waits before retrying an answer (resilience.retry_wait), as units.

The clock (for a Retry-After date) and the jitter's random source are injected: no sleeping, no flakiness.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from gateway_kit.resilience import Policy, retry_wait
from gateway_kit.settings import Settings

NOW = 1_800_000_000.0  # the injected wall clock
POLICY = Policy.default(Settings(upstream_retries=3, upstream_backoff=0.25, upstream_retry_max_wait=5.0))
LONG = 300.0  # seconds left before the total timeout


def wait(status=500, headers=None, body=b"", retry=0, policy=POLICY, remaining=LONG, seed=7):
    return retry_wait(
        status, headers or {}, body, retry, policy, remaining, clock=lambda: NOW, uniform=random.Random(seed).uniform
    )


@pytest.mark.parametrize("status", [200, 400, 401, 404, 422, 501])
def test_answers_that_a_retry_cannot_fix_are_not_retried(status):
    assert wait(status) is None


def test_no_retry_once_the_endpoints_retries_are_used():
    assert wait(500, retry=2) is not None
    assert wait(500, retry=3) is None


def test_retry_after_in_seconds_is_honoured():
    assert wait(429, {"Retry-After": "2"}) == 2.0
    assert wait(503, {"Retry-After": "0"}) == 0.0


def test_retry_after_as_an_http_date_is_measured_from_the_clock():
    date = format_datetime(datetime.fromtimestamp(NOW + 3, UTC), usegmt=True)
    assert wait(429, {"Retry-After": date}) == pytest.approx(3.0)
    past = format_datetime(datetime.fromtimestamp(NOW - 60, UTC), usegmt=True)
    assert wait(429, {"Retry-After": past}) == 0.0


def test_retry_after_ms_comes_before_retry_after():
    assert wait(429, {"retry-after-ms": "1500", "Retry-After": "4"}) == 1.5


def test_a_retry_after_longer_than_max_wait_is_passed_on_at_once():
    assert wait(429, {"Retry-After": "6"}) is None
    assert wait(429, {"retry-after-ms": "5001"}) is None
    assert wait(429, {"Retry-After": "5"}) == 5.0


def test_an_unreadable_retry_after_falls_back_to_jitter():
    assert 0 <= wait(503, {"Retry-After": "soon"}) <= 0.25


def test_an_exhausted_quota_is_never_retried():
    body = b'{"error": {"type": "insufficient_quota", "message": "You exceeded your current quota"}}'
    assert wait(429, {"Retry-After": "1"}, body) is None
    assert wait(429, {"Retry-After": "1"}, b'{"error": {"type": "rate_limit_exceeded"}}') == 1.0


@pytest.mark.parametrize(("retry", "ceiling"), [(0, 0.25), (1, 0.5), (2, 1.0)])
def test_full_jitter_stays_between_0_and_backoff_doubled_each_retry(retry, ceiling):
    waits = [wait(502, retry=retry, seed=seed) for seed in range(500)]
    assert all(0 <= w <= ceiling for w in waits)
    assert max(waits) > 0.9 * ceiling and min(waits) < 0.1 * ceiling  # the whole range is used


def test_jitter_is_capped_by_max_wait():
    policy = Policy.default(Settings(upstream_retries=10, upstream_backoff=1.0, upstream_retry_max_wait=2.0))
    assert all(0 <= wait(502, retry=8, policy=policy, seed=s) <= 2.0 for s in range(200))


def test_a_wait_never_runs_past_the_total_timeout():
    assert wait(429, {"Retry-After": "2"}, remaining=2.5) == 2.0
    assert wait(429, {"Retry-After": "2"}, remaining=2.0) is None
    assert wait(502, remaining=0.01) is None
