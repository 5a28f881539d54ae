"""A response cache shared by every replica: the endpoints that ask for it in config.yaml, stored in Redis.

    endpoints:
      - name: chat
        ...
        cache: {ttl: 3600}                 # seconds an answer is kept
        # cache: {ttl: 600, scope: client}  # each client its own answers

The key is the endpoint, the route, and a SHA-256 of the request body in a canonical form (keys sorted, no
spaces: every parameter counts, sampling ones included, and `stream` too: a streamed request is answered from
a stored stream, a plain one from a stored JSON answer), plus the client's name with `scope: client`
(`gateway:cache:<endpoint>:<hex>` in Redis, which expires it after `ttl`).

Stored: answers with status 200 that the endpoint itself gave (not a fallback's), whole: a stream only when it
ended with `data: [DONE]` (no error event, not cut), and nothing above GATEWAY_CACHE_MAX_ENTRY_KB. A client's
`Cache-Control: no-cache` skips the lookup, `no-store` the write.

A hit is answered here, without the provider (resilience and MLflow's app are inside this middleware): the
stored bytes with their content type, `X-Gateway-Cache: hit`; a stream as the stored SSE events, usage chunk
and `[DONE]` included. A looked-up miss carries `X-Gateway-Cache: miss`. The scope state CACHE tells the usage
recorder (outside) "hit", or "miss" once the answer was stored, so the record says so (`saved_usd` on a hit),
and each lookup is reported to the events (`cache_looked_up`: metrics count hits and misses).

Room for the limits: the cache shares Redis with the limits' counters, and a full Redis evicts keys (prod:
volatile-ttl, the keys closest to expiry first: minute counters before long-lived answers). So the cache stops
storing while Redis uses more than ROOM_FOR_CACHE of its maxmemory (INFO memory, read at most every
MEMORY_CHECK_SECONDS per worker; one log line when it stops storing, one when it stores again): answers already
stored are still served, and the counters keep the rest of Redis.

Redis down (or GATEWAY_REDIS_URL unset): requests are served without the cache; one log line per worker when
Redis stops answering, one when it answers again. The Redis link is the one limits and breakers share
(gateway_kit.shared_redis): after a failure Redis is left alone for a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway_kit.events import Events
from gateway_kit.request import (
    CACHE,
    SERVED_BY,
    header,
    request_body,
    request_endpoint,
    request_json,
    route_of,
    state_of,
)
from gateway_kit.shared_redis import RedisLink

log = logging.getLogger("gateway_kit.cache")

CACHE_KEYS = ("ttl", "scope")  # an endpoint's `cache:` block (preflight.unknown_keys reports any other)
SCOPES = ("client",)
KEY_PREFIX = "gateway:cache:"
HIT, MISS = "hit", "miss"
_DONE = b"data: [DONE]\n\n"
_ERROR_EVENT = b'data: {"error"'  # how gateway_kit.resilience ends a stream that broke
ROOM_FOR_CACHE = 0.75  # of Redis's maxmemory: above it the cache stores nothing (a Redis without maxmemory: no bound)
MEMORY_CHECK_SECONDS = 5.0
_EXAMPLE = "for example {ttl: 3600} or {ttl: 600, scope: client}"


@dataclass(frozen=True)
class Policy:
    """An endpoint's `cache:`: how long an answer is kept, and whether each client has its own."""

    ttl: int
    per_client: bool = False


def read_config(config: Mapping[str, Any]) -> dict[str, Policy]:
    """{endpoint name: its Policy} for the endpoints whose config.yaml block has a valid `cache:`."""
    policies = {}
    for endpoint in config.get("endpoints") or []:
        block = endpoint.get("cache") if isinstance(endpoint, dict) else None
        if isinstance(block, dict) and _is_ttl(block.get("ttl")) and block.get("scope") in (None, *SCOPES):
            policies[endpoint["name"]] = Policy(block["ttl"], block.get("scope") == "client")
    return policies


