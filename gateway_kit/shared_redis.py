"""The worker's Redis client for the state the kit shares across workers and replicas: limits, circuit breakers.

One `RedisLink` per worker process and Redis URL (`link(url, timeout)`), used by gateway_kit.limits and
gateway_kit.resilience alike, so both see Redis the same way:

- short timeouts: connect and read GATEWAY_REDIS_TIMEOUT (0.5 s), one immediate retry on a pooled connection
  that died with a Redis restart, no backoff;
- after a failure Redis is left alone for 1 s (DOWN_PAUSE): `available()` is False meanwhile, so a dead Redis
  costs one timeout per second per worker, never one per request.

The redis.asyncio client is made on first use in the running event loop (and made again in another loop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gateway_kit.settings import Settings

DOWN_PAUSE = 1.0  # seconds Redis is left alone after a failure


def redis_where(url: str) -> str:
    """host:port of a Redis URL, never its password."""
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}:{parts.port or 6379}"


class RedisLink:
    """A Redis URL's client in this worker, and whether Redis answered lately."""

    def __init__(self, url: str, timeout: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.url, self.timeout, self.clock = url, timeout, clock
        self.where = redis_where(url)
        self._redis = None
        self._loop = None
        self._scripts: dict[str, object] = {}
        self._down_until = -float("inf")

    def client(self):
        """The redis.asyncio client for the running event loop."""
        loop = asyncio.get_running_loop()
        if self._redis is None or self._loop is not loop:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            self._redis = Redis.from_url(
                self.url,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 1),
                health_check_interval=0,
            )
            self._loop, self._scripts = loop, {}
        return self._redis

    def script(self, text: str):
        """A Lua script registered on the client (EVALSHA, loaded again after a Redis restart)."""
        client = self.client()
        found = self._scripts.get(text)
        if found is None:
            found = self._scripts[text] = client.register_script(text)
        return found

    def available(self) -> bool:
        return self.clock() >= self._down_until

    def failed(self) -> None:
        """Redis did not answer: leave it alone for DOWN_PAUSE."""
        self._down_until = self.clock() + DOWN_PAUSE


_links: dict[tuple[str, float], RedisLink] = {}


def link(url: str, timeout: float) -> RedisLink:
    """This process's link to `url`: one client (and one down pause) for limits and breakers together."""
    found = _links.get((url, timeout))
    if found is None:
        found = _links[url, timeout] = RedisLink(url, timeout)
    return found


def link_for(s: Settings) -> RedisLink | None:
    """The link to GATEWAY_REDIS_URL (timeouts GATEWAY_REDIS_TIMEOUT, default 0.5 s); None when it is unset."""
    return link(s.redis_url, s.redis_timeout) if s.redis_url else None
