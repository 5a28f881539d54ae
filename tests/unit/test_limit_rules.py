"""Limits as units: what config.yaml says, which counters a request meets, and the answers it gets.

The Redis side (the Lua script, counts exact across replicas) is tested against a real Redis in
tests/stack/test_limits_and_keys.py; here the limiter's verdicts are scripted."""

from __future__ import annotations

import calendar

import pytest

from gateway_kit import limits
from gateway_kit.events import Events, Listener
from gateway_kit.shared_redis import RedisLink
from gateway_kit.limits import ClientLimit, Limiter, Limits, LimitsConfigError, read_config, refusal, rules_for
from unit.asgi import Echo, request

CHAT = {"name": "chat", "endpoint_type": "llm/v1/chat", "model": {"provider": "openai", "name": "gpt-4o-mini"}}
NOON = calendar.timegm((2026, 11, 28, 12, 0, 0))


def config(**top) -> dict:
    return {"endpoints": [dict(CHAT, **top.pop("chat", {}))], **top}


def test_an_endpoint_limit_counts_every_client_together_unless_keyed_by_client():
    together = read_config(config(chat={"limit": {"calls": 5, "renewal_period": "minute"}}))
    (rule,) = rules_for(together, "chat", "team-a")
    assert (rule.name, rule.limit, rule.seconds, rule.client) == ("endpoint", 5, 60, None)
    assert rules_for(together, "chat", "team-b")[0].key == rule.key

    apart = read_config(config(chat={"limit": {"calls": 5, "renewal_period": "10 minutes", "key": "client"}}))
    a, b = rules_for(apart, "chat", "team-a")[0], rules_for(apart, "chat", "team-b")[0]
    assert (a.name, a.seconds, a.period) == ("endpoint_per_client", 600, "10 minutes")
    assert a.key != b.key


def test_a_client_override_replaces_only_the_fields_it_names():
    cfg = read_config(
        config(
            limits={
                "client": {"calls": 100, "renewal_period": "minute", "tokens_per_minute": 5000, "usd_per_day": 20},
                "clients": {"ci-bot": {"usd_per_day": 1, "tokens_per_minute": None}},
            }
        )
    )
    assert cfg.for_client("someone").usd_per_day == 20
    bot = cfg.for_client("ci-bot")
    assert (bot.calls.calls, bot.tokens_per_minute, bot.usd_per_day) == (100, None, 1.0)
    assert [r.name for r in rules_for(cfg, "chat", "ci-bot")] == ["client_calls", "client_usd_per_day"]
    assert [r.name for r in rules_for(cfg, "chat", "someone")] == [
        "client_calls",
        "client_tokens_per_minute",
        "client_usd_per_day",
    ]


def test_limits_endpoint_applies_to_endpoints_without_their_own_limit():
    cfg = read_config(
        {
            "endpoints": [dict(CHAT), dict(CHAT, name="other", limit={"calls": 2})],
            "limits": {"endpoint": {"calls": 50, "renewal_period": "hour"}},
        }
    )
    assert rules_for(cfg, "chat", "x")[0].limit == 50
    assert rules_for(cfg, "other", "x")[0].limit == 2
    assert read_config(config()).empty and rules_for(read_config(config()), "chat", "x") == []


@pytest.mark.parametrize(
    ("cfg", "where", "says"),
    [
        (config(chat={"limit": {"calls": 0}}), ("endpoints", 0, "limit", "calls"), "at least 1"),
        (
            config(chat={"limit": {"calls": 3, "renewal_period": "fortnight"}}),
            ("endpoints", 0, "limit", "renewal_period"),
            "is not a period",
        ),
        (config(chat={"limit": {"calls": 3, "key": "ip"}}), ("endpoints", 0, "limit", "key"), "use `client`"),
        (
            config(limits={"clients": {"bot": {"usd_per_day": -1}}}),
            ("limits", "clients", "bot", "usd_per_day"),
            "above 0",
        ),
        (
            config(limits={"client": {"renewal_period": "minute"}}),
            ("limits", "client", "renewal_period"),
            "without calls",
        ),
    ],
)
def test_a_wrong_limit_names_where_it_is_and_what_is_wrong(cfg, where, says):
    """(Unknown keys are preflight's: tests/unit/test_config_keys.py.)"""
    with pytest.raises(LimitsConfigError) as e:
        read_config(cfg)
    assert e.value.where == where
    assert says in str(e.value)


def test_a_rate_refusal_names_the_limit_and_says_when_to_retry():
    (rule,) = rules_for(read_config(config(chat={"limit": {"calls": 5, "key": "client"}})), "chat", "team-a")
    retry, body = refusal(rule, used=5, remaining_ms=12_300, now=NOON)
    assert retry == 13
    error = body["error"]
    assert error["type"] == "rate_limit_exceeded"
    assert error["message"] == (
        "client 'team-a' reached the limit of 5 requests per minute on endpoint 'chat' "
        "(endpoint_per_client); it resets at 2026-11-28T12:00:12Z, retry after 13 s"
    )
    assert error["limit"]["used"] == 5 and error["limit"]["resets_at"] == "2026-11-28T12:00:12Z"


