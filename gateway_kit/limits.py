"""Rate limits, token limits and daily USD budgets, exact across replicas and workers: counted in Redis.

What config.yaml can say (docs/limits-and-keys.md has the reference):

    endpoints:
      - name: chat
        ...
        limit: {calls: 100, renewal_period: minute}              # MLflow's block: every client together
        # limit: {calls: 10, renewal_period: minute, key: client}  # or: each client on its own
    limits:
      endpoint: {calls: 1000, renewal_period: minute}            # endpoints and routes without a `limit:`
      client: {calls: 600, renewal_period: minute, tokens_per_minute: 100000, usd_per_day: 20}
      clients:
        ci-bot: {calls: 30, usd_per_day: 1}                      # field by field over `client:`; null = none

How it counts
-------------
Every request to an invocation route (/gateway/<name>/invocations, /endpoints/<name>/invocations, /v1/* with
"model": "<name>", traffic routes too) costs ONE Redis round trip: a Lua script (atomic in Redis) reads every
counter that applies to it (the endpoint's, the client's on that endpoint, the client's calls, tokens and
dollars), and either refuses, naming the first limit that is full, or adds one to each call counter. No
counter moves for a refused request, and no two replicas can both take the last slot.

Windows are fixed and start with their first request (what MLflow's own limiter, `limits`' FixedWindow, does):
a counter is created with the window as its expiry, and Retry-After is its remaining lifetime. Tokens per minute
and dollars per day are added after each response by a usage-record listener (scheduled on the event loop, never
delaying the response); a request is refused once the tokens or dollars already used reach the limit, so the
request that crosses it completes. Dollar budgets are per UTC day (the key carries the date) and reset at
midnight UTC; a model with no known price adds nothing to a budget.

Redis down
----------
GATEWAY_LIMITS_ON_REDIS_DOWN=open (default): requests are served unlimited, with the response header
`X-Gateway-Limits: unenforced`, the event limits_unenforced (metrics counts it: gateway_limits_unenforced_total)
and an error line at most every 10 s. `closed`: 503 JSON `limits_unavailable`. A dead Redis never stalls a request: timeouts are
GATEWAY_REDIS_TIMEOUT (0.5 s), and after a failure Redis is not asked again for 1 s (gateway_kit.shared_redis:
the same client and pause as the circuit breakers).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway_kit import launcher
from gateway_kit.cache import HIT
from gateway_kit.events import NOBODY, Events, Listener
from gateway_kit.request import (
    error_body,
    header,
    request_body,
    request_endpoint,
    route_of,
    send_json,
    with_response_headers,
)
from gateway_kit.shared_redis import RedisLink, link_for

if TYPE_CHECKING:
    from gateway_kit.settings import Settings

log = logging.getLogger("gateway_kit.limits")

ANONYMOUS = "anonymous"  # the client of a request without a gateway key (auth off)
_PREFIX = "gateway:limits:"
_DAY = 86400
_DOWN_LOG_EVERY = 10.0  # seconds between two "Redis down" log lines (per worker)

# KEYS[i] is a counter. ARGV[3i-2]: "c" for a call counter (checked, then + 1) or "q" for a quota that
# usage records fill (tokens, dollars: checked only); ARGV[3i-1]: the limit; ARGV[3i]: the window in ms,
# set as the expiry of a call counter when this request creates it.
# Returns {0} when admitted, or {i, the counter's remaining ms, what it holds} for the first full one.
CHECK_SCRIPT = """
for i = 1, #KEYS do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used >= tonumber(ARGV[3 * i - 1]) then
    return {i, redis.call('PTTL', KEYS[i]), tostring(used)}
  end
end
for i = 1, #KEYS do
  if ARGV[3 * i - 2] == 'c' and redis.call('INCR', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[3 * i])
  end
end
return {0}
"""

# After a response: KEYS[1] the client's tokens this minute, KEYS[2] its dollars today.
# ARGV: tokens, tokens window ms, dollars, unix time the dollars key expires.
RECORD_SCRIPT = """
if tonumber(ARGV[1]) > 0 then
  redis.call('INCRBY', KEYS[1], ARGV[1])
  if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('INCRBYFLOAT', KEYS[2], ARGV[3])
  if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIREAT', KEYS[2], ARGV[4]) end
