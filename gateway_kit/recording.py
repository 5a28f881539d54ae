"""ASGI middleware: one usage record per request, for every route, streams included.

It watches what passes (never holds a response back): the request's endpoint (gateway_kit.request: the
path names it, or on /v1/* the body's "model", so there it reads the body first, once for every layer),
the response status, and the response bytes, from which it reads the model and the usage as the provider
answered. A stream is read chunk by chunk as it goes out; one cut by the client or the upstream is recorded
with what arrived, marked partial. When the response is done the record goes to the worker's events
(usage_recorded, gateway_kit.events): the usage log (stdout and the ledger), metrics, and limits' token and
dollar counters listen.

Turn the stdout and ledger records off with GATEWAY_USAGE_RECORDS=off (the ledger alone with
GATEWAY_LEDGER_DIR=off).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from gateway_kit.cache import HIT
from gateway_kit.events import Events
from gateway_kit.pricing import Pricer, Usage
from gateway_kit.request import (
    CACHE,
    DIALECT,
    FALLBACK_REASON,
    REQUEST_ID,
    SERVED_BY,
    TRACE,
    header,
    request_body,
    request_endpoint,
    route_of,
    state_of,
)
from gateway_kit.usage import REFUSED, StreamUsage, UsageRecord, usage_from_object, utc_now_iso

log = logging.getLogger("gateway_kit.recording")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class EndpointInfo:
    provider: str | None
    model: str | None


def endpoint_infos(config: dict) -> dict[str, EndpointInfo]:
    """{endpoint or route name: provider and configured model} from a gateway config mapping."""
    infos = {}
    for endpoint in config.get("endpoints") or []:
        model = endpoint.get("model") or {}
        provider = model.get("provider")
        if provider == "openai" and (model.get("config") or {}).get("openai_api_type") in ("azure", "azuread"):
            provider = "azure"
        infos[endpoint["name"]] = EndpointInfo(provider, model.get("name"))
    for route in config.get("routes") or []:
        infos[route["name"]] = EndpointInfo(None, None)
    return infos


def value_after(body: bytes, key: bytes, last: bool = False):
    """The JSON value that follows `"key":` in body (first or last occurrence), or None.

    An unescaped `"key":` can only be a real key: inside a JSON string its quotes would be escaped. This
    reads the model and usage of a response without parsing a large body (embeddings) in full."""
    at = body.rfind(key) if last else body.find(key)
    if at < 0:
        return None
    try:
        return _DECODER.raw_decode(body[at + len(key) :].lstrip().decode("utf-8", "replace"))[0]
    except ValueError:
        return None


def string_after(body: bytes, key: bytes) -> str | None:
    """The JSON string that follows the first `"key":` in body, or None: value_after for a string, without
    decoding the rest of a long body."""
    at = body.find(key)
    if at < 0:
        return None
    start = body.find(b'"', at + len(key)) + 1
    end = body.find(b'"', start)
    if start == 0 or end < 0 or body[at + len(key) : start - 1].strip():
        return None  # not a string value
    raw = body[start:end]
    if b"\\" in raw:  # an escape (perhaps of a quote): read the string properly
        value = value_after(body, key)
        return value if isinstance(value, str) else None
    return raw.decode("utf-8", "replace")


class UsageRecorder:
    """Makes one UsageRecord per request and reports it to `events` (usage_recorded)."""

    def __init__(
        self,
        app,
        endpoints: dict[str, EndpointInfo],
        replica: str,
        pricer: Pricer,
        events: Events,
        config_hash: str | None = None,
    ) -> None:
        self.app = app
        self.endpoints = endpoints
        self.replica = replica
        self.pricer = pricer
        self.events = events
        self.config_hash = config_hash  # the worker's config (gateway_kit.reload), in every record

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = route_of(scope["path"])
        if not route.llm:
            return await self.app(scope, receive, send)
        started, wall = time.perf_counter(), time.time()
        path = scope["path"]
        state = {"status": 0, "stream": False, "disconnected": False, "ttft": None, "done": False}
        response = bytearray()
        stream_usage: StreamUsage | None = None

        async def watch_receive():
            message = await receive()
            if message["type"] == "http.disconnect":
                state["disconnected"] = True
            return message

        async def watch_send(message):
            nonlocal stream_usage
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"content-type" and value.startswith(b"text/event-stream"):
                        state["stream"] = True
                        stream_usage = StreamUsage()
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                if chunk:
                    if state["ttft"] is None:
                        state["ttft"] = (time.perf_counter() - started) * 1000
                    if stream_usage is not None:
                        stream_usage.feed_bytes(chunk)
                    else:
                        response.extend(chunk)
                if not message.get("more_body", False):
                    state["done"] = True
            await send(message)

        error = None
        try:
            app_receive = watch_receive
            if route.model_in_body:  # the endpoint is the body's "model": read it now, once for every layer
                _, app_receive = await request_body(scope, watch_receive)  # a client gone mid-body: the app sees it
            await self.app(scope, app_receive, watch_send)
        except BaseException as e:
            error = "upstream_stream_cut" if state["stream"] else f"exception_{type(e).__name__}"
            raise
        finally:
            try:
                self.record(scope, path, state, bytes(response), stream_usage, error, wall, started)
            except Exception:  # accounting must never turn into the request's failure
                log.exception("usage record for %s could not be made", path)

    def record(self, scope, path, state, response, stream_usage, error, wall, started) -> None:
        endpoint = request_endpoint(scope)
        kit_state = scope["state"]
        served_by = kit_state.get(SERVED_BY)  # a fallback answered (gateway_kit.resilience): its model, price
        info = self.endpoints.get(served_by or endpoint) if endpoint else None
        status = state["status"] or (499 if state["disconnected"] else 500)  # 499: nginx's "client went away"
        if status == 499 and error is None:
            error = "client_disconnected"
        if stream_usage is not None:
            stream_usage.close()
            usage, model = stream_usage.usage, stream_usage.model
        else:
            usage = usage_from_object(value_after(response, b'"usage":', last=True))
            model = string_after(response, b'"model":')
        partial = state["stream"] and status < 400 and (usage is None or not state["done"] or error is not None)
        if error is None and status >= 400:
            error = f"http_{status}"
        elif partial and error is None:
            error = "client_disconnected" if state["disconnected"] else "stream_cut"
        usage = usage or Usage()
        model = model or (info.model if info else None)
        provider = info.provider if info else None
        cost = self.pricer.cost(model, provider, usage) if (usage.prompt_tokens or usage.completion_tokens) else None
        cost_usd = round(cost.usd, 12) if cost and cost.usd is not None else (None if cost else 0.0)
        cache = kit_state.get(CACHE)
        saved_usd = None
        if cache == HIT:  # answered from the response cache: the provider's price is what it saved
            saved_usd, cost_usd = cost_usd, 0.0
        record = UsageRecord(
            ts=utc_now_iso(wall),
            request_id=kit_state.get(REQUEST_ID),
            route=path,
            endpoint=endpoint,
            provider=provider,
            model=model,
            status=status,
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            ttft_ms=round(state["ttft"], 2) if state["stream"] and state["ttft"] is not None else None,
            stream=state["stream"],
            partial=partial,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            client=header(scope, b"x-gateway-client"),
            replica=self.replica,
            cost_usd=cost_usd,
            price_source=cost.source if cost else "no tokens",
            served_by=served_by,
            fallback_reason=kit_state.get(FALLBACK_REASON),
            error=error,
            cache=cache,
            saved_usd=saved_usd,
            api=kit_state.get(DIALECT),
            trace_id=trace.trace_id if (trace := kit_state.get(TRACE)) else None,
            config_hash=self.config_hash,
        )
        self.events.usage_recorded(record)


class Refusals:
    """One usage record for each request the gateway refuses itself, before any endpoint runs: no or an unknown
    gateway key (401, gateway_kit.keys), over a limit (429) or limits that cannot be checked (503,
    GATEWAY_LIMITS_ON_REDIS_DOWN=closed; gateway_kit.limits). Those middlewares sit outside UsageRecorder and
    call this after their answer, so the ledger has a record for every request nginx sent to a replica, and
    an admitted request pays nothing for it.

    The record: the request id, route, endpoint when the path (or an already read /v1 body) names it, the
    client when its key was known, the status, 0 tokens, $0, and `error` "refused:<why>": the error type the
    client got (gateway_key_required, invalid_gateway_key, limits_unavailable), and for a limit also which one
    (rate_limit_exceeded:client_calls, budget_exceeded:client_usd_per_day ...). No provider was called, so
    provider and model are null. It goes to `events` as refusal_recorded, which only the usage log (stdout and the
    ledger) listens to: metrics count refusals with their own counters (gateway_rate_limit_rejections ...), and a
    refusal spends no tokens or dollars."""

    def __init__(self, replica: str, events: Events, config_hash: str | None = None) -> None:
        self.replica = replica
        self.events = events
        self.config_hash = config_hash

    def __call__(self, scope, status: int, reason: str, started: float, client: str | None = None) -> None:
        """Record a refusal answered with `status`; `started` is time.time() when the refusing check began."""
        path = scope["path"]
        if not route_of(path).llm:
            return
        try:
            state = state_of(scope)
            trace = state.get(TRACE)
            record = UsageRecord(
                ts=utc_now_iso(started),
                request_id=state.get(REQUEST_ID),
                route=path,
                endpoint=request_endpoint(scope),
                status=status,
                latency_ms=round(max(time.time() - started, 0.0) * 1000, 2),
                client=client,
                replica=self.replica,
                cost_usd=0.0,
                price_source="no tokens",
                error=REFUSED + reason,
                api=state_of(scope).get(DIALECT),
                trace_id=trace.trace_id if trace else None,
                config_hash=self.config_hash,
            )
        except Exception:  # accounting must never turn into the request's failure
            log.exception("usage record of a refused request to %s could not be made", path)
            return
        self.events.refusal_recorded(record)