def config_problems(config: Mapping[str, Any]) -> list[tuple[tuple, str]]:
    """(path in the config, what is wrong) for every bad `cache:` value (an unknown key in it is
    preflight.unknown_keys's to report, from CACHE_KEYS). preflight.validate() words the first with its line."""
    problems: list[tuple[tuple, str]] = []
    for index, endpoint in enumerate(config.get("endpoints") or []):
        if not isinstance(endpoint, dict) or "cache" not in endpoint:
            continue
        at, block = ("endpoints", index, "cache"), endpoint["cache"]
        if not isinstance(block, dict):
            problems.append((at, f"cache must be a mapping, {_EXAMPLE}"))
            continue
        if not _is_ttl(block.get("ttl")):
            where = (*at, "ttl") if "ttl" in block else at
            problems.append((where, f"cache.ttl: {block.get('ttl')!r} is not a whole number of seconds above 0"))
        if block.get("scope") not in (None, *SCOPES):
            problems.append(((*at, "scope"), f"cache.scope: {block['scope']!r} is not {' or '.join(SCOPES)}"))
    return problems


def _is_ttl(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def cache_key(endpoint: str, route: str, body: Any, client: str | None = None) -> str:
    """The Redis key of a request's answer: the endpoint, then a SHA-256 of the route, the client (with scope:
    client; None otherwise) and the body in canonical JSON (keys sorted, no spaces), so two bodies that differ
    only in key order or spacing share an answer and any other difference, a sampling parameter too, does not."""
    canonical = json.dumps([route, client, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{KEY_PREFIX}{endpoint}:{hashlib.sha256(canonical.encode()).hexdigest()}"


def cache_control(scope) -> tuple[bool, bool]:
    """(look up, store) as the client's Cache-Control allows: no-cache skips the lookup, no-store the write."""
    value = header(scope, b"cache-control")
    if value is None:
        return True, True
    words = {word.strip().lower() for word in value.split(",")}
    return "no-cache" not in words, "no-store" not in words


def entry(content_type: bytes, body: bytes) -> bytes:
    """What is stored: the content type, a newline, the answer's bytes."""
    return content_type + b"\n" + body


def from_entry(value: bytes) -> tuple[bytes, bytes]:
    content_type, _, body = value.partition(b"\n")
    return content_type, body


def complete_stream(body: bytes) -> bool:
    """A stream that ended normally: [DONE] last, and no error event."""
    return body.endswith(_DONE) and _ERROR_EVENT not in body


class ResponseCache:
    """ASGI middleware (between the usage recorder and resilience): answers a hit from Redis, stores a miss."""

    def __init__(
        self, app, policies: dict[str, Policy], redis: RedisLink, max_entry_bytes: int, events: Events
    ) -> None:
        self.app = app
        self.policies = policies
        self.redis = redis
        self.max_entry_bytes = max_entry_bytes
        self.events = events
        self.down = False  # this worker said Redis is down, and has not yet said it answers again
        self.full = False  # Redis is above ROOM_FOR_CACHE of its maxmemory: nothing is stored
        self.memory_checked = -float("inf")  # when (the link's clock) Redis's memory was last read

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = route_of(scope["path"])
        if not route.llm or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        if route.model_in_body:
            body, receive = await request_body(scope, receive)
            if body is None:  # the client left while sending its body
                return
        endpoint = request_endpoint(scope)
        policy = self.policies.get(endpoint) if endpoint else None
        if policy is None or not self.redis.available():
            return await self.app(scope, receive, send)
        body, receive = await request_body(scope, receive)
        if body is None:
            return
        try:
            parsed = request_json(scope)
        except ValueError:  # not JSON, too deep: the app answers it
            return await self.app(scope, receive, send)
        if not isinstance(parsed, dict):
            return await self.app(scope, receive, send)
        client = header(scope, b"x-gateway-client")
        key = cache_key(endpoint, route.template or scope["path"], parsed, client if policy.per_client else None)
        look, store = cache_control(scope)
        if look:
            found = await self._redis("GET", key)
            if found is not None:
                self.events.cache_looked_up(endpoint, client, HIT)
                state_of(scope)[CACHE] = HIT
                return await self._replay(found, send)
            if self.down:  # Redis did not answer: served without the cache
                return await self.app(scope, receive, send)
            self.events.cache_looked_up(endpoint, client, MISS)
        await self.app(scope, receive, self._watch(scope, send, key, policy.ttl, store, look))

    async def _replay(self, found: bytes, send) -> None:
        content_type, body = from_entry(found)
        headers = [(b"content-type", content_type), (b"x-gateway-cache", b"hit")]
        if not content_type.startswith(b"text/event-stream"):
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _watch(self, scope, send, key: str, ttl: int, store: bool, looked: bool):
        """The send of a miss: adds X-Gateway-Cache: miss, keeps the answer's bytes while it may be stored, and
        stores it (before its last byte goes out, so the next identical request finds it) when it is whole."""
        kept = bytearray()
        storing = store
        content_type = b""

        async def sending(message) -> None:
            nonlocal storing, content_type
            if message["type"] == "http.response.start":
                if looked:
                    message["headers"] = [*message.get("headers", ()), (b"x-gateway-cache", b"miss")]
                if message["status"] != 200:
                    storing = False
                for name, value in message.get("headers", ()):
                    if name == b"content-type":
                        content_type = value
            elif message["type"] == "http.response.body" and storing:
                kept.extend(message.get("body", b""))
                if len(kept) > self.max_entry_bytes:
                    storing = False
                    kept.clear()
                elif not message.get("more_body", False):
                    storing = False
                    await self._store(scope, key, ttl, content_type, bytes(kept))
            await send(message)

        return sending

    async def _store(self, scope, key: str, ttl: int, content_type: bytes, body: bytes) -> None:
        state = state_of(scope)
        if state.get(SERVED_BY) is not None:  # a fallback's answer: not the endpoint's to keep
            return
        if content_type.startswith(b"text/event-stream") and not complete_stream(body):
            return
        if await self._too_full():
            return
        if await self._redis("SET", key, entry(content_type, body), ttl):
            state[CACHE] = MISS

    async def _too_full(self) -> bool:
        """Whether Redis is above ROOM_FOR_CACHE of its maxmemory, read again after MEMORY_CHECK_SECONDS."""
        now = self.redis.clock()
        if now - self.memory_checked < MEMORY_CHECK_SECONDS:
            return self.full
        self.memory_checked = now
        memory = await self._redis("INFO", "memory")
        if memory is None:  # Redis did not answer: the SET will find out too
            return self.full
        limit = memory.get("maxmemory") or 0
        full = bool(limit) and memory.get("used_memory", 0) > ROOM_FOR_CACHE * limit
        if full != self.full:
            self.full = full
            if full:
                log.warning(
                    "cache: Redis at %s uses %s of its maxmemory %s (above %d%%) — new answers are not stored "
                    "until it has room, so the limits' counters keep theirs",
                    self.redis.where,
                    memory.get("used_memory_human", memory.get("used_memory")),
                    memory.get("maxmemory_human", limit),
                    ROOM_FOR_CACHE * 100,
                )
            else:
                log.warning("cache: Redis at %s has room again — answers are stored again", self.redis.where)
        return full

    async def _redis(self, command: str, key: str, value: bytes | None = None, ttl: int = 0):
        """GET (the value, or None), SET with a TTL (True when stored) or INFO of a section (a dict); None when
        Redis did not answer."""
        if not self.redis.available():
            return None
        client = self.redis.client()
        try:
            async with asyncio.timeout(self.redis.timeout * 3):
                if command == "GET":
                    result = await client.get(key)
                elif command == "INFO":
                    result = await client.info(key)
                else:
                    result = await client.set(key, value, ex=ttl)
        except Exception as e:  # noqa: BLE001 - Redis trouble of any kind: served without the cache
            self.redis.failed()
            if not self.down:
                self.down = True
                log.error(
                    "cache: Redis at %s does not answer (%s) — requests are served without the cache until it "
                    "does (this line: once per worker)",
                    self.redis.where,
                    type(e).__name__,
                )
            return None
        if self.down:
            self.down = False
            log.warning("cache: Redis at %s answers again — the cache is back", self.redis.where)
        return result
