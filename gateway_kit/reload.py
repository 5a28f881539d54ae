"""Config changes without a restart: which config a replica serves (its hash), the check a new config.yaml must
pass, and what a replica's gunicorn master does on SIGHUP.

    scripts/reload.sh                             # check config.yaml, then roll it to every replica
    python -m gateway_kit.reload check config.yaml   # the check alone: prints the hash the replicas will serve
    python -m gateway_kit.reload served URL...       # the hash each replica's GET /ready reports
    POST /-/reload/check, POST /-/reload             # the same, asked of a replica (the admin page's Reload)

On SIGHUP the master (gunicorn_conf.on_reload) runs the start-up checks again, exactly as entrypoint.sh does
(`python -m gateway_kit.preflight GATEWAY_CONFIG --write GATEWAY_ACTIVE_CONFIG`). A good file replaces the active
config; a bad one is refused with its line and reason on the replica's log, and the active config stays as it
was. gunicorn then starts new workers, which read the active config (and pricing.yaml), and stops the old ones
gracefully: they take no new connection and finish what they serve, streams too, within
GATEWAY_GRACEFUL_TIMEOUT. The master keeps the listening socket, so no connection is refused meanwhile.

The admin page runs apart from the replicas, so it cannot signal their masters: with a reload token
(GATEWAY_RELOAD_TOKEN, the file GATEWAY_RELOAD_TOKEN_FILE names, or /run/secrets/gateway_reload_token; a secret
like the admin password, never a client key) each replica also answers two requests (install):

    POST /-/reload/check   Authorization: Bearer <token>
        200 {"config_hash": "3b9f0c2a7e41"}  GATEWAY_CONFIG passes the checks, run here (the replica has the
                                             provider keys); nothing is touched
        422 {"error": {"type": "config_refused", "message": "<the checks' lines: file:line: reason>"}}
    POST /-/reload         Authorization: Bearer <token>
        202 {"status": "reloading"}          SIGHUP sent to this replica's gunicorn master: on_reload, as above

No token given: 401; another token: 403 (neither says more). Without a token configured the paths are unknown
(404), as any path the gateway does not serve. nginx never passes /-/ on (a JSON 404): only what reaches a
replica's port directly (the admin page, on the replicas' network) can ask.

No mlflow import here: gunicorn_conf.py imports this module in the master (the checks run in a child process).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gateway_kit.exit_status import ExitStatus
from gateway_kit.request import CONTROLS

HASH_LENGTH = 12  # hex digits of sha256: enough to tell versions apart, short enough to read in a table
TOKEN = "GATEWAY_RELOAD_TOKEN"  # the reload token: a secret (gateway_kit.secrets), not a setting
MIN_TOKEN = 32  # characters: `openssl rand -hex 32` gives 64
RELOAD_PATH, CHECK_PATH = CONTROLS
log = logging.getLogger("gateway_kit.reload")


def config_hash(active: Path) -> str:
    """Which config a replica serves: the first 12 hex digits of the sha256 of its active config (the file the
    start-up checks wrote) followed by its pricing file (pricing.yaml, when there is one). Replicas with the same
    hash serve the same endpoints, limits, key settings and prices. Computed once per worker, at its start."""
    from gateway_kit.pricing import find_pricing_file

    digest = hashlib.sha256(active.read_bytes())
    if (pricing := find_pricing_file()) is not None:
        digest.update(pricing.read_bytes())
    return digest.hexdigest()[:HASH_LENGTH]


def preflight(config: str, write: str, capture: bool = False) -> subprocess.CompletedProcess:
    """The start-up checks of entrypoint.sh on `config`, in a child process (they import mlflow); when they pass,
    the active config is written to `write` (atomically). Their messages go to this process's stderr, or with
    `capture` to the result's .stderr."""
    command = [sys.executable, "-m", "gateway_kit.preflight", config, "--write", write]
    return subprocess.run(command, check=False, capture_output=capture, text=capture)


@dataclass(frozen=True)
class Checked:
    config_hash: str | None  # None: refused
    messages: str = ""  # with capture: what the checks said (a refused file's line and reason)


def check(config: str, capture: bool = False) -> Checked:
    """The hash replicas will serve once `config` is rolled out, or None: refused (the line and reason are on
    stderr, or in .messages with `capture`). Nothing running is touched. What scripts/reload.sh runs first, in a
    replica's environment, and POST /-/reload/check in the replica itself."""
    with tempfile.TemporaryDirectory(prefix="gateway-check-") as tmp:
        active = Path(tmp) / "config.active.yaml"
        done = preflight(config, str(active), capture)
        messages = done.stderr.strip() if capture else ""
        return Checked(config_hash(active) if done.returncode == 0 else None, messages)


def rewrite_active_config(config: str, active: str, log: logging.Logger) -> bool:
    """SIGHUP in the master: the checks on `config` and, when it passes, it becomes the `active` config the new
    workers read. False: refused, `active` unchanged (the new workers serve what the old ones did)."""
    if preflight(config, active).returncode != 0:
        log.error("reload: %s refused (the line and reason above); the active config is unchanged", config)
        return False
    log.info("reload: %s checked and active; new workers start, the old ones finish their requests", config)
    return True


