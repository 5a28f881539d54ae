"""When a provider fails: timeouts per endpoint, retries, a circuit breaker per provider model, fallbacks.

Three pieces, documented for users in docs/resilience.md:

- `Policy`: what config.yaml and the environment say for one endpoint (timeouts, retries, fallback chain).
- the circuit breaker: one per provider model (`CircuitName`: the provider's base URL and the payload's model,
  or the Azure deployment). K failed calls in a row (GATEWAY_CIRCUIT_FAILURES, default 5; a failure is a 5xx
  but 501/505, a timeout, a dropped connection or an unreadable answer, never a 4xx) open it: calls fail fast with
  CircuitOpenError for S seconds (GATEWAY_CIRCUIT_RESET, default 60); then one probe call is let through,
  which closes it again or reopens it. `Breaker` is what the upstream client asks: with Redis
  (GATEWAY_REDIS_URL) its state is shared by every worker and replica (keys under CIRCUIT_PREFIX, read at
  most once per SHARED_READ_S per worker); without Redis, or while Redis does not answer, the worker's own
  `Circuit` decides.
- `Fallback`: ASGI middleware between UsageRecorder and MLflow's app. It names the endpoint of each request
  (path, or the body's "model" on /v1/*) in the contextvar CURRENT, which gateway_kit.upstream reads for the
  endpoint's timeouts and retries. It holds the response start until the first body bytes, so that a failure
  before the first byte (a stream too, whose 200 MLflow sends before calling the provider) becomes a clear
  JSON error, or is answered by the next endpoint of the fallback chain. Once a byte reached the client
  nothing is retried; a stream cut later ends with an SSE error event.

The usage record says who served and why through scope["state"] (gateway_kit.request's SERVED_BY and
FALLBACK_REASON). Reported to the worker's events (gateway_kit.events; metrics listens): fallback_served, a
FallbackEvent per request served by (or failed over to) a fallback; circuit_changed, (CircuitName, old state,
new state) on every change a worker sees.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from gateway_kit import launcher
from gateway_kit import settings as _settings
from gateway_kit.events import NOBODY, Events
from gateway_kit.request import (
    BODY,
    FALLBACK_REASON,
    JSON,
    REQUEST_ID,
    SERVED_BY,
    Route,
    error_body,
    replay_body,
    request_body,
    request_endpoint,
    request_json,
    route_of,
    state_of,
    upstream_failure,
)
from gateway_kit.secrets import redact
from gateway_kit.settings import Settings

log = logging.getLogger("gateway_kit.resilience")

TIMEOUT_KINDS = ("connect", "first_byte", "total")
FALLBACK_KEYS = ("to", "after_s", "race")
MAX_RETRIES = 10
# 501 Not Implemented and 505 HTTP Version Not Supported say this request can never succeed there, not that
# the provider is failing now: see retryable().
NOT_TRANSIENT = frozenset({501, 505})


# ---------------------------------------------------------------- per-endpoint policy


@dataclass(frozen=True)
class Policy:
    """How one endpoint's provider calls are made and what happens when they fail."""

    connect: float
    first_byte: float
    total: float
    retries: int
    backoff: float
    max_wait: float
    fallback: tuple[str, ...] = ()  # endpoints tried in order when this one fails
    after_s: float | None = None  # no first byte after this long: go to (race: also start) the next
    race: bool = False

    @classmethod
    def default(cls, s: Settings) -> Policy:
        """The kit's defaults (GATEWAY_UPSTREAM_*): for an endpoint config.yaml sets nothing for."""
        return cls(
            s.upstream_connect_timeout,
            min(s.upstream_first_byte_timeout, s.upstream_total_timeout),
            s.upstream_total_timeout,
            s.upstream_retries,
            s.upstream_backoff,
            s.upstream_retry_max_wait,
        )


def policies(config: Mapping[str, Any], settings: Settings) -> dict[str, Policy]:
    """{endpoint name: Policy} for the endpoints of an active (checked) config.

    A fallback target that is not served (preflight dropped it: no key) is left out, with a warning."""
    default = Policy.default(settings)
    names = {e["name"] for e in config.get("endpoints") or []}
    out = {}
    for endpoint in config.get("endpoints") or []:
        timeouts = endpoint.get("timeouts") or {}
        total = float(timeouts.get("total", default.total))
        fallback = endpoint.get("fallback") or {}
        chain = fallback.get("to") or []
        chain = [chain] if isinstance(chain, str) else list(chain)
        missing = [n for n in chain if n not in names]
        if missing:
            log.warning(
                "endpoint %r: fallback %s not served (disabled at start); using %s",
                endpoint["name"],
                ", ".join(map(repr, missing)),
                ", ".join(n for n in chain if n in names) or "none",
            )
        out[endpoint["name"]] = replace(
            default,
            connect=float(timeouts.get("connect", default.connect)),
            first_byte=min(float(timeouts.get("first_byte", default.first_byte)), total),
            total=total,
            retries=int(endpoint.get("retries", default.retries)),
            fallback=tuple(n for n in chain if n in names),
            after_s=fallback.get("after_s"),
            race=bool(fallback.get("race", False)),
        )
    return out


