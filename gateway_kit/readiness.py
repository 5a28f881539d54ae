"""Readiness: GET /ready says whether this replica can serve; GET /health (MLflow's) only that it is alive.

    GET /ready  -> 200 {"status": "ready", "config_hash": "3b9f0c2a7e41", "checks": {"config": "ok", "redis": "ok"}}
                -> 503 {"status": "not ready", "config_hash": "3b9f0c2a7e41",
                        "checks": {"config": "ok", "redis": "cannot reach redis://redis:6379/0: ..."},
                        "error": {"type": "not_ready", "message": "redis: cannot reach ..."}}

A check is a function that returns None when all is well, or a short sentence saying what is wrong (it may
block briefly: /ready runs the checks in a thread). The checks:
- config: the checked config was loaded and has at least one endpoint;
- redis: PING answers, when GATEWAY_READY_REDIS=on and GATEWAY_REDIS_URL is set (turn it on when your
  limits or budgets cannot work without Redis).

`config_hash` says which config the worker that answered serves (gateway_kit.reload.config_hash): after
scripts/reload.sh, every replica's should be the same.

The compose healthcheck asks /ready, so `depends_on: service_healthy` and `docker ps` mean "can serve".
"""

from __future__ import annotations

import re
from collections.abc import Callable

from gateway_kit.private_api import gateway_endpoints, gateway_routes
from gateway_kit.request import error_body

Check = Callable[[], "str | None"]


def run_checks(checks: dict[str, Check]) -> tuple[bool, dict[str, str]]:
    """(ready, {check: "ok" or what is wrong}); a check that raises counts as failed."""
    results = {}
    for name, check in checks.items():
        try:
            problem = check()
        except Exception as e:  # noqa: BLE001 - a broken check says "not ready", it does not crash /ready
            problem = f"check failed: {type(e).__name__}: {e}"
        results[name] = "ok" if problem is None else problem
    return all(v == "ok" for v in results.values()), results


def redacted(url: str) -> str:
    """The URL without its password: redis://:secret@host/0 -> redis://:***@host/0."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def redis_ping(url: str, timeout: float = 1.0) -> Check:
    """A check that PINGs the Redis at `url` (one client, reconnecting as needed)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)

    def check() -> str | None:
        try:
            client.ping()
        except redis.RedisError as e:
            return f"cannot reach {redacted(url)}: {e}"
        return None

    return check


def endpoints_loaded(app) -> Check:
    def check() -> str | None:
        names = [*gateway_endpoints(app, {}), *gateway_routes(app, {})]
        return None if names else "no endpoint loaded from the config"

    return check


def install(app, redis_url: str | None = None, config_hash: str | None = None) -> None:
    """Register the built-in checks and GET /ready on the FastAPI app. `redis_url`: GATEWAY_REDIS_URL when
    GATEWAY_READY_REDIS is on ("" when it is not set), None when it is off; `config_hash`: the served config's."""
    from fastapi.responses import JSONResponse

    checks: dict[str, Check] = {"config": endpoints_loaded(app)}
    if redis_url is not None:
        checks["redis"] = (
            redis_ping(redis_url)
            if redis_url
            else lambda: (
                "GATEWAY_READY_REDIS=on but GATEWAY_REDIS_URL is not set — set it, or GATEWAY_READY_REDIS=off"
            )
        )

    def ready():  # a plain def: FastAPI runs it in a thread, so a slow check never blocks requests
        ok, results = run_checks(checks)
        if ok:
            return JSONResponse({"status": "ready", "config_hash": config_hash, "checks": results})
        message = "; ".join(f"{name}: {what}" for name, what in results.items() if what != "ok")
        return JSONResponse(
            {"status": "not ready", "config_hash": config_hash, "checks": results, **error_body("not_ready", message)},
            status_code=503,
        )

    app.add_api_route("/ready", ready, methods=["GET"], include_in_schema=False)
