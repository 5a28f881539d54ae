"""The admin page's session, CSRF and login-throttle logic (gateway_kit/admin/auth.py), on injected clocks.

The page itself, in a browser against the local stack, is tests/stack/test_admin_page.py."""

from __future__ import annotations

import pytest

from gateway_kit.admin.auth import LoginThrottle, Password, Sessions, password_problem


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_session_cookie_names_who_logged_in_until_it_expires():
    clock = Clock()
    sessions = Sessions(ttl=3600, clock=clock)
    cookie = sessions.issue("dana")
    assert sessions.read(cookie).who == "dana"
    clock.now += 3599
    assert sessions.read(cookie) is not None
    clock.now += 1
    assert sessions.read(cookie) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: c[:-1] + ("0" if c[-1] != "0" else "1"),  # the signature
        lambda c: c.replace(c.split(".")[1], str(int(c.split(".")[1]) + 86400), 1),  # a later expiry
        lambda c: ".".join([c.split(".")[0], c.split(".")[1], "YWRtaW4", c.split(".")[3]]),  # another name
        lambda c: "",
        lambda c: "a.b.c",
        lambda c: "x.notanumber.YQ.0",
    ],
)
def test_a_forged_or_altered_cookie_is_no_session(damage):
    sessions = Sessions(ttl=3600, clock=Clock())
    assert sessions.read(damage(sessions.issue("dana"))) is None


def test_a_cookie_from_another_process_is_no_session():
    """The signing key is made at start: a restart (or another admin process) ends every session."""
    clock = Clock()
    assert Sessions(ttl=3600, clock=clock).read(Sessions(ttl=3600, clock=clock).issue("dana")) is None


def test_logging_out_ends_the_session_before_its_expiry_and_forgets_it_after():
    clock = Clock()
    sessions = Sessions(ttl=60, clock=clock)
    first, second = sessions.issue("dana"), sessions.issue("dana")
    sessions.end(sessions.read(first))
    assert sessions.read(first) is None and sessions.read(second) is not None
    clock.now += 61
    sessions.end(sessions.read(sessions.issue("eve")))
    assert len(sessions._ended) == 1  # the expired one is no longer remembered: memory stays bounded


def test_the_csrf_token_belongs_to_one_session():
    sessions = Sessions(ttl=60, clock=Clock())
    mine, other = sessions.read(sessions.issue("dana")), sessions.read(sessions.issue("dana"))
    token = sessions.csrf_token(mine)
    assert sessions.csrf_ok(mine, token)
    assert not sessions.csrf_ok(other, token)
    assert not sessions.csrf_ok(mine, None)
    assert not sessions.csrf_ok(mine, "")
    assert not sessions.csrf_ok(mine, token[:-1])


def test_the_password_is_compared_whole():
    password = Password("correct horse battery")
    assert password.matches("correct horse battery")
    assert not password.matches("correct horse batter")
    assert not password.matches("")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("tiny-pw", "shorter than 12"),
        ("gwk_" + "A" * 43, "client key"),
        ("changeme-changeme", "placeholder"),
        (" leading-space-password", "whitespace"),
        ("", "empty"),
    ],
)
def test_an_unusable_admin_password_is_refused_without_being_named(value, problem):
    said = password_problem(value)
    assert problem in said
    assert not value or value not in said


def test_a_good_password_has_no_problem():
    assert password_problem("Tr0ub4dor&3-staple-9") is None


def test_an_address_may_fail_five_times_then_waits_until_the_window_moves_on():
    clock = Clock()
    throttle = LoginThrottle(attempts=5, window=300, clock=clock)
    for _ in range(5):
        assert throttle.retry_after("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 300
    assert throttle.retry_after("10.0.0.2") == 0  # another address is not held up
    clock.now += 299
    assert throttle.retry_after("10.0.0.1") == 1
    clock.now += 1
    assert throttle.retry_after("10.0.0.1") == 0


def test_a_successful_login_forgets_the_address_failures():
    throttle = LoginThrottle(attempts=2, clock=Clock())
    throttle.failed("10.0.0.1")
    throttle.succeeded("10.0.0.1")
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 0


def test_many_addresses_together_are_throttled_too():
    clock = Clock()
    throttle = LoginThrottle(attempts=5, total=20, window=300, clock=clock)
    for i in range(20):
        throttle.failed(f"10.0.{i}.1")
    assert throttle.retry_after("192.168.1.1") == 300


def test_the_throttle_remembers_a_bounded_number_of_addresses_oldest_forgotten_first():
    clock = Clock()
    throttle = LoginThrottle(attempts=2, total=10**9, addresses=100, clock=clock)
    throttle.failed("first")
    throttle.failed("first")
    for i in range(100):
        clock.now += 0.001
        throttle.failed(f"flood-{i}")
    assert len(throttle) == 100
    assert throttle.retry_after("first") == 0  # forgotten: the table never grows past its bound
    throttle.failed("flood-99")
    assert throttle.retry_after("flood-99") > 0
