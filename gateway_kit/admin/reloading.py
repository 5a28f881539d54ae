"""The admin page's Reload: config.yaml checked by one replica, then rolled to every replica, one at a time.

The page runs apart from the replicas (its own process or container), so it cannot signal their gunicorn
masters as scripts/reload.sh does: it asks each replica over HTTP with the reload token (gateway_kit.reload's
POST /-/reload/check and POST /-/reload). The roll:

1. One replica checks GATEWAY_CONFIG with the start-up checks, in its own environment (it has the provider keys,
   the page has not): refused, the page shows the line and reason and nothing is touched; good, it answers the
   hash the replicas will serve.
2. Replica by replica: POST /-/reload (its master checks the file again, starts new workers on it and lets the
   old ones finish their requests, streams too), then wait, bounded, until its GET /ready reports that hash
   (gateway_kit.reload.served). The others serve meanwhile. A replica that does not follow stops the roll: the
   ones after it keep their config, and the page says which.

A replica that already serves the hash is left alone, so pressing Reload twice reloads nothing the second time.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway_kit import reload

Call = Callable[[str, str], tuple[int, dict]]  # (address, path) -> (HTTP status, JSON body); status 0: no answer


@dataclass(frozen=True)
class ReplicaReload:
    address: str
    ok: bool
    outcome: str  # what happened, for the page


@dataclass(frozen=True)
class Roll:
    """What a press of Reload did."""

    result: str  # "reloaded", "refused" (the config: nothing touched), "failed" (see problem and replicas), "busy"
    config_hash: str | None = None  # the hash the check answered
    problem: str = ""  # refused: the checks' lines (file:line: reason); failed: what went wrong
    replicas: list[ReplicaReload] = field(default_factory=list)


class Reloader:
    """Rolls a config out to the replicas with the reload token (at most one roll at a time)."""

    def __init__(
        self,
        token: str,
        follow: float = 120.0,
        poll: float = 1.0,
        call: Call | None = None,
        served: Callable[[str], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.follow, self.poll, self.clock, self.sleep = follow, poll, clock, sleep
        self._call = call or _http(token)
        self._served = served or (lambda address: reload.served(f"http://{address}"))
        self._rolling = threading.Lock()

    def roll(self, addresses: list[str]) -> Roll:
        """Check on the first replica that answers, then reload each in turn (blocking: run it in a thread)."""
        if not self._rolling.acquire(blocking=False):
            return Roll("busy", problem="another reload is running: wait for it, then look at the page again")
        try:
            return self._roll(addresses)
        finally:
            self._rolling.release()

    def _roll(self, addresses: list[str]) -> Roll:
        if not addresses:
            return Roll("failed", problem="no replica found (GATEWAY_ADMIN_REPLICAS): nothing reloaded")
        unanswered = []
        for address in addresses:
            status, body = self._call(address, reload.CHECK_PATH)
            if status == 200 and isinstance(body.get("config_hash"), str):
                expected = body["config_hash"]
                break
            if status == 422:
                return Roll("refused", problem=_message(body))
            unanswered.append(f"{address}: {_what(status, body)}")
        else:
            return Roll("failed", problem="no replica could check the config: " + "; ".join(unanswered))
        done: list[ReplicaReload] = []
        for at, address in enumerate(addresses):
            if self._served(address) == expected:
                done.append(ReplicaReload(address, True, f"serves config {expected} (already did)"))
                continue
            status, body = self._call(address, reload.RELOAD_PATH)
            if status != 202:
                done.append(ReplicaReload(address, False, f"not reloaded: {_what(status, body)}"))
            else:
                done.append(self._follows(address, expected))
            if not done[-1].ok:
                skipped = [
                    ReplicaReload(a, False, "not reloaded: the roll stopped before it") for a in addresses[at + 1 :]
                ]
                return Roll("failed", expected, f"{address} did not take config {expected}", done + skipped)
        return Roll("reloaded", expected, replicas=done)

    def _follows(self, address: str, expected: str) -> ReplicaReload:
        """Wait (at most `follow` seconds) until the replica's /ready reports `expected`."""
        started = self.clock()
        while (now := self._served(address)) != expected:
            if self.clock() - started >= self.follow:
                return ReplicaReload(
                    address, False, f"still serves {now} {self.follow:.0f} s after the reload: see the replica's log"
                )
            self.sleep(self.poll)
        return ReplicaReload(address, True, f"serves config {expected} ({self.clock() - started:.0f} s)")


def _message(body: dict) -> str:
    error = body.get("error")
    return str(error.get("message", "")) if isinstance(error, dict) else ""


def _what(status: int, body: dict) -> str:
    if status == 0:
        return body.get("unreachable", "no answer")
    if status == 404:
        return "HTTP 404: this replica has no reload token (GATEWAY_RELOAD_TOKEN), or is older than the page"
    if status in (401, 403):
        return f"HTTP {status}: this replica has another reload token than the page"
    return f"HTTP {status}" + (f": {_message(body)}" if _message(body) else "")


def _http(token: str) -> Call:
    """POST to a replica with the token; its JSON answer. Straight to it: no HTTP(S)_PROXY."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(address: str, path: str) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://{address}{path}", data=b"", method="POST", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            # The check imports mlflow in a child process of the replica: seconds, more on a busy host.
            with opener.open(request, timeout=120) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except OSError as e:
            return 0, {"unreachable": f"no answer ({type(e).__name__})"}
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        return status, body if isinstance(body, dict) else {}

    return call
