"""Drive an ASGI app or middleware in-process: one request in, what the client would see out."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    seen_by_app: list[dict] = field(default_factory=list)  # the scopes that reached the inner app

    def json(self):
        return json.loads(self.body)


def request(
    app, path: str, body: bytes | dict = b"", *, method: str = "POST", headers: dict[str, str] | None = None
) -> Answer:
    """Run one HTTP request through `app` on a fresh event loop; the body is sent in one message."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    sent: list[dict] = []
    received = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if received:
            return received.pop(0)
        await asyncio.Event().wait()  # no disconnect: the client waits for its answer

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return Answer(
        start["status"],
        {k.decode(): v.decode() for k, v in start.get("headers", ())},
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
    )


class Echo:
    """An inner app that answers 200 {"ok": true} and remembers every scope (and body) it was given."""

    def __init__(self) -> None:
        self.scopes: list[dict] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        message = await receive()
        self.scopes.append(scope)
        self.bodies.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    def header(self, name: str, index: int = -1) -> str | None:
        return next((v.decode() for k, v in self.scopes[index]["headers"] if k == name.encode()), None)
