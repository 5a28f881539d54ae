"""What the kit reports while it serves, and who listens: one interface, one registry per worker.

The parts that see something happen report it to the worker's `Events` registry, which create_app makes once
from the listeners the settings ask for (gateway_kit.app.parts) and hands to each part:

| event | reported by | listened to by |
| --- | --- | --- |
| `usage_recorded` | the usage recorder (gateway_kit.recording), after a request's last byte | the usage log (stdout and ledger), metrics, limits' token and dollar counters |
| `refusal_recorded` | recording.Refusals: a 401, 429 or 503 the kit answered itself | the usage log |
| `rate_limited`, `budget_rejected` | the limits middleware, refusing a request | metrics |
| `limits_unenforced` | the limiter (gateway_kit.limits), for each request whose limits Redis could not check | metrics |
| `fallback_served` | the fallback middleware (gateway_kit.resilience) | metrics |
| `circuit_changed` | a circuit breaker, on every change this worker sees | metrics |
| `upstream_called` | the provider client (gateway_kit.upstream), after each call | metrics |
| `cache_looked_up` | the response cache (gateway_kit.cache), after each lookup: a hit or a miss | metrics |

A listener subclasses `Listener` and overrides the events it wants; the registry calls it for those only. A
listener that raises is logged and the others still get the event: reporting never fails a request. An event
nobody listens to (with GATEWAY_METRICS=off, all but the two usage records) costs one call of a function that
does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway_kit.resilience import CircuitName, FallbackEvent
    from gateway_kit.usage import UsageRecord

log = logging.getLogger("gateway_kit.events")


class Listener:
    """Every event the kit reports, each doing nothing here: a listener overrides those it wants."""

    def usage_recorded(self, record: UsageRecord) -> None:
        """A request's usage record, made after its last byte was sent (streams: when the stream ended)."""

    def refusal_recorded(self, record: UsageRecord) -> None:
        """The usage record of a request the kit refused itself, before any endpoint ran (401, 429, 503)."""

    def rate_limited(self, limit: str, endpoint: str | None, client: str | None) -> None:
        """A request refused by a rate limit; `limit` is its name (client_calls, endpoint_calls ...)."""

    def budget_rejected(self, limit: str, endpoint: str | None, client: str | None) -> None:
        """A request refused because a dollar budget is spent; `limit` is its name (client_usd_per_day ...)."""

    def limits_unenforced(self, policy: str) -> None:
        """A request whose limits could not be checked (or its usage not counted) because Redis did not answer;
        `policy` is GATEWAY_LIMITS_ON_REDIS_DOWN (open: served unlimited, closed: refused with 503)."""

    def fallback_served(self, event: FallbackEvent) -> None:
        """A request left its endpoint for the fallback chain: who served it (None: nobody) and why."""

    def circuit_changed(self, name: CircuitName, old: str, new: str) -> None:
        """A provider model's circuit breaker changed state (closed, open, half_open), as this worker sees it."""

    def upstream_called(self, base_url: str, status: str, seconds: float) -> None:
        """A provider call ended: its base URL, the HTTP status (or "error": no answer) and how long it took."""

    def cache_looked_up(self, endpoint: str, client: str | None, result: str) -> None:
        """The response cache looked a request's answer up in Redis: `result` is "hit" or "miss"."""


EVENTS = tuple(name for name in vars(Listener) if not name.startswith("_"))


class Events(Listener):
    """The worker's registry: each event goes to every listener that overrides it, in the order given."""

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self.listeners = tuple(listeners)
        heard = set()
        for event in EVENTS:
            handlers = tuple(
                getattr(listener, event)
                for listener in self.listeners
                if getattr(type(listener), event) is not getattr(Listener, event)
            )
            setattr(self, event, _dispatch(event, handlers))
            if handlers:
                heard.add(event)
        self.heard = frozenset(heard)

    def listens(self, event: str) -> bool:
        """Whether any listener wants `event` (a part whose only job is reporting it can stay out)."""
        return event in self.heard


# A dispatcher takes its event's arguments as they are: with *args, a call costs about 1.5x as much (30 to 60 ns
# more per event, measured side by side). Every event has one argument or three.
def _ignore_1(a) -> None:
    """An event of one argument nobody listens to."""


def _ignore_3(a, b, c) -> None:
    """An event of three arguments nobody listens to."""


def _dispatch(event: str, handlers: tuple[Callable, ...]) -> Callable:
    """A function that calls each handler with the event's arguments; one that raises is logged (reporting
    must never fail a request) and the next still gets the event."""
    arity = getattr(Listener, event).__code__.co_argcount - 1  # without self

    def failed(handler: Callable) -> None:
        log.exception("%s listener %r failed", event, handler.__self__)

    if arity == 1:
        if not handlers:
            return _ignore_1

        def dispatch(a) -> None:
            for handler in handlers:
                try:
                    handler(a)
                except Exception:  # a listener's bug: logged, and the request goes on
                    failed(handler)

        return dispatch
    if arity == 3:
        if not handlers:
            return _ignore_3

        def dispatch(a, b, c) -> None:
            for handler in handlers:
                try:
                    handler(a, b, c)
                except Exception:  # a listener's bug: logged, and the request goes on
                    failed(handler)

        return dispatch
    raise TypeError(f"events.Listener.{event} takes {arity} arguments: give _dispatch a shape for {arity}")


NOBODY = Events()  # no listeners: what a part reports to when nobody wired it (tests, benchmarks)
