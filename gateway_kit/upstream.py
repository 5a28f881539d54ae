"""One keep-alive HTTP client per worker for every provider call.

MLflow 3.17.2 opens a new aiohttp ClientSession for each upstream call
(mlflow.gateway.providers.utils._aiohttp_post), so every request pays a new TCP connection and, against
a real provider, a new TLS handshake. The kit puts a function with the same contract in its place: the
same header hygiene (Accept-Encoding, Content-Encoding and MLflow's own auth header are not forwarded),
the same total timeout, no redirects followed, but one pooled session per worker process, created in the
worker's event loop on first use and closed when the worker shuts down.

Settings (environment): GATEWAY_UPSTREAM_POOL (connections per worker, default 100),
GATEWAY_UPSTREAM_KEEPALIVE (seconds an idle connection is kept, default 30).
If the pinned MLflow no longer has the function, the kit keeps MLflow's behaviour and says so.
"""

from __future__ import annotations

import inspect
import logging
import os
from contextlib import asynccontextmanager
from typing import Any

log = logging.getLogger("gateway_kit.upstream")

EXPECTED_PARAMETERS = ["headers", "base_url", "path", "payload", "ssrf_protect"]
_session = None  # this worker's aiohttp.ClientSession


def _session_for_this_worker():
    global _session
    if _session is None or _session.closed:
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=int(os.environ.get("GATEWAY_UPSTREAM_POOL", "100")),
            keepalive_timeout=float(os.environ.get("GATEWAY_UPSTREAM_KEEPALIVE", "30")),
            ttl_dns_cache=60,
        )
        # read_bufsize as MLflow's: some providers send very long SSE `data:` lines.
        _session = aiohttp.ClientSession(connector=connector, read_bufsize=2**20)
    return _session


async def close() -> None:
    global _session
    if _session is not None:
        session, _session = _session, None
        await session.close()


def close_with(app) -> None:
    """Close this worker's session when the app shuts down (after MLflow's own shutdown)."""
    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application):
        async with previous(application) as state:
            yield state
        await close()

    app.router.lifespan_context = lifespan


def install() -> bool:
    """Replace MLflow's per-call session with the shared one; False (and a warning) if MLflow changed."""
    from mlflow.gateway.providers import utils

    original = getattr(utils, "_aiohttp_post", None)
    parameters = list(inspect.signature(original).parameters) if original else None
    helpers = all(hasattr(utils, name) for name in ("_STRIPPED_HEADERS", "SUPPORTED_ACCEPT_ENCODING"))
    if parameters != EXPECTED_PARAMETERS or not helpers:
        log.warning(
            "mlflow.gateway.providers.utils._aiohttp_post is missing or changed (parameters: %s); "
            "upstream connections are not shared, each provider call opens its own", parameters)
        return False
    if getattr(original, "__gateway_kit__", False):
        return True

    import aiohttp
    from fastapi import HTTPException

    from mlflow.environment_variables import MLFLOW_GATEWAY_ROUTE_TIMEOUT_SECONDS
    from mlflow.gateway.ssrf import GatewaySSRFProtectionError, upstream_protection_enabled
    from mlflow.utils.uri import append_to_uri_path

    @asynccontextmanager
    async def shared_post(headers: dict[str, str], base_url: str, path: str, payload: dict[str, Any], *,
                          ssrf_protect: bool = True):
        if ssrf_protect and upstream_protection_enabled():
            # MLflow's SSRF guard needs its own resolver per call: keep its function for those.
            async with original(headers, base_url, path, payload, ssrf_protect=True) as response:
                yield response
            return
        request_headers = {k: v for k, v in headers.items() if k.lower() not in utils._STRIPPED_HEADERS}
        request_headers["Accept-Encoding"] = utils.SUPPORTED_ACCEPT_ENCODING
        timeout = aiohttp.ClientTimeout(total=MLFLOW_GATEWAY_ROUTE_TIMEOUT_SECONDS.get())
        try:
            async with _session_for_this_worker().post(
                append_to_uri_path(base_url, path), json=payload, headers=request_headers, timeout=timeout,
                allow_redirects=False,
            ) as response:
                yield response
        except GatewaySSRFProtectionError as e:
            raise HTTPException(status_code=502, detail=str(e)) from e

    shared_post.__gateway_kit__ = True
    utils._aiohttp_post = shared_post
    return True
