"""The events registry (gateway_kit.events): each event reaches the listeners that want it, in order; one that
raises is logged and neither keeps the event from the others nor fails the request that reported it."""

from __future__ import annotations

import logging

from gateway_kit.events import EVENTS, NOBODY, Events, Listener
from gateway_kit.pricing import Pricer
from gateway_kit.recording import UsageRecorder, endpoint_infos

from .asgi import Echo, request


class Heard(Listener):
    """Keeps every usage record and provider call it hears."""

    def __init__(self) -> None:
        self.heard: list[tuple] = []

    def usage_recorded(self, record) -> None:
        self.heard.append(("usage", record))

    def upstream_called(self, base_url: str, status: str, seconds: float) -> None:
        self.heard.append(("upstream", base_url, status, seconds))


class Broken(Listener):
    def usage_recorded(self, record) -> None:
        raise RuntimeError("a listener's bug")


def test_an_event_reaches_the_listeners_that_want_it_in_order():
    first, second = Heard(), Heard()
    events = Events([first, Listener(), second])
    events.upstream_called("https://api.openai.com/v1", "200", 0.5)
    events.fallback_served(None)  # nobody listens: nothing happens
    assert first.heard == second.heard == [("upstream", "https://api.openai.com/v1", "200", 0.5)]
    assert events.listens("upstream_called") and events.listens("usage_recorded")
    assert not events.listens("fallback_served") and not events.listens("circuit_changed")


def test_without_listeners_every_event_is_ignored():
    assert not any(NOBODY.listens(event) for event in EVENTS)
    assert set(EVENTS) >= {"usage_recorded", "refusal_recorded", "circuit_changed", "upstream_called"}


def test_a_listener_that_raises_is_logged_and_the_request_and_the_other_listeners_go_on(caplog):
    heard = Heard()
    events = Events([Broken(), heard])
    config = {"endpoints": [{"name": "chat", "model": {"provider": "openai", "name": "gpt-4o-mini"}}]}
    recorder = UsageRecorder(Echo(), endpoint_infos(config), "r1", Pricer(), events)
    with caplog.at_level(logging.ERROR, logger="gateway_kit.events"):
        answer = request(recorder, "/gateway/chat/invocations", {"messages": []})
    assert answer.status == 200 and answer.json() == {"ok": True}
    (_, record) = heard.heard[0]
    assert (record.endpoint, record.status, record.route) == ("chat", 200, "/gateway/chat/invocations")
    assert "usage_recorded listener" in caplog.text and "a listener's bug" in caplog.text