def _is_seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def config_problems(config: Mapping[str, Any]) -> list[tuple[tuple, str]]:
    """(path in the config, what is wrong) for every bad `timeouts`, `retries` or `fallback` value (an
    unknown key in them is preflight.unknown_keys's to report, from TIMEOUT_KINDS and FALLBACK_KEYS).

    preflight.validate() turns the first into a `config.yaml:LINE: ...` error."""
    endpoints = [e for e in config.get("endpoints") or [] if isinstance(e, dict)]
    types = {e.get("name"): e.get("endpoint_type") for e in endpoints}
    problems: list[tuple[tuple, str]] = []
    for index, endpoint in enumerate(config.get("endpoints") or []):
        if not isinstance(endpoint, dict):
            continue
        at = ("endpoints", index)
        name = endpoint.get("name")
        timeouts = endpoint.get("timeouts")
        if timeouts is not None:
            if not isinstance(timeouts, dict):
                problems.append(
                    (
                        (*at, "timeouts"),
                        "timeouts must be a mapping of seconds, for example {connect: 5, first_byte: 60, total: 300}",
                    )
                )
            else:
                for kind, value in timeouts.items():
                    if kind in TIMEOUT_KINDS and not _is_seconds(value):  # other keys: preflight.unknown_keys
                        problems.append(
                            ((*at, "timeouts", kind), f"timeouts.{kind}: {value!r} is not a number of seconds above 0")
                        )
                first, total = timeouts.get("first_byte"), timeouts.get("total")
                if _is_seconds(first) and _is_seconds(total) and first > total:
                    problems.append(
                        (
                            (*at, "timeouts", "first_byte"),
                            f"timeouts.first_byte ({first}) is "
                            f"longer than timeouts.total ({total}); it can never apply",
                        )
                    )
        retries = endpoint.get("retries")
        if retries is not None and (
            isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES
        ):
            problems.append(((*at, "retries"), f"retries: {retries!r} is not a whole number from 0 to {MAX_RETRIES}"))
        fallback = endpoint.get("fallback")
        if fallback is not None:
            problems.extend(_fallback_problems(fallback, (*at, "fallback"), name, endpoint, types))
    return problems


def _fallback_problems(fallback: Any, at: tuple, name: Any, endpoint: dict, types: dict) -> list:
    example = "for example {to: [azure-chat], after_s: 1.5, race: false}"
    if not isinstance(fallback, dict):
        return [(at, f"fallback must be a mapping, {example}")]
    problems = []  # an unknown key: preflight.unknown_keys
    targets = fallback.get("to")
    targets = [targets] if isinstance(targets, str) else targets
    if not isinstance(targets, list) or not targets:
        problems.append(
            (
                (*at, "to") if "to" in fallback else at,
                f"fallback.to must name one endpoint or a list of them, {example}",
            )
        )
        targets = []
    for i, target in enumerate(targets):
        where = (*at, "to", i) if isinstance(fallback.get("to"), list) else (*at, "to")
        if target == name:
            problems.append((where, f"fallback.to: {target!r} is this endpoint itself"))
        elif target not in types:
            known = ", ".join(str(n) for n in types if n != name)
            problems.append((where, f"fallback.to: no endpoint named {target!r} (endpoints: {known})"))
        elif types[target] != endpoint.get("endpoint_type"):
            problems.append(
                (
                    where,
                    f"fallback.to: {target!r} is {types[target]}, not "
                    f"{endpoint.get('endpoint_type')} like this endpoint",
                )
            )
        elif targets.index(target) != i:
            problems.append((where, f"fallback.to: {target!r} is listed twice"))
    after = fallback.get("after_s")
    if after is not None and not _is_seconds(after):
        problems.append(((*at, "after_s"), f"fallback.after_s: {after!r} is not a number of seconds above 0"))
    race = fallback.get("race")
    if race is not None and not isinstance(race, bool):
        problems.append(((*at, "race"), f"fallback.race: {race!r} is not true or false"))
    elif race and after is None:
        problems.append(
            (
                (*at, "race"),
                "fallback.race needs fallback.after_s: how long the primary runs alone before the fallback starts too",
            )
        )
    return problems


