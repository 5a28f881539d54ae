"""Who may use the admin page: the password, signed sessions, CSRF tokens and the login throttle.

No state leaves the process but the session cookie, and the cookie holds no secret: a session id, its expiry
and the name the admin gave, signed with HMAC-SHA256 under a key made at start (os.urandom), so a restart of
the admin page ends every session. The CSRF token of a session is another HMAC of its id under the same key:
forms carry it, every POST but the login checks it (the cookie is also SameSite=Strict, so a browser never
sends it with a request another site starts). docs/admin.md has the whole model.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway_kit.keys import KEY_PREFIX
from gateway_kit.secrets import key_problem

MIN_PASSWORD = 12  # characters


def password_problem(value: str) -> str | None:
    """Why `value` cannot be the admin password (never containing it), or None."""
    problem = key_problem(value)
    if problem:
        return problem
    if len(value) < MIN_PASSWORD:
        return f"is shorter than {MIN_PASSWORD} characters"
    if value.startswith(KEY_PREFIX):
        return f"looks like a client key ({KEY_PREFIX}...): the admin password must be a secret of its own"
    return None


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Password:
    """The admin password, kept as its digest; compared in constant time."""

    def __init__(self, value: str) -> None:
        self._digest = _digest(value)

    def matches(self, given: str) -> bool:
        return hmac.compare_digest(_digest(given), self._digest)


@dataclass(frozen=True)
class Session:
    id: str
    who: str
    expires: int  # unix time


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


class Sessions:
    """Signed, expiring session cookies (`id.expires.who.signature`) and their CSRF tokens.

    Logging out ends a session before its expiry: its id is remembered until then (at most one entry per
    session issued within the last `ttl` seconds)."""

    def __init__(self, ttl: float, key: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.clock = clock
        self._key = key or secrets.token_bytes(32)
        self._ended: dict[str, int] = {}

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def issue(self, who: str) -> str:
        payload = f"{secrets.token_urlsafe(16)}.{int(self.clock() + self.ttl)}.{_b64(who)}"
        return f"{payload}.{self._sign(payload)}"

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, or None: missing, forged, expired or logged out."""
        if not cookie or cookie.count(".") != 3:
            return None
        payload, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        sid, expires, who = payload.split(".")
        try:
            session = Session(sid, _unb64(who), int(expires))
        except ValueError:
            return None
        if session.expires <= self.clock() or sid in self._ended:
            return None
        return session

    def end(self, session: Session) -> None:
        now = self.clock()
        self._ended = {sid: until for sid, until in self._ended.items() if until > now}
        self._ended[session.id] = session.expires

    def csrf_token(self, session: Session) -> str:
        return self._sign("csrf." + session.id)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), token)


class LoginThrottle:
    """Failed logins allowed: `attempts` per address in `window` seconds, and `total` from all addresses
    together (so many addresses cannot guess faster). Memory is bounded: at most `addresses` addresses are
    remembered, the one that failed longest ago forgotten first. A successful login forgets its address."""

    def __init__(
        self,
        attempts: int = 5,
        window: float = 300.0,
        total: int = 50,
        addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempts, self.window, self.addresses, self.clock = attempts, window, addresses, clock
        self._by_address: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque(maxlen=total)

    def _wait(self, times: deque[float], now: float) -> float:
        while times and times[0] <= now - self.window:
            times.popleft()
        return times[0] + self.window - now if len(times) == times.maxlen else 0.0

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again; 0 when it may now."""
        now = self.clock()
        times = self._by_address.get(address)
        mine = self._wait(times, now) if times is not None else 0.0
        return max(mine, self._wait(self._all, now))

    def failed(self, address: str) -> None:
        now = self.clock()
        times = self._by_address.pop(address, None)
        if times is None:
            times = deque(maxlen=self.attempts)
            while len(self._by_address) >= self.addresses:
                self._by_address.popitem(last=False)
        times.append(now)
        self._by_address[address] = times  # the newest failure last: the oldest are forgotten first
        self._all.append(now)

    def succeeded(self, address: str) -> None:
        self._by_address.pop(address, None)

    def __len__(self) -> int:
        return len(self._by_address)
