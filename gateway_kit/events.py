"""What the kit reports while it serves, and who listens: one interface, one registry per worker.

The parts that see something happen report it to the worker's `Events` registry, which create_app makes once
from the listeners the settings ask for (gateway_kit.app.parts) and hands to each part:

| event | reported by | listened to by |
| --- | --- | --- |
| `usage_recorded` | the usage recorder (gateway_kit.recording), after a request's last byte | the usage log (stdout and ledger), metrics, limits' token and dollar counters |
| `refusal_recorded` | recording.Refusals: a 401, 429 or 503 the kit answered itself | the usage log |
| `rate_limited`, `budget_rejected` | the limits middleware, refusing a request | metrics |
| `fallback_served` | the fallback middleware (gateway_kit.resilience) | metrics |
| `circuit_changed` | a circuit breaker, on every change this worker sees | metrics |
| `upstream_called` | the provider client (gateway_kit.upstream), after each call | metrics |

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

    def fallback_served(self, event: FallbackEvent) -> None:
        """A request left its endpoint for the fallback chain: who served it (None: nobody) and why."""

    def circuit_changed(self, name: CircuitName, old: str, new: str) -> None:
        """A provider model's circuit breaker changed state (closed, open, half_open), as this worker sees it."""

    def upstream_called(self, base_url: str, status: str, seconds: float) -> None:
        """A provider call ended: its base URL, the HTTP status (or "error": no answer) and how long it took."""


EVENTS = tuple(name for name in vars(Listener) if not name.startswith("_"))


class Events(Listener):
    """The worker's registry: each event goes to every listener that overrides it, in the order given."""

    def __init__(self, listeners: Iterable[Listener] = ()) -> None:
        self.listeners = tuple(listeners)
        for event in EVENTS:
            handlers = tuple(
                getattr(listener, event)
                for listener in self.listeners
                if getattr(type(listener), event) is not getattr(Listener, event)
            )
            setattr(self, event, _dispatch(event, handlers) if handlers else _ignore)

    def listens(self, event: str) -> bool:
        """Whether any listener wants `event` (a part whose only job is reporting it can stay out)."""
        return getattr(self, event) is not _ignore


def _ignore(*args) -> None:
    """An event nobody listens to."""


def _dispatch(event: str, handlers: tuple[Callable, ...]) -> Callable:
    def dispatch(*args) -> None:
        for handler in handlers:
            try:
                handler(*args)
            except Exception:  # reporting must never fail a request, nor keep the event from the others
                log.exception("%s listener %r failed", event, handler.__self__)

    return dispatch


NOBODY = Events()  # no listeners: what a part reports to when nobody wired it (tests, benchmarks)