# ---------------------------------------------------------------- errors the upstream client raises


class UpstreamTimeout(asyncio.TimeoutError):
    """A provider call ran over one of its endpoint's timeouts."""

    def __init__(self, kind: str, seconds: float, endpoint: str | None) -> None:
        self.kind, self.seconds, self.endpoint = kind, seconds, endpoint
        what = {
            "connect": "could not be connected to",
            "first_byte": "sent nothing",
            "total": "did not finish its answer",
        }[kind]
        where = f"endpoint {endpoint!r}: " if endpoint else ""
        super().__init__(f"{where}the provider {what} within {seconds:g} s (timeouts.{kind})")


class CircuitOpenError(Exception):
    """The circuit of a provider's model is open: the call is not made."""

    def __init__(self, name: CircuitName, retry_in: float, failures: int) -> None:
        self.name, self.retry_in = name, max(retry_in, 0.0)
        model = f" for model {name.model}" if name.model else ""
        super().__init__(
            f"the provider {name.url} failed {failures} times in a row{model}; the gateway stops calling it "
            f"and tries again in {math.ceil(self.retry_in)} s (circuit breaker)"
        )


# ---------------------------------------------------------------- circuit breaker

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
CIRCUIT_PREFIX = "gateway:circuit:"  # every Redis key of the shared breakers starts with it
SHARED_READ_S = 1.0  # a worker trusts what it read of a shared breaker for at most this long
FAILURES_KEPT_S = 600.0  # a shared failure count with no new failure for this long (or 2 x reset) is dropped
# What Breaker.before_call hands to Breaker.record: who decided (Redis or this worker) and whether the call
# is the half-open probe.
SHARED, SHARED_PROBE, LOCAL, LOCAL_PROBE = 0, 1, 2, 3


@dataclass(frozen=True)
class CircuitName:
    """What one breaker stands for: a provider's base URL (no credentials, no query) and the model called."""

    url: str
    model: str | None = None

    def __str__(self) -> str:
        return f"{self.url} model {self.model}" if self.model else self.url

    @property
    def key(self) -> str:
        """The start of its Redis keys: gateway:circuit:<url>|<model>:"""
        return f"{CIRCUIT_PREFIX}{self.url}|{self.model or ''}:"


def circuit_name(base_url: str, payload: Mapping[str, Any] | None = None) -> CircuitName:
    """The breaker of a provider call: its base URL and the payload's "model" (OpenAI, Anthropic, ...), or for
    Azure OpenAI, whose payload names none, the deployment in the URL's path."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    path = parts.path.rstrip("/")
    model = payload.get("model") if payload else None
    if not isinstance(model, str) or not model:
        segments = path.split("/")
        model = segments[segments.index("deployments") + 1] if "deployments" in segments[:-1] else None
    return CircuitName(f"{parts.scheme}://{netloc}{path}", model)


def retryable(status: int) -> bool:
    """Whether an answer with this status is a passing failure, worth another try: a 429 (rate limit) or a 5xx
    but 501 and 505 (NOT_TRANSIENT). The one definition the kit uses: the upstream client retries such an
    answer (retry_wait), the Fallback middleware then hands the request to the next endpoint of the chain,
    and for a 5xx the circuit breaker counts a failure (outcome). Any other answer is final and reaches the
    client as it is: a 4xx is the request's fault, and a 501 or 505 will be the same on every try of that
    endpoint (MLflow answers 501 itself for an operation a provider does not have), so a retry only delays it
    and a fallback would hide a configuration gap behind a doomed first call on every request."""
    return (status == 429 or status >= 500) and status not in NOT_TRANSIENT


def outcome(status: int) -> bool | None:
    """What a provider's answer says of its health: False for a retryable 5xx; None (neither) for a 4xx (a bad
    request or, for 429, a rate limit or quota of the key) and for 501/505 (it answered, deliberately);
    True otherwise."""
    if status >= 400:
        return False if status >= 500 and retryable(status) else None
    return True


class Circuit:
    """One breaker in this worker's memory. Not thread-safe: used from the worker's event loop only.

    K failed calls in a row open it: calls fail fast with CircuitOpenError for `reset_s`; then one probe call
    goes through, which closes it again or reopens it. Every change goes to `events` (circuit_changed)."""

    __slots__ = ("name", "threshold", "reset_s", "state", "failures", "opened_at", "probing", "clock", "events")

    def __init__(
        self,
        name: CircuitName,
        threshold: int,
        reset_s: float,
        clock: Callable[[], float] = time.monotonic,
        events: Events = NOBODY,
    ) -> None:
        self.name, self.threshold, self.reset_s, self.clock, self.events = name, threshold, reset_s, clock, events
        self.state, self.failures, self.opened_at, self.probing = CLOSED, 0, 0.0, False

    def before_call(self) -> bool:
        """Allow a call (True when it is the half-open probe) or raise CircuitOpenError."""
        if self.state == CLOSED or self.threshold <= 0:
            return False
        waited = self.clock() - self.opened_at
        if self.state == OPEN and waited >= self.reset_s:
            self._move(HALF_OPEN)
        if self.state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        raise CircuitOpenError(self.name, self.reset_s - waited, self.failures)

    def record(self, ok: bool | None, probe: bool) -> None:
        """The call's outcome: True success, False failure, None neither (cancelled, a 4xx)."""
        if probe:
            self.probing = False
        if ok is None or self.threshold <= 0:
            return
        if ok:
            self.failures = 0
            if self.state != CLOSED:
                self._move(CLOSED)
            return
        self.failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.failures >= self.threshold):
            self.opened_at = self.clock()
            self._move(OPEN)

    @property
    def dirty(self) -> bool:
        return self.failures > 0 or self.state != CLOSED or self.probing

    def reset(self) -> None:
        """Forget everything: closed, no failures."""
        self.failures, self.probing = 0, False
        if self.state != CLOSED:
            self._move(CLOSED)

    def _move(self, state: str) -> None:
        old, self.state = self.state, state
        if state == OPEN:
            log.warning(
                "provider %s: circuit open after %d failure(s) in a row (this worker); calls fail fast for %g s",
                self.name,
                self.failures,
                self.reset_s,
            )
        elif state == CLOSED:
            log.info("provider %s: circuit closed (this worker)", self.name)
        self.events.circuit_changed(self.name, old, state)


