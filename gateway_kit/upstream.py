"""One keep-alive HTTP client per worker for every provider call.

MLflow 3.17.2 opens a new aiohttp ClientSession for each upstream call
(mlflow.gateway.providers.utils._aiohttp_post), so every request pays a new TCP connection and, against
a real provider, a new TLS handshake. The kit puts a function with the same contract in its place: the
same header hygiene (Accept-Encoding, Content-Encoding and MLflow's own auth header are not forwarded),
no redirects followed, no cookies kept, but one pooled session per worker process, created in the worker's
event loop on first use and closed when the worker shuts down.

In place of MLflow's single total timeout (MLFLOW_GATEWAY_ROUTE_TIMEOUT_SECONDS) each call gets its
endpoint's connect, first-byte and total timeouts, retries on 429/5xx (resilience.retryable) with jittered
backoff (honouring Retry-After) before anything is handed to MLflow, and the circuit breaker of the
provider's model (gateway_kit.resilience; the endpoint comes from the contextvar resilience.CURRENT that the
Fallback middleware sets).

Each call carries the request's W3C trace headers (traceparent, tracestate: gateway_kit.traces) and is
reported to the worker's events (upstream_called: base URL, status, seconds; metrics listens), and the breakers
report their changes there too (circuit_changed). With the shared client off, MLflow's own function is wrapped
to do the same two (time_calls). Both change MLflow's function through one patch point,
gateway_kit.private_api.ProviderPost.

Settings (gateway_kit.settings, given to install()): GATEWAY_UPSTREAM_POOL (connections per worker, default
100), GATEWAY_UPSTREAM_KEEPALIVE (seconds an idle connection is kept, default 30).
If the pinned MLflow no longer has the function, the kit keeps MLflow's behaviour and says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from gateway_kit import private_api, resilience, traces
from gateway_kit.events import NOBODY, Events

log = logging.getLogger("gateway_kit.upstream")

_session = None  # this worker's aiohttp.ClientSession
_pool = {"limit": 100, "keepalive": 30.0}  # GATEWAY_UPSTREAM_POOL and GATEWAY_UPSTREAM_KEEPALIVE, given to install()


def _session_for_this_worker():
    global _session
    if _session is None or _session.closed:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=_pool["limit"], keepalive_timeout=_pool["keepalive"], ttl_dns_cache=60)
        # read_bufsize as MLflow's: some providers send very long SSE `data:` lines. No cookie jar: MLflow's
        # session per call keeps no cookie, and this one session carries every team's calls.
        _session = aiohttp.ClientSession(connector=connector, read_bufsize=2**20, cookie_jar=aiohttp.DummyCookieJar())
    return _session


async def close() -> None:
    global _session
    if _session is not None:
        session, _session = _session, None
        await session.close()


def close_with(app) -> None:
    """Close this worker's session when the app shuts down (after MLflow's own shutdown)."""
    private_api.on_shutdown(app, close)


def install(pool: int = 100, keepalive: float = 30.0, events: Events = NOBODY) -> bool:
    """Replace MLflow's per-call session with the shared one; False (and a warning) if MLflow changed.
    `pool`: connections per worker (GATEWAY_UPSTREAM_POOL); `keepalive`: seconds an idle one is kept
    (GATEWAY_UPSTREAM_KEEPALIVE); `events`: the worker's registry, told of each call and breaker change."""
    _pool.update(limit=pool, keepalive=keepalive)
    post = private_api.PROVIDER_POST
    if not post.replaceable():
        log.warning(
            "mlflow.gateway.providers.utils._aiohttp_post is missing or changed (parameters: %s); "
            "upstream connections are not shared, each provider call opens its own",
            post.parameters(),
        )
        return False
    return post.share(lambda original: shared_post_for(original, events))


def shared_post_for(original, events: Events):
    """The kit's replacement of MLflow's function `original`, with the same contract, reporting to `events`."""
    stripped, accept_encoding, upstream_protection_enabled, append_to_uri_path = private_api.provider_post_parts()

    def shared_post(
        headers: dict[str, str], base_url: str, path: str, payload: dict[str, Any], *, ssrf_protect: bool = True
    ):
        """MLflow's function's contract: an async context manager for the provider's response."""
        if ssrf_protect and upstream_protection_enabled():
            # MLflow's SSRF guard needs its own resolver per call: keep its function (and its errors) for those.
            return original(traces.trace_headers(headers), base_url, path, payload, ssrf_protect=True)
        request_headers = {k: v for k, v in headers.items() if k.lower() not in stripped}
        request_headers["Accept-Encoding"] = accept_encoding
        trace = traces.CURRENT.get()
        if trace is not None:
            request_headers.update(trace.headers())
        return call(append_to_uri_path(base_url, path), base_url, payload, request_headers, events)

    return shared_post


