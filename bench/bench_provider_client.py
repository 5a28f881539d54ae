"""What one provider call costs the worker in its HTTP client: CPU µs per call of aiohttp as the kit uses it
(gateway_kit.upstream: one pooled session, the endpoint's timeouts, the JSON body and answer) against the least
any Python client on the same event loop could spend: a bare HTTP/1.1 keep-alive connection that writes the
request and parses the answer with httptools (uvicorn's parser), and nothing else.

    .venv/bin/python bench/bench_provider_client.py

Both post the same chat body to the kit's fake upstream (0 ms, its own process) over loopback, `--concurrency`
calls at once on uvloop (the workers' loop), in alternating rounds; only this process's CPU counts, not the
fake's. The bare client is a measuring stick, not a client the kit could ship: no TLS, proxies, redirects,
compression, chunked bodies or timeouts. The difference is the most that replacing aiohttp could save per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import httptools
import uvloop

from gateway_kit import upstream
from gateway_kit.procs import free_port
from lib import Servers, chat_body, markdown_table


class BareConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, the answer's body by Content-Length."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.done: asyncio.Future | None = None
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done.set_result((self.parser.get_status_code(), b"".join(self.body)))

    async def post(self, head: bytes, payload: dict) -> tuple[int, dict]:
        body = json.dumps(payload).encode()
        self.body, self.done = [], asyncio.get_running_loop().create_future()
        self.transport.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status, answer = await self.done
        return status, json.loads(answer)


async def run_aiohttp(url: str, payload: dict, calls: int, concurrency: int) -> None:
    session = upstream._session_for_this_worker()  # the kit's own: pool, keep-alive, read buffer, no cookies
    headers = {"Authorization": "Bearer bench", "Accept-Encoding": "gzip, deflate, identity"}
    timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)  # as upstream.call passes the endpoint's

    async def one() -> None:
        async with asyncio.timeout(30):  # upstream.call's first-byte timeout
            response = await session.post(url, json=payload, headers=headers, timeout=timeout, allow_redirects=False)
        async with response:
            assert response.status == 200, response.status
            await response.json()

    try:
        await calls_at_once(one, calls, concurrency)
    finally:
        await upstream.close()


async def run_bare(url: str, payload: dict, calls: int, concurrency: int) -> None:
    host, port = url.split("//")[1].split("/")[0].split(":")
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer bench\r\n"
        "Content-Type: application/json\r\nAccept-Encoding: gzip, deflate, identity\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    idle = [(await loop.create_connection(BareConnection, host, int(port)))[1] for _ in range(concurrency)]

    async def one() -> None:
        connection = idle.pop()
        status, _ = await connection.post(head, payload)
        assert status == 200, status
        idle.append(connection)

    await calls_at_once(one, calls, concurrency)
    for connection in idle:
        connection.transport.close()


async def calls_at_once(one, calls: int, concurrency: int) -> None:
    async def worker(n: int) -> None:
        for _ in range(n):
            await one()

    await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))


def cpu_us_per_call(client, url: str, payload: dict, calls: int, concurrency: int) -> float:
    started = time.process_time()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(client(url, payload, calls, concurrency))
    return (time.process_time() - started) * 1e6 / (calls // concurrency * concurrency)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000, help="calls per round (default 4000)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls at once (default 16)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    args = parser.parse_args()
    payload = json.loads(chat_body("[[latency:0]] How fast is this gateway?", model="gpt-4o-mini"))
    clients = {"aiohttp (as gateway_kit.upstream)": run_aiohttp, "bare HTTP/1.1 + httptools": run_bare}
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    work = Path(tempfile.mkdtemp(prefix="bench-client-"))
    with Servers(work) as servers:
        url = servers.fake(free_port()) + "/v1/chat/completions"
        for round_ in range(args.rounds):
            for name in list(clients) if round_ % 2 == 0 else reversed(clients):
                cpu[name].append(cpu_us_per_call(clients[name], url, payload, args.calls, args.concurrency))
    floor = statistics.median(cpu["bare HTTP/1.1 + httptools"])
    rows = [[name, f"{statistics.median(v):.1f}", f"{statistics.median(v) / floor:.2f}x"] for name, v in cpu.items()]
    print(
        f"{args.calls} calls per round, {args.concurrency} at once, {args.rounds} rounds, median:\n\n"
        + markdown_table(["client", "CPU µs/call", "vs bare"], rows)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