# KEYS: open, failures. Returns {the open key's remaining ms (-2: none), failures in a row}.
READ_SCRIPT = """
return {redis.call('PTTL', KEYS[1]), tonumber(redis.call('GET', KEYS[2]) or '0')}
"""

# A failed call. KEYS: open, failures, probe. ARGV: threshold, open ms, ms the count is kept, 1 for the probe.
# Returns {failures in a row, the open key's remaining ms, 1 when this failure opened the circuit}.
FAIL_SCRIPT = """
local n = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local opened = 0
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[3])
  redis.call('SET', KEYS[1], n, 'PX', ARGV[2])
  opened = 1
elseif n >= tonumber(ARGV[1]) and redis.call('SET', KEYS[1], n, 'PX', ARGV[2], 'NX') then
  opened = 1
end
return {n, redis.call('PTTL', KEYS[1]), opened}
"""

_FAILED = object()  # what Breaker._redis answers when Redis does not
_last_down_log = -math.inf


class Breaker:
    """One provider model's breaker as the upstream client uses it: `await before_call()`, `await record()`.

    With Redis (GATEWAY_REDIS_URL) the state is shared by every worker of every replica, under the keys
    `name.key` + open / failures / probe: a failure INCRs the count (dropped FAILURES_KEPT_S after the last one),
    the one that reaches the threshold sets `open` with an expiry of reset_s, and once `open` is gone while the
    count still stands, one call in the whole deployment takes the probe (SET NX). A worker reads the state at
    most once per SHARED_READ_S and decides from what it read meanwhile, so a successful call costs no Redis
    round trip (a success clears the count only when this worker knows it is not zero).
    Without Redis, and while Redis does not answer, this worker's own Circuit decides; its state is dropped as
    soon as Redis answers again. Every change this worker sees goes to `events` (circuit_changed)."""

    __slots__ = (
        "name",
        "threshold",
        "reset_s",
        "redis",
        "clock",
        "events",
        "local",
        "keys",
        "state",
        "failures",
        "open_until",
        "read_at",
        "probe_busy",
        "reading",
    )

    def __init__(
        self,
        name: CircuitName,
        threshold: int,
        reset_s: float,
        redis=None,
        clock: Callable[[], float] = time.monotonic,
        events: Events = NOBODY,
    ) -> None:
        self.name, self.threshold, self.reset_s, self.redis, self.clock = name, threshold, reset_s, redis, clock
        self.events = events
        self.local = Circuit(name, threshold, reset_s, clock, events)
        self.keys = (name.key + "open", name.key + "failures", name.key + "probe")
        self.state, self.failures, self.open_until, self.read_at = CLOSED, 0, 0.0, -math.inf
        self.probe_busy = False
        self.reading: asyncio.Future | None = None

    async def before_call(self) -> int:
        """SHARED or LOCAL: call; SHARED_PROBE or LOCAL_PROBE: call, as the half-open probe.
        Raises CircuitOpenError when the circuit is open."""
        if self.redis is None or self.threshold <= 0:
            return LOCAL_PROBE if self.local.before_call() else LOCAL
        now = self.clock()
        if now - self.read_at >= SHARED_READ_S and not (self.redis.available() and await self._read()):
            return LOCAL_PROBE if self.local.before_call() else LOCAL
        if self.state == CLOSED:
            return SHARED
        if self.state == OPEN and now < self.open_until:
            raise CircuitOpenError(self.name, self.open_until - now, self.failures)
        if not self.probe_busy:  # half-open: one call in the whole deployment is the probe
            took = await self._redis(lambda r: r.client().set(self.keys[2], b"1", px=self._ms(self.reset_s), nx=True))
            if took is _FAILED:
                return LOCAL_PROBE if self.local.before_call() else LOCAL
            self._see(HALF_OPEN)
            self.probe_busy = True  # this worker asks no more until its next read
            if took:
                return SHARED_PROBE
        raise CircuitOpenError(self.name, max(self.read_at + SHARED_READ_S - now, 1.0), self.failures)

    async def record(self, ok: bool | None, ticket: int) -> None:
        """The call's outcome (True success, False failure, None neither) with before_call's ticket."""
        if ticket >= LOCAL:
            self.local.record(ok, ticket == LOCAL_PROBE)
            return
        if self.threshold <= 0:
            return
        probe = ticket == SHARED_PROBE
        if ok is None:
            if probe:  # let another call probe
                await self._redis(lambda r: r.client().delete(self.keys[2]))
            return
        if ok:
            if probe:
                if await self._redis(lambda r: r.client().delete(*self.keys)) is not _FAILED:
                    log.info("provider %s: circuit closed for every worker, the probe call succeeded", self.name)
                self.failures = 0
                self._see(CLOSED)
            elif self.failures:
                await self._redis(lambda r: r.client().delete(self.keys[1]))
                self.failures = 0
            return
        now = self.clock()
        kept = max(FAILURES_KEPT_S, 2 * self.reset_s)
        args = [self.threshold, self._ms(self.reset_s), self._ms(kept), 1 if probe else 0]
        found = await self._redis(lambda r: r.script(FAIL_SCRIPT)(keys=self.keys, args=args))
        if found is _FAILED:
            self.local.record(False, False)
            return
        failures, remaining, opened = (int(v) for v in found)
        if opened:
            log.warning(
                "provider %s: circuit open for every worker after %d failure(s) in a row; calls fail fast for %g s",
                self.name,
                failures,
                self.reset_s,
            )
        self._learn(now, failures, remaining)

    # ---- Redis
    async def _read(self) -> bool:
        """Read the shared state (one read at a time per worker); False when Redis does not answer."""
        if self.reading is None:
            self.reading = asyncio.ensure_future(self._read_now())
            self.reading.add_done_callback(self._read_done)
        return await asyncio.shield(self.reading)

    def _read_done(self, _future) -> None:
        self.reading = None

    async def _read_now(self) -> bool:
        now = self.clock()  # what is read is as old as the question, not the answer
        found = await self._redis(lambda r: r.script(READ_SCRIPT)(keys=self.keys[:2]))
        if found is _FAILED:
            return False
        remaining, failures = (int(v) for v in found)
        self._learn(now, failures, remaining)
        return True

    async def _redis(self, command: Callable):
        """command(link)'s answer, or _FAILED when Redis is down or does not answer."""
        redis = self.redis
        if not redis.available():
            return _FAILED
        try:
            async with asyncio.timeout(redis.timeout * 3):
                return await command(redis)
        except Exception as e:  # noqa: BLE001 - any Redis trouble: this worker's own breaker decides
            redis.failed()
            global _last_down_log
            if self.clock() - _last_down_log >= 10:
                _last_down_log = self.clock()
                log.error(
                    "circuit breakers: Redis at %s does not answer (%s) — each worker decides with its own "
                    "breakers until it does; check Redis: %s",
                    redis.where,
                    type(e).__name__,
                    launcher.current().redis_check,
                )
            return _FAILED

    def _learn(self, now: float, failures: int, remaining_ms: int) -> None:
        self.read_at, self.failures, self.probe_busy = now, failures, False
        if remaining_ms > 0:
            self.open_until = now + remaining_ms / 1000
            self._see(OPEN)
        else:
            self._see(HALF_OPEN if failures >= self.threshold else CLOSED)
        if self.local.dirty:  # Redis answers: what this worker decided alone meanwhile goes
            self.local.reset()

    def _see(self, state: str) -> None:
        if state != self.state:
            old, self.state = self.state, state
            self.events.circuit_changed(self.name, old, state)

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))