def time_calls(events: Events) -> bool:
    """With the shared client off: MLflow's own provider function, wrapped to send the request's trace headers
    and report each call to `events` (upstream_called) as the shared client does. False (and a warning) if
    MLflow has no such function."""
    perf_counter = time.perf_counter

    def timed(original):
        @asynccontextmanager
        async def timed_post(headers, base_url, path, payload, *, ssrf_protect: bool = True):
            status = "error"
            started = perf_counter()
            headers = traces.trace_headers(headers)
            try:
                async with original(headers, base_url, path, payload, ssrf_protect=ssrf_protect) as response:
                    status = str(response.status)
                    yield response
            finally:
                events.upstream_called(base_url, status, perf_counter() - started)

        return timed_post

    if not private_api.PROVIDER_POST.time(timed):
        log.warning(
            "mlflow.gateway.providers.utils._aiohttp_post is missing; provider calls are not timed "
            "and carry no trace headers"
        )
        return False
    return True


@asynccontextmanager
async def call(url: str, base_url: str, payload: dict[str, Any], headers: dict[str, str], events: Events = NOBODY):
    """POST to the provider under the current endpoint's policy; yields the response MLflow reads.

    429/5xx answers are retried here, before MLflow (and so the client) sees a byte of them. Timeouts raise
    resilience.UpstreamTimeout naming which one ran out; an open circuit raises CircuitOpenError."""
    import aiohttp
    from fastapi import HTTPException

    attempt = resilience.CURRENT.get()
    policy = attempt.policy if attempt else resilience.Policy.default(resilience.settings())
    endpoint = attempt.endpoint if attempt else None
    breaker = resilience.circuit_for(base_url, payload, events)
    try:
        ticket = await breaker.before_call()
    except resilience.CircuitOpenError:
        if attempt:
            attempt.failure = "circuit_open"
        raise
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + policy.total
    session = _session_for_this_worker()
    ok: bool | None = None
    error: BaseException | None = None
    response = answered = None
    try:
        retry = 0
        while True:
            remaining = deadline - loop.time()
            first_byte = min(policy.first_byte, remaining)
            first_byte_at = loop.time() + first_byte
            timeout = aiohttp.ClientTimeout(total=remaining, sock_connect=policy.connect)
            try:
                async with asyncio.timeout(first_byte):
                    response = await session.post(
                        url, json=payload, headers=headers, timeout=timeout, allow_redirects=False
                    )
            except aiohttp.ConnectionTimeoutError as e:
                raise resilience.UpstreamTimeout("connect", policy.connect, endpoint) from e
            except asyncio.TimeoutError as e:
                kind = "first_byte" if policy.first_byte <= remaining else "total"
                raise resilience.UpstreamTimeout(
                    kind, first_byte if kind == "first_byte" else policy.total, endpoint
                ) from e
            if retry >= policy.retries or not resilience.retryable(response.status):
                break
            body = await response.read()  # small error body; kept, so MLflow can still read it
            wait = resilience.retry_wait(response.status, response.headers, body, retry, policy, deadline - loop.time())
            if wait is None:
                break
            response.release()
            retry += 1
            await asyncio.sleep(wait)
        if response.content_type == "text/event-stream":
            # The first event too must come within first_byte of sending the request.
            response.content = _FirstEvent(
                response.content, max(first_byte_at - loop.time(), 0.001), first_byte, endpoint
            )
        answered = response
        async with response:
            yield response
        ok = resilience.outcome(response.status)
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except HTTPException:  # MLflow's error for an error answer: a 5xx counts, a 4xx (429 too) does not
        ok = resilience.outcome(response.status) if response is not None else False
        raise
    except resilience.UpstreamTimeout as e:
        ok, error = False, e
        raise
    except asyncio.TimeoutError as e:  # aiohttp's total timeout, while MLflow reads the answer
        ok, error = False, resilience.UpstreamTimeout("total", policy.total, endpoint)
        raise error from e
    except BaseException as e:
        ok, error = False, e
        raise
    finally:
        if attempt and ok is False and attempt.failure is None:
            attempt.failure = _failure(error, response)
        await breaker.record(ok, ticket)
        status = str(answered.status) if answered is not None else "error"
        events.upstream_called(base_url, status, loop.time() - started)


def _failure(error: BaseException | None, response) -> str:
    """Why a provider call failed, for the usage record's fallback_reason."""
    if error is not None:
        return resilience.error_for(error)[0]
    return f"http_{response.status}" if response is not None else "error"


class _FirstEvent:
    """A stream's body reader whose first line must arrive within the first-byte timeout. Every later line
    comes from the provider's reader directly: one call per line, no wrapper in between."""

    def __init__(self, reader, seconds: float, limit: float, endpoint: str | None) -> None:
        self._reader, self._seconds, self._limit, self._endpoint = reader, seconds, limit, endpoint

    def __getattr__(self, name: str):
        return getattr(self._reader, name)

    async def readline(self) -> bytes:
        self.readline = self._reader.readline  # the first line only is timed
        try:
            async with asyncio.timeout(self._seconds):
                return await self._reader.readline()
        except asyncio.TimeoutError as e:
            raise resilience.UpstreamTimeout("first_byte", self._limit, self._endpoint) from e

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        if line := await self.readline():
            return line
        raise StopAsyncIteration