# ------------------------------------------------------------------------------------ POST /-/reload
_master: int | None = None  # this worker's gunicorn master (under_master); None: not a gunicorn worker


def under_master(pid: int) -> None:
    """Called by the gunicorn worker (gateway_kit.worker) before it loads the app: who POST /-/reload signals."""
    global _master  # noqa: PLW0603 - one master per worker process
    _master = pid


def token_problem(value: str) -> str | None:
    """Why `value` cannot be the reload token (never containing it), or None."""
    from gateway_kit.secrets import key_problem

    problem = key_problem(value)
    if problem is None and len(value) < MIN_TOKEN:
        problem = f"is shorter than {MIN_TOKEN} characters (make one with: openssl rand -hex 32)"
    return problem


def find_token() -> tuple[str | None, str | None]:
    """(the reload token, None), (None, why it cannot be used: never its value), or (None, None) when there is
    none: unset or empty (compose passes GATEWAY_RELOAD_TOKEN from .env, empty when .env has none)."""
    from gateway_kit.secrets import lookup_key

    found = lookup_key(TOKEN)
    if found.value is None:
        return None, None if found.problem in ("is not set", "is empty") else f"{TOKEN} {found.problem}"
    problem = token_problem(found.value)
    return (None, f"{TOKEN} (from the {found.source}) {problem}") if problem else (found.value, None)


def reload_token() -> str | None:
    """This replica's reload token, None when there is none. One that is set but unusable is logged (never its
    value) and leaves the control requests unknown, as unset."""
    token, problem = find_token()
    if problem:
        log.error("%s: POST %s is off on this replica", problem, RELOAD_PATH)
    return token


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def install(app, token: str | None, config: str) -> None:
    """POST /-/reload/check and POST /-/reload on the FastAPI app, when this replica has a reload token; `config`
    is GATEWAY_CONFIG, the file a reload reads. Plain defs: Starlette runs them in a thread (the check takes
    seconds), and the client keys middleware lets them through (request.CONTROL): the token decides."""
    if not token:
        return
    from fastapi.responses import JSONResponse

    from gateway_kit.request import error_response
    from gateway_kit.secrets import redact

    wanted = _digest(token)

    def refusal(request):
        """None when the request carries the token; else the 401 or 403, which say nothing more."""
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return error_response(401, "unauthorized", "this request needs the reload token")
        if not hmac.compare_digest(_digest(given.strip()), wanted):
            address = request.client.host if request.client else "?"
            log.warning("refused %s from %s: not the reload token", request.url.path, address)
            return error_response(403, "forbidden", "refused")
        return None

    def checking(request):
        refused = refusal(request)
        if refused is not None:
            return refused
        checked = check(config, capture=True)
        if checked.config_hash is None:
            log.warning("reload check: %s refused (asked by the admin page)", config)
            # The checks never print a key; redact() still hides one they might quote from a provider's answer.
            said = redact(checked.messages) or f"{config} was refused"
            return error_response(422, "config_refused", said)
        return JSONResponse({"config_hash": checked.config_hash})

    def reloading(request):
        refused = refusal(request)
        if refused is not None:
            return refused
        if _master is None or os.getppid() != _master:
            return error_response(
                409, "not_reloadable", "this replica does not run under gunicorn's master (entrypoint.sh): restart it"
            )
        log.info("reload: SIGHUP to gunicorn's master %d (asked by the admin page)", _master)
        os.kill(_master, signal.SIGHUP)
        return JSONResponse({"status": "reloading"}, status_code=202)

    # Starlette routes (a request in, a response out): no FastAPI parameter parsing to pass through.
    app.add_route(CHECK_PATH, checking, methods=["POST"], include_in_schema=False)
    app.add_route(RELOAD_PATH, reloading, methods=["POST"], include_in_schema=False)


def served(url: str, timeout: float = 5) -> str:
    """The config hash a replica's GET /ready reports (the worker that answered), or `unreachable: ...`."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a provider's proxy
    try:
        with opener.open(f"{url.rstrip('/')}/ready", timeout=timeout) as answer:
            body = answer.read()
    except urllib.error.HTTPError as e:  # 503: not ready, still says which config
        body = e.read()
    except OSError as e:
        return f"unreachable: {e}"
    try:
        return json.loads(body).get("config_hash") or "none"
    except (ValueError, AttributeError):
        return "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway_kit.reload", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    checking = commands.add_parser("check", help="check a config.yaml; print the hash replicas will serve")
    checking.add_argument("config", help="the new config.yaml")
    asking = commands.add_parser("served", help="print `URL HASH` for each replica's GET /ready")
    asking.add_argument("urls", nargs="+", metavar="URL", help="a replica's base URL (http://127.0.10.1:8000)")
    args = parser.parse_args(argv)
    if args.command == "check":
        expected = check(args.config).config_hash
        if expected is None:
            return ExitStatus.CONFIG
        print(expected)
        return ExitStatus.OK
    for url in args.urls:
        print(url, served(url))
    return ExitStatus.OK


if __name__ == "__main__":
    raise SystemExit(main())