_breakers: dict[tuple[str, str | None], Breaker] = {}  # by base URL as MLflow passes it, and model (this worker)


def settings() -> Settings:
    """This process's settings (gateway_kit.settings.current): the kit's timeouts, retries and breaker."""
    return _settings.current()


def circuit_for(base_url: str, payload: Mapping[str, Any] | None = None, events: Events = NOBODY) -> Breaker:
    """This worker's breaker for a provider call (base URL and payload as MLflow passes them); a new one reports
    its changes to `events`."""
    model = payload.get("model") if payload else None
    model = model if isinstance(model, str) else None
    breaker = _breakers.get((base_url, model))
    if breaker is None:
        from gateway_kit.shared_redis import link_for

        name = circuit_name(base_url, payload)
        breaker = next((b for b in _breakers.values() if b.name == name), None)
        if breaker is None:
            s = settings()
            breaker = Breaker(name, s.circuit_failures, s.circuit_reset, link_for(s), events=events)
        _breakers[base_url, model] = breaker
    return breaker


# ---------------------------------------------------------------- retries


def retry_wait(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    retry: int,
    policy: Policy,
    remaining: float,
    *,
    clock: Callable[[], float] = time.time,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float | None:
    """Seconds to wait before retrying an answer with this status, or None: do not retry.

    Retry-After (seconds or an HTTP date) or retry-after-ms is honoured when it is at most policy.max_wait;
    a longer one is passed on at once, as is a 429 for an exhausted quota. Otherwise full jitter:
    random between 0 and backoff * 2^retry, capped by max_wait. Never past the total timeout."""
    if not retryable(status) or retry >= policy.retries:
        return None
    if status == 429 and b"insufficient_quota" in body:
        return None
    asked = _retry_after(headers, clock)
    if asked is not None:
        if asked > policy.max_wait:
            return None
        wait = asked
    else:
        wait = uniform(0, min(policy.max_wait, policy.backoff * 2**retry))
    return wait if wait < remaining - 0.05 else None


def _retry_after(headers: Mapping[str, str], clock: Callable[[], float]) -> float | None:
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - clock(), 0.0)
    except (TypeError, ValueError, OverflowError):
        return None