end
return 0
"""


# ---------------------------------------------------------------------------------------------- config
class LimitsConfigError(ValueError):
    """A problem in the limits of config.yaml; `where` is the path to it (for preflight's config.yaml:LINE)."""

    def __init__(self, where: tuple, message: str) -> None:
        super().__init__(message)
        self.where = where


@dataclass(frozen=True)
class Window:
    calls: int
    seconds: int
    period: str  # as written: "minute", "10 minutes"


@dataclass(frozen=True)
class EndpointLimit:
    window: Window
    per_client: bool  # MLflow's `key`: client (or user) = each client its own count; none = everyone together


@dataclass(frozen=True)
class ClientLimit:
    calls: Window | None = None
    tokens_per_minute: int | None = None
    usd_per_day: float | None = None


@dataclass(frozen=True)
class LimitsConfig:
    endpoints: dict[str, EndpointLimit]  # endpoint or route name -> its limit (own, or limits.endpoint)
    default_endpoint: EndpointLimit | None  # for names not in `endpoints` (none when unknown)
    client: ClientLimit  # every client
    clients: dict[str, ClientLimit]  # per-client overrides, already merged over `client`

    @property
    def empty(self) -> bool:
        return not (
            self.endpoints or self.client != ClientLimit() or any(c != ClientLimit() for c in self.clients.values())
        )

    def for_client(self, client: str) -> ClientLimit:
        return self.clients.get(client, self.client)


def parse_window(block: Any, where: tuple) -> Window:
    """calls + renewal_period (MLflow's grammar: minute, hour, day, 10 minutes ...) as a window."""
    from limits import parse

    calls, period = block.get("calls"), block.get("renewal_period", "minute")
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise LimitsConfigError((*where, "calls"), f"calls must be a whole number of at least 1, got {calls!r}")
    try:
        seconds = parse(f"{calls}/{period}").get_expiry()
    except (ValueError, TypeError):
        raise LimitsConfigError(
            (*where, "renewal_period"),
            f"renewal_period {period!r} is not a period: "
            "use second, minute, hour or day, optionally with a count (10 minutes)",
        ) from None
    return Window(calls, int(seconds), str(period))


def _endpoint_limit(block: Any, where: tuple) -> EndpointLimit:
    if not isinstance(block, dict):
        raise LimitsConfigError(where, "must be a mapping: {calls: N, renewal_period: minute, key: client}")
    key = block.get("key")
    if key not in (None, "endpoint", "client", "user"):
        raise LimitsConfigError(
            (*where, "key"),
            f"key {key!r} is not supported: use `client` (each client counted "
            "on its own) or leave it out (every client together)",
        )
    return EndpointLimit(parse_window(block, where), per_client=key in ("client", "user"))


# The keys of the `limits:` block and of a client's limits. A `limit:` (and `limits.endpoint`) is MLflow's
# Limit model: calls, renewal_period, key. preflight.unknown_keys reports any other key, with its line.
LIMITS_KEYS = ("endpoint", "client", "clients")
CLIENT_FIELDS = ("calls", "renewal_period", "tokens_per_minute", "usd_per_day")


def _client_limit(block: Any, where: tuple, base: ClientLimit | None = None) -> ClientLimit:
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise LimitsConfigError(where, f"must be a mapping of {', '.join(CLIENT_FIELDS)}")
    base = base or ClientLimit()
    calls = base.calls
    if "calls" in block:
        calls = None if block["calls"] is None else parse_window(block, where)
    elif "renewal_period" in block:
        raise LimitsConfigError((*where, "renewal_period"), "renewal_period without calls: add calls: N")
    tpm = base.tokens_per_minute
    if "tokens_per_minute" in block:
        tpm = block["tokens_per_minute"]
        if tpm is not None and (isinstance(tpm, bool) or not isinstance(tpm, int) or tpm < 1):
            raise LimitsConfigError(
                (*where, "tokens_per_minute"),
                f"tokens_per_minute must be a whole number of at least 1 (or null), got {tpm!r}",
            )
    usd = base.usd_per_day
    if "usd_per_day" in block:
        usd = block["usd_per_day"]
        if usd is not None and (isinstance(usd, bool) or not isinstance(usd, (int, float)) or usd <= 0):
            raise LimitsConfigError(
                (*where, "usd_per_day"), f"usd_per_day must be a number above 0 (or null), got {usd!r}"
            )
        usd = None if usd is None else float(usd)
    return ClientLimit(calls, tpm, usd)


def read_config(config: dict) -> LimitsConfig:
    """The limits of a gateway config mapping; raises LimitsConfigError naming where a value is wrong.
    Unknown keys are preflight's to report (preflight.unknown_keys): here they are not read."""
    top = config.get("limits")
    if top is None:
        top = {}
    if not isinstance(top, dict):
        raise LimitsConfigError(("limits",), f"limits must be a mapping with {', '.join(LIMITS_KEYS)}")
    default_endpoint = None
    if top.get("endpoint") is not None:
        default_endpoint = _endpoint_limit(top["endpoint"], ("limits", "endpoint"))
    client = _client_limit(top.get("client"), ("limits", "client"))
    clients_block = top.get("clients") or {}
    if not isinstance(clients_block, dict):
        raise LimitsConfigError(("limits", "clients"), "clients must map client names to their limits")
    clients = {
        str(name): _client_limit(block, ("limits", "clients", name), base=client)
        for name, block in clients_block.items()
    }
    endpoints: dict[str, EndpointLimit] = {}
    for section in ("endpoints", "routes"):
        for index, item in enumerate(config.get(section) or []):
            if not isinstance(item, dict) or "name" not in item:
                continue
            own = item.get("limit")
            if own is not None:
                endpoints[item["name"]] = _endpoint_limit(own, (section, index, "limit"))
            elif default_endpoint is not None:
                endpoints[item["name"]] = default_endpoint
    return LimitsConfig(endpoints, default_endpoint, client, clients)


# ---------------------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Rule:
    """One counter a request is checked against."""

    name: str  # endpoint, endpoint_per_client, client_calls, client_tokens_per_minute, client_usd_per_day
    key: str  # the Redis key (the dollars key gets the UTC date appended per request)
    kind: str  # "c": counted per call; "q": a quota filled from usage records
    limit: float
    seconds: int
    period: str  # "minute", "10 minutes", "day (UTC)"
    unit: str  # requests, tokens, USD
    endpoint: str | None
    client: str | None


def rules_for(config: LimitsConfig, endpoint: str | None, client: str) -> list[Rule]:
    rules = []
    own = config.endpoints.get(endpoint) if endpoint else None
    if own:
        w = own.window
        if own.per_client:
            rules.append(
                Rule(
                    "endpoint_per_client",
                    f"{_PREFIX}calls:endpoint:{endpoint}:client:{client}:{w.seconds}",
                    "c",
                    w.calls,
                    w.seconds,
                    w.period,
                    "requests",
                    endpoint,
                    client,
                )
            )
        else:
            rules.append(
                Rule(
                    "endpoint",
                    f"{_PREFIX}calls:endpoint:{endpoint}:{w.seconds}",
                    "c",
                    w.calls,
                    w.seconds,
                    w.period,
                    "requests",
                    endpoint,
                    None,
                )
            )
    mine = config.for_client(client)
    if mine.calls:
        w = mine.calls
        rules.append(
            Rule(
                "client_calls",
                f"{_PREFIX}calls:client:{client}:{w.seconds}",
                "c",
                w.calls,
                w.seconds,
                w.period,
                "requests",
                None,
                client,
            )
        )
    if mine.tokens_per_minute:
        rules.append(
            Rule(
                "client_tokens_per_minute",
                tokens_key(client),
                "q",
                mine.tokens_per_minute,
                60,
                "minute",
                "tokens",
                None,
                client,
            )
        )
    if mine.usd_per_day:
        rules.append(
            Rule(
                "client_usd_per_day",
                f"{_PREFIX}usd:client:{client}:",
                "q",
                mine.usd_per_day,
                _DAY,
                "day (UTC)",
                "USD",
                None,
                client,
            )
        )
    return rules


def tokens_key(client: str) -> str:
    return f"{_PREFIX}tokens:client:{client}:60"


def usd_key(client: str, now: float) -> str:
    return f"{_PREFIX}usd:client:{client}:{utc_day(now)}"


def utc_day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def next_utc_midnight(now: float) -> float:
    return (math.floor(now / _DAY) + 1) * _DAY


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def refusal(rule: Rule, used: float, remaining_ms: int, now: float) -> tuple[int, dict]:
    """Retry-After seconds and the 429 JSON body naming the limit."""
    if rule.unit == "USD":
        resets = next_utc_midnight(now)
        kind = "budget_exceeded"
    else:
        resets = now + (remaining_ms / 1000 if remaining_ms > 0 else rule.seconds)
        kind = "token_limit_exceeded" if rule.unit == "tokens" else "rate_limit_exceeded"
    retry = max(1, math.ceil(resets - now))
    who = f"client {rule.client!r}" if rule.client else "all clients together"
    where = f" on endpoint {rule.endpoint!r}" if rule.endpoint else ""
    value = f"{rule.limit:g} USD" if rule.unit == "USD" else f"{int(rule.limit)} {rule.unit}"
    message = (
        f"{who} reached the limit of {value} per {rule.period}{where} ({rule.name}); "
        f"it resets at {iso(resets)}, retry after {retry} s"
    )
    used_value = round(used, 9) if rule.unit == "USD" else int(used)
    body = error_body(
        kind,
        message,
        limit={
            "name": rule.name,
            "endpoint": rule.endpoint,
            "client": rule.client,
            "value": rule.limit,
            "unit": rule.unit,
            "window": rule.period,
            "window_seconds": rule.seconds,
            "used": used_value,
            "resets_at": iso(resets),
            "retry_after_seconds": retry,
        },
    )
    return retry, body


# ---------------------------------------------------------------------------------------------- Redis
class Limiter(Listener):
    """One per worker: the two scripts on the worker's Redis link, and what to do when Redis does not answer.
    A listener of the usage records when a client has tokens per minute or dollars per day (`counts_usage`)."""

    def __init__(self, config: LimitsConfig, redis: RedisLink | None, policy: str = "open") -> None:
        self.config = config
        self.redis = redis  # shared with the circuit breakers (gateway_kit.shared_redis)
        self.redis_url = redis.url if redis else None
        self.policy = policy
        self.timeout = redis.timeout if redis else 0.5
        self.where = redis.where if redis else "(GATEWAY_REDIS_URL is not set)"
        self.redis_check = launcher.current().redis_check  # the command that fits how this replica was started
        self._last_log = -math.inf
        self._unenforced_since_log = 0
        self._rules: dict[tuple, list[Rule]] = {}
        self._tasks: set[asyncio.Task] = set()
        self.events: Events = NOBODY  # the worker's registry, told of each unchecked request (limits_unenforced);
        # gateway_kit.app.parts sets it once the registry, of which this limiter is a listener, is made
        self.counts_usage = any(c.tokens_per_minute or c.usd_per_day for c in (config.client, *config.clients.values()))

    def rules(self, endpoint: str | None, client: str) -> list[Rule]:
        found = self._rules.get((endpoint, client))
        if found is None:
            if len(self._rules) > 10000:  # clients are bounded by the keys file, but not with auth off
                self._rules.clear()
            found = self._rules[(endpoint, client)] = rules_for(self.config, endpoint, client)
        return found

    def available(self) -> bool:
        return self.redis is not None and self.redis.available()

    def failed(self, error: BaseException | str) -> None:
        """Redis did not answer: leave it alone for a moment, count, and say so (at most every 10 s)."""
        self.redis.failed()
        self.note_unenforced(error)

    def note_unenforced(self, error: BaseException | str | None = None) -> None:
        self._unenforced_since_log += 1
        self.events.limits_unenforced(self.policy)
        now = time.monotonic()
        if now - self._last_log >= _DOWN_LOG_EVERY:
            why = error if isinstance(error, str) else type(error).__name__ if error else "unreachable"
            effect = "requests are served WITHOUT limits" if self.policy == "open" else "requests are refused with 503"
            log.error(
                "limits: Redis at %s does not answer (%s) — %s (GATEWAY_LIMITS_ON_REDIS_DOWN=%s); "
                "%d request(s) unchecked since the last such line; check Redis: %s",
                self.where,
                why,
                effect,
                self.policy,
                self._unenforced_since_log,
                self.redis_check,
            )
            self._last_log = now
            self._unenforced_since_log = 0

    async def check(self, rules: list[Rule], now: float) -> tuple[Rule, float, int] | None:
        """None when admitted (and counted); (rule, used, remaining ms) for the first full limit.
        Raises on a Redis failure (the caller applies the policy)."""
        check = self.redis.script(CHECK_SCRIPT)
        keys, args = [], []
        for rule in rules:
            keys.append(rule.key + utc_day(now) if rule.unit == "USD" else rule.key)
            args += [rule.kind, repr(rule.limit), rule.seconds * 1000]
        async with asyncio.timeout(self.timeout * 3):
            result = await check(keys=keys, args=args)
        if not result or int(result[0]) == 0:
            return None
        index, remaining, used = int(result[0]), int(result[1]), result[2]
        return rules[index - 1], float(used.decode() if isinstance(used, bytes) else used), remaining

    # ---- tokens and dollars, after the response
    def usage_recorded(self, record) -> None:
        client = record.client or ANONYMOUS
        mine = self.config.for_client(client)
        tokens = record.total_tokens if mine.tokens_per_minute and record.cache != HIT else 0  # a hit: none spent
        usd = (record.cost_usd or 0.0) if mine.usd_per_day else 0.0
        if tokens <= 0 and usd <= 0:
            return
        if not self.available():
            self.note_unenforced("down")
            return
        now = time.time()
        task = asyncio.get_running_loop().create_task(self._add_usage(client, tokens, usd, now))
        self._tasks.add(task)  # a reference until it is done, so it is not collected mid-flight
        task.add_done_callback(self._tasks.discard)

    async def _add_usage(self, client: str, tokens: int, usd: float, now: float) -> None:
        try:
            record = self.redis.script(RECORD_SCRIPT)
            async with asyncio.timeout(self.timeout * 3):
                await record(
                    keys=[tokens_key(client), usd_key(client, now)],
                    args=[int(tokens), 60000, f"{usd:.12f}", int(next_utc_midnight(now)) + _DAY],
                )
        except Exception as e:  # noqa: BLE001 - any Redis trouble is the documented policy, never the request's
            self.failed(e)


# ---------------------------------------------------------------------------------------------- middleware
class Limits:
    """ASGI middleware: refuse a request over any limit before it reaches MLflow (429, Retry-After, JSON)."""

    def __init__(self, app, limiter: Limiter, refused=None, events: Events = NOBODY) -> None:
        self.app = app
        self.limiter = limiter
        self.refused = refused  # recording.Refusals: told of each 429 and 503, after it was sent
        self.events = events  # told which limit refused a request (rate_limited, budget_rejected)
        self.needs_endpoint = bool(limiter.config.endpoints)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = route_of(scope["path"])
        if not route.llm:
            return await self.app(scope, receive, send)
        endpoint = None
        if self.needs_endpoint:
            if route.model_in_body:  # the path names the endpoint; on /v1/* the body's "model" does
                body, receive = await request_body(scope, receive)
                if body is None:  # the client left while sending its body
                    return
            endpoint = request_endpoint(scope)
        client = header(scope, b"x-gateway-client") or ANONYMOUS
        rules = self.limiter.rules(endpoint, client)
        if not rules:
            return await self.app(scope, receive, send)
        now = time.time()
        if self.limiter.available():
            try:
                verdict = await self.limiter.check(rules, now)
            except Exception as e:  # noqa: BLE001 - Redis trouble of any kind: the documented policy
                self.limiter.failed(e)
            else:
                if verdict is None:
                    return await self.app(scope, receive, send)
                rule, used, remaining = verdict
                report = self.events.budget_rejected if rule.unit == "USD" else self.events.rate_limited
                report(rule.name, endpoint, client)
                retry, body = refusal(rule, used, remaining, now)
                return await self._refuse(
                    scope,
                    send,
                    429,
                    body,
                    [(b"retry-after", str(retry).encode())],
                    f"{body['error']['type']}:{rule.name}",
                    now,
                    client,
                )
        else:
            self.limiter.note_unenforced("down" if self.limiter.redis_url else "GATEWAY_REDIS_URL is not set")
        if self.limiter.policy == "closed":
            body = error_body(
                "limits_unavailable",
                f"the gateway cannot check its limits: Redis at {self.limiter.where} does not answer, and "
                "GATEWAY_LIMITS_ON_REDIS_DOWN=closed refuses requests until it does — retry shortly; "
                f"operators: check Redis ({self.limiter.redis_check})",
            )
            return await self._refuse(
                scope, send, 503, body, [(b"retry-after", b"5")], "limits_unavailable", now, client
            )
        await self.app(scope, receive, with_response_headers(send, [(b"x-gateway-limits", b"unenforced")]))

    async def _refuse(
        self, scope, send, status: int, body: dict, headers: list, reason: str, started: float, client: str
    ) -> None:
        try:
            await send_json(send, status, body, headers)
        finally:
            if self.refused is not None:
                self.refused(scope, status, reason, started, None if client == ANONYMOUS else client)


def limiter_from(config: dict, s: Settings) -> Limiter | None:
    """The worker's Limiter for the limits of `config`, or None when config.yaml sets none. Redis and the
    policy while it is down come from the settings (GATEWAY_REDIS_URL, GATEWAY_LIMITS_ON_REDIS_DOWN).

    In create_app (gateway_kit.app.parts): it listens to the usage records when `counts_usage`, and Limits(app,
    limiter, ...) wraps the app outside the usage recorder."""
    limits = read_config(config)
    if limits.empty:
        return None
    limiter = Limiter(limits, link_for(s), s.limits_on_redis_down)
    if limiter.redis is None:
        log.error(
            "limits: config.yaml sets limits but GATEWAY_REDIS_URL is not set — limits are not enforced "
            "(GATEWAY_LIMITS_ON_REDIS_DOWN=%s); set it to the Redis every replica shares",
            limiter.policy,
        )
    return limiter
