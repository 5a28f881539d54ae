"""Scripted fakes for unit tests: a clock moved by hand and an in-memory Redis link with the breaker's scripts."""

from __future__ import annotations

from gateway_kit import resilience
from gateway_kit.shared_redis import DOWN_PAUSE


class Clock:
    """time.monotonic() for a test: starts at 1000, moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRedis:
    """The parts of gateway_kit.shared_redis.RedisLink a Breaker uses, on a dict with expiries in ms.

    `commands` counts round trips; `down = True` makes every command raise, as a dead Redis would."""

    timeout = 0.5
    where = "fake:6379"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.data: dict[str, tuple[str, float | None]] = {}  # key -> (value, expires at, in clock seconds)
        self.commands = 0
        self.down = False
        self._down_until = -float("inf")

    # ---- RedisLink's interface
    def available(self) -> bool:
        return self.clock() >= self._down_until

    def failed(self) -> None:
        self._down_until = self.clock() + DOWN_PAUSE

    def client(self) -> FakeRedis:
        return self

    def script(self, text: str):
        run = {resilience.READ_SCRIPT: self._read, resilience.FAIL_SCRIPT: self._fail}[text]

        async def call(keys, args=()):
            self._command()
            return run(list(keys), [str(a) for a in args])

        return call

    async def set(self, key: str, value, px: int, nx: bool = False):
        self._command()
        if nx and self._get(key) is not None:
            return None
        self.data[key] = (str(value), self.clock() + px / 1000)
        return True

    async def delete(self, *keys: str) -> int:
        self._command()
        return sum(self.data.pop(k, None) is not None for k in keys)

    # ---- what a test looks at
    def live_keys(self) -> list[str]:
        return [k for k in list(self.data) if self._get(k) is not None]

    def flush_breakers(self) -> None:
        """What an operator (or the test-isolation fixture) does: delete every gateway:circuit:* key."""
        for key in [k for k in self.data if k.startswith(resilience.CIRCUIT_PREFIX)]:
            del self.data[key]

    # ---- the scripts, as the Lua in gateway_kit.resilience does them
    def _read(self, keys, args):
        return [self._pttl(keys[0]), int(self._get(keys[1]) or 0)]

    def _fail(self, keys, args):
        open_key, failures_key, probe_key = keys
        threshold, open_ms, keep_ms, probe = int(args[0]), int(args[1]), int(args[2]), args[3] == "1"
        n = int(self._get(failures_key) or 0) + 1
        self.data[failures_key] = (str(n), self.clock() + keep_ms / 1000)
        opened = 0
        if probe:
            self.data.pop(probe_key, None)
            self.data[open_key] = (str(n), self.clock() + open_ms / 1000)
            opened = 1
        elif n >= threshold and self._get(open_key) is None:
            self.data[open_key] = (str(n), self.clock() + open_ms / 1000)
            opened = 1
        return [n, self._pttl(open_key), opened]

    def _command(self) -> None:
        self.commands += 1
        if self.down:
            raise ConnectionError("fake Redis is down")

    def _get(self, key: str) -> str | None:
        found = self.data.get(key)
        if found is None:
            return None
        value, expires = found
        if expires is not None and self.clock() >= expires:
            del self.data[key]
            return None
        return value

    def _pttl(self, key: str) -> int:
        if self._get(key) is None:
            return -2
        return round((self.data[key][1] - self.clock()) * 1000)