# ---------------------------------------------------------------- the request's endpoint, for upstream.py


@dataclass
class Attempt:
    """One try of one endpoint for one request: what gateway_kit.upstream reads and reports."""

    endpoint: str | None
    policy: Policy
    failure: str | None = None  # why the provider call failed: http_500, timeout_first_byte, unreachable ...


CURRENT: ContextVar[Attempt | None] = ContextVar("gateway_kit_attempt", default=None)


# ---------------------------------------------------------------- the fallback middleware


@dataclass(frozen=True)
class FallbackEvent:
    request_id: str | None
    endpoint: str  # what the client asked for
    served_by: str | None  # the endpoint that answered, None when every one failed
    reason: str  # why the primary was left: http_500, timeout_first_byte, no_answer_in_1.5s, circuit_open ...
    tried: tuple[str, ...]  # every endpoint started, in order


def _error(status: int, kind: str, message: str, headers: tuple = ()) -> tuple[int, list, bytes]:
    # A provider's message can repeat the key it was sent ("Incorrect API key provided: sk-..."): redacted.
    body = json.dumps(error_body(kind, redact(message)), separators=(",", ":")).encode()
    return status, [(b"content-type", b"application/json"), *headers], body


def error_for(exc: BaseException) -> tuple[str, tuple[int, list, bytes]]:
    """(failure reason, JSON error response) for an exception a provider call ended with
    (gateway_kit.request.upstream_failure: the table every handler answers from)."""
    failure = upstream_failure(exc)
    headers = tuple((k.encode(), v.encode()) for k, v in failure.headers.items())
    return failure.reason, _error(failure.status, failure.kind, failure.message, headers)