def test_a_spent_budget_resets_at_utc_midnight():
    cfg = read_config(config(limits={"client": {"usd_per_day": 2.5}}))
    (rule,) = rules_for(cfg, "chat", "team-a")
    retry, body = refusal(rule, used=2.5000000001, remaining_ms=-1, now=NOON)
    assert retry == 12 * 3600
    assert body["error"]["type"] == "budget_exceeded"
    assert body["error"]["limit"]["resets_at"] == "2026-11-29T00:00:00Z"
    assert "2.5 USD per day (UTC)" in body["error"]["message"]
    assert limits.usd_key("team-a", NOON).endswith(":2026-11-28")


# ---------------------------------------------------------------- the middleware, with scripted verdicts


class ScriptedLimiter(Limiter):
    """A Limiter whose Redis answers are scripted: a verdict to return, or an exception to raise."""

    def __init__(self, cfg: dict, verdict=None, policy: str = "open") -> None:
        super().__init__(read_config(cfg), RedisLink("redis://127.0.0.1:1/0"), policy)
        self.verdict, self.checked = verdict, []

    async def check(self, rules, now):
        self.checked.append([r.name for r in rules])
        if isinstance(self.verdict, BaseException):
            raise self.verdict
        return self.verdict


LIMITED = config(chat={"limit": {"calls": 1}})


def test_an_admitted_request_reaches_the_app_with_its_body_intact():
    inner, limiter = Echo(), ScriptedLimiter(LIMITED)
    answer = request(
        Limits(inner, limiter),
        "/v1/chat/completions",
        {"model": "chat", "messages": []},
        headers={"X-Gateway-Client": "team-a"},
    )
    assert answer.status == 200
    assert limiter.checked == [["endpoint"]]
    assert inner.bodies == [b'{"model": "chat", "messages": []}']


def test_a_request_over_a_limit_is_a_429_with_retry_after_and_never_reaches_the_app():
    cfg = read_config(LIMITED)
    inner = Echo()
    limiter = ScriptedLimiter(LIMITED, verdict=(rules_for(cfg, "chat", "anonymous")[0], 1.0, 4000))
    answer = request(Limits(inner, limiter), "/gateway/chat/invocations", {"messages": []})
    assert answer.status == 429
    assert answer.headers["retry-after"] == "4"
    assert answer.json()["error"]["type"] == "rate_limit_exceeded"
    assert inner.scopes == []


class Unenforced(Listener):
    def __init__(self) -> None:
        self.policies: list[str] = []

    def limits_unenforced(self, policy: str) -> None:
        self.policies.append(policy)


def test_redis_down_serves_unlimited_and_says_so_when_open():
    inner, limiter = Echo(), ScriptedLimiter(LIMITED, verdict=ConnectionError("refused"))
    unenforced = Unenforced()
    limiter.events = Events([unenforced])
    answer = request(Limits(inner, limiter), "/gateway/chat/invocations", {"messages": []})
    assert answer.status == 200
    assert answer.headers["x-gateway-limits"] == "unenforced"
    assert not limiter.available()  # Redis is left alone for a moment after a failure
    again = request(Limits(inner, limiter), "/gateway/chat/invocations", {"messages": []})
    assert again.status == 200 and len(limiter.checked) == 1
    assert unenforced.policies == ["open", "open"]  # metrics count both (gateway_limits_unenforced_total)


def test_redis_down_refuses_with_a_503_when_closed():
    inner = Echo()
    limiter = ScriptedLimiter(LIMITED, verdict=TimeoutError(), policy="closed")
    answer = request(Limits(inner, limiter), "/gateway/chat/invocations", {"messages": []})
    assert answer.status == 503
    assert answer.headers["retry-after"] == "5"
    error = answer.json()["error"]
    assert error["type"] == "limits_unavailable" and "127.0.0.1:1" in error["message"]
    assert inner.scopes == []


def test_paths_that_are_not_invocations_are_never_limited():
    inner, limiter = Echo(), ScriptedLimiter(LIMITED, verdict=RuntimeError("must not be asked"))
    assert request(Limits(inner, limiter), "/health", method="GET").status == 200
    assert limiter.checked == []


def test_a_client_without_limits_of_its_own_costs_no_redis_call():
    cfg = config(limits={"clients": {"ci-bot": {"calls": 3}}})
    inner, limiter = Echo(), ScriptedLimiter(cfg)
    assert ClientLimit() == limiter.config.for_client("anyone")
    assert (
        request(
            Limits(inner, limiter),
            "/gateway/chat/invocations",
            {"messages": []},
            headers={"X-Gateway-Client": "anyone"},
        ).status
        == 200
    )
    assert limiter.checked == []
