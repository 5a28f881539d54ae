"""The fallback middleware's own cost per request, in isolation: a trivial ASGI app bare and wrapped.

    PYTHONPATH=. python bench/bench_resilience.py
"""

import asyncio
import time

from gateway_kit.resilience import Fallback, Policy, Settings

BODY = b'{"model":"chat","messages":[]}'


async def app(scope, receive, send):
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b'{"ok":1}', "more_body": False})


async def receive():
    return {"type": "http.request", "body": BODY, "more_body": False}


async def send(message):
    pass


async def main(n: int = 50_000) -> None:
    policy = Policy.default(Settings())
    wrapped = Fallback(app, {"chat": policy}, policy)
    for path in ("/gateway/chat/invocations", "/v1/chat/completions"):
        scope = {"type": "http", "path": path, "headers": [], "state": {}}
        for target, label in ((app, "bare"), (wrapped, "with Fallback")):
            started = time.perf_counter()
            for _ in range(n):
                await target(dict(scope), receive, send)
            print(f"{path:28} {label:14} {(time.perf_counter() - started) / n * 1e6:6.2f} us/request")


if __name__ == "__main__":
    asyncio.run(main())