class _Try:
    """One endpoint's run for a request: holds the response until its first body bytes, then commits it."""

    def __init__(self, name: str, policy: Policy, scope: dict, receive, send, gate: Callable[[_Try], bool]):
        self.name, self.scope, self.receive, self.client_send, self.gate = name, scope, receive, send, gate
        self.attempt = Attempt(name, policy)
        self.start: dict | None = None
        self.held: list[bytes] = []
        self.state = "pending"  # -> committed | failed
        self.reason: str | None = None
        self.response: tuple[int, list, bytes] | None = None  # the error to answer if nothing better comes
        self.decided = asyncio.Event()
        self.task: asyncio.Task | None = None

    def fail(self, reason: str, response: tuple[int, list, bytes]) -> None:
        if self.state == "pending":
            self.state, self.reason, self.response = "failed", self.attempt.failure or reason, response
            self.decided.set()

    @property
    def retryable(self) -> bool:
        return self.state == "failed" and self.response is not None and retryable(self.response[0])

    async def send(self, message: dict) -> None:
        if self.state == "committed":
            return await self.client_send(message)
        if self.state == "failed":
            return  # a failed try's late messages go nowhere
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            return await self.client_send(message)
        status, body, more = self.start["status"], message.get("body", b""), message.get("more_body", False)
        if retryable(status):  # an error answer: keep it whole, answer it only if no fallback does better
            self.held.append(body)
            if not more:
                headers = list(self.start.get("headers", ()))
                self.fail(f"http_{status}", (status, headers, b"".join(self.held)))
            return
        if not body and more:
            return
        if not body and self._is_stream():  # a stream that ended before its first event
            self.fail(
                "empty_stream", _error(502, "upstream_bad_response", "the provider's stream ended before any answer")
            )
            return
        if not self.gate(self):
            raise asyncio.CancelledError  # another try has answered first
        self.state = "committed"
        self.decided.set()
        await self.client_send(self.start)
        await self.client_send(message)

    def _is_stream(self) -> bool:
        return any(
            k == b"content-type" and v.startswith(b"text/event-stream")
            for k, v in (self.start or {}).get("headers", ())
        )

    async def run(self, app) -> None:
        """Run the app for this try (its own task when several may run); raises only CancelledError."""
        CURRENT.set(self.attempt)
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            if self.state == "pending":
                self.fail("cancelled", _error(504, "upstream_timeout", "the provider did not answer in time"))
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes an answer or a fallback
            if self.state == "committed":
                await self._cut(e)
            else:
                reason, response = error_for(e)
                self.fail(reason, response)
        finally:
            if self.state == "pending":
                self.fail("no_response", _error(502, "upstream_error", "the gateway produced no answer"))

    async def _cut(self, exc: Exception) -> None:
        """The answer broke after bytes went out: end a stream with an error event, else re-raise."""
        if not self._is_stream():
            raise exc
        reason, (_, _, body) = error_for(exc)
        log.warning(
            "endpoint %r: the provider's stream broke after it started (%s); ended with an error event",
            self.name,
            reason,
        )
        try:
            await self.client_send(
                {"type": "http.response.body", "body": b"data: " + body + b"\n\n", "more_body": False}
            )
        except Exception:  # noqa: BLE001 - the client may be gone too
            pass

    async def answer_failure(self) -> None:
        status, headers, body = self.response or _error(502, "upstream_error", "the provider call failed")
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.client_send({"type": "http.response.start", "status": status, "headers": headers})
        await self.client_send({"type": "http.response.body", "body": body, "more_body": False})


class Fallback:
    """ASGI middleware: per-endpoint policy for the upstream client, clear errors, the fallback chain. Each
    request that leaves its endpoint goes to `events` (fallback_served)."""

    def __init__(self, app, endpoint_policies: dict[str, Policy], default: Policy, events: Events = NOBODY) -> None:
        self.app, self.policies, self.default, self.events = app, endpoint_policies, default, events

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = route_of(scope["path"])
        if route.model_in_body:
            body, receive = await request_body(scope, receive)
            if body is None:  # the client left while sending its body
                return
            name = request_endpoint(scope)
        elif route.endpoint is None:
            return await self.app(scope, receive, send)
        else:
            name = route.endpoint
        policy = self.policies.get(name) or self.default
        if not policy.fallback:
            one = _Try(name, policy, scope, receive, send, lambda t: True)
            await one.run(self.app)
            if one.state == "failed":
                await one.answer_failure()
            return
        body, receive = await request_body(scope, receive)  # every try gets it
        if body is None:
            return
        await self._chain(scope, receive, send, route, name, policy)

    async def _chain(self, scope, receive, send, route: Route, name: str, policy: Policy) -> None:
        chain = [name, *policy.fallback]
        state_of(scope)  # shared by every try's copy of the scope
        winner: list[_Try] = []
        tries: list[_Try] = []
        disconnect = _SharedDisconnect(receive)

        def gate(t: _Try) -> bool:
            if winner:
                return False
            winner.append(t)
            for other in tries:
                if other is not t and other.task is not None:
                    other.task.cancel()
            return True

        def start(endpoint: str) -> _Try:
            try_scope = _scope_for(scope, route, name, endpoint)
            t = _Try(
                endpoint,
                self.policies.get(endpoint) or self.default,
                try_scope,
                disconnect.receiver(try_scope[BODY]),
                send,
                gate,
            )
            t.task = asyncio.create_task(t.run(self.app))
            tries.append(t)
            return t

        reasons: list[str] = []
        live = [start(chain[0])]
        nxt = 1
        try:
            while live and not winner:
                timer = policy.after_s if nxt < len(chain) else None
                waiters = {asyncio.ensure_future(t.decided.wait()): t for t in live}
                done, _ = await asyncio.wait(waiters, timeout=timer, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if winner:
                    break
                decided = [t for t in live if t.state != "pending"]
                if not decided:  # after_s passed and nothing answered yet
                    reasons.append(f"no_answer_in_{policy.after_s:g}s")
                    if not policy.race:
                        for t in live:
                            t.task.cancel()
                        await asyncio.gather(*(t.task for t in live), return_exceptions=True)
                        live = []
                    live.append(start(chain[nxt]))
                    nxt += 1
                    continue
                for t in decided:
                    live.remove(t)
                    if not t.retryable:  # a final answer (a 400, say): no fallback can do better
                        winner.append(t)
                        break
                    reasons.append(t.reason or "failed")
                if not live and not winner and nxt < len(chain):
                    live.append(start(chain[nxt]))
                    nxt += 1
            last = winner[0] if winner else tries[-1]
            if last.name != name or len(tries) > 1:
                state = state_of(scope)
                state[SERVED_BY] = last.name if last.name != name else None
                state[FALLBACK_REASON] = reasons[0] if reasons else None
                served = last.name if winner and last.state == "committed" else None
                self.events.fallback_served(
                    FallbackEvent(
                        state.get(REQUEST_ID),
                        name,
                        served,
                        reasons[0] if reasons else "failed",
                        tuple(t.name for t in tries),
                    ),
                )
            if winner and winner[0].state == "committed":
                await winner[0].task
            else:
                if last.task is not None:
                    await asyncio.gather(last.task, return_exceptions=True)
                await last.answer_failure()
        finally:
            for t in tries:
                if t.task is not None and not t.task.done():
                    t.task.cancel()
            disconnect.close()


class _SharedDisconnect:
    """Several tries of one request each read their own request body once, then wait for the one disconnect."""

    def __init__(self, receive) -> None:
        self.receive, self.waiting = receive, None

    def receiver(self, body: bytes):
        return replay_body(body, self._receive_shared)

    async def _receive_shared(self):
        if self.waiting is None:
            self.waiting = asyncio.ensure_future(self._after_body())
        return await asyncio.shield(self.waiting)

    async def _after_body(self):
        while True:
            message = await self.receive()
            if message["type"] != "http.request":  # the body again, replayed from outside: each try has its own
                return message

    def close(self) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.cancel()


def _scope_for(scope: dict, route: Route, name: str, endpoint: str) -> dict:
    """A copy of the request's scope (body read) addressed to `endpoint` (concurrent tries never share one): the
    path names it, or on /v1 the try's own body, with "model": endpoint."""
    new = dict(scope)
    if endpoint == name:
        return new
    if not route.model_in_body:
        new["path"] = route.path_for(endpoint)
        new["raw_path"] = new["path"].encode()
        return new
    body = new[BODY] = json.dumps({**request_json(scope), "model": endpoint}).encode()
    new.pop(JSON, None)
    length = str(len(body)).encode()
    new["headers"] = [(k, length if k == b"content-length" else v) for k, v in scope["headers"]]
    return new


def wrap(app, config: Mapping[str, Any], events: Events = NOBODY):
    """MLflow's app with the Fallback middleware in front (reporting to `events`)."""
    s = settings()
    return Fallback(app, policies(config, s), Policy.default(s), events)


__all__ = [
    "CIRCUIT_PREFIX",
    "CURRENT",
    "SHARED_READ_S",
    "Attempt",
    "Breaker",
    "Circuit",
    "CircuitName",
    "CircuitOpenError",
    "Fallback",
    "FallbackEvent",
    "Policy",
    "Settings",
    "UpstreamTimeout",
    "circuit_for",
    "circuit_name",
    "config_problems",
    "error_for",
    "outcome",
    "policies",
    "retry_wait",
    "retryable",
    "settings",
    "wrap",
]
