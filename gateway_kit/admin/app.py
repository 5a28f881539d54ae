"""The admin page as a Starlette app: log in, one page of figures, add and revoke client keys, an audit log.

    GET  /login, POST /login     the form; a session cookie on success (rate-limited per address)
    GET  /                       the page (gateway_kit.admin.figures has where each figure comes from)
    POST /keys                   add a key for a client: shown once, on the answer to this POST
    POST /keys/revoke            revoke a client's key (by its prefix)
    POST /reload                 check config.yaml on a replica, then roll it to every replica (admin.reloading)
    POST /logout                 end the session
    GET  /health                 liveness, for the compose healthcheck

Every POST but the login needs the session and its CSRF token. Every change (a key added or revoked, a reload
and its result) and every login, failed login and logout is a JSON line in the audit log (GATEWAY_ADMIN_AUDIT_LOG) and on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway_kit import keys
from gateway_kit.admin import figures, page
from gateway_kit.admin.key_writers import KeysFile, SecretKeys
from gateway_kit.admin.reloading import Reloader
from gateway_kit.admin.auth import LoginThrottle, Password, Session, Sessions

log = logging.getLogger("gateway_kit.admin")

COOKIE = "gateway_admin"
MAX_FORM = 8192  # bytes: the largest form the page sends is well under 1 KB
HEADERS = {
    "Cache-Control": "no-store",  # nothing of the page (a new key least of all) stays in a cache
    # No script, no frame, no other origin: the page is plain HTML and inline CSS.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Audit:
    """The audit log: one JSON line per event, appended (O_APPEND) to a file and logged on stdout."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def check(self) -> None:
        """Raise OSError now if the log cannot be written, rather than at the first change."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))

    def write(self, who: str, address: str, action: str, **details: object) -> None:
        entry = {"ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "who": who, "address": address}
        line = json.dumps({**entry, "action": action, **details}, sort_keys=True)
        log.info("audit: %s", line)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        except OSError as e:
            log.error("audit: cannot write %s (%s): the entry above is only on stdout", self.path, e.strerror)


@dataclass
class Admin:
    """What the app needs, made once by gateway_kit.admin.__main__ (or a test)."""

    password: Password
    sessions: Sessions
    throttle: LoginThrottle
    audit: Audit
    keys: KeysFile | SecretKeys  # where keys are read, added and revoked
    ledger: Path | None  # None: GATEWAY_LEDGER_DIR=off
    pricing_file: str | None
    config: str
    redis_url: str
    redis_timeout: float
    replicas: str
    reloader: Reloader | None = None  # None: no Reload button, the page says how instead (reload_how)
    reload_how: str = ""


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status, headers=HEADERS)


def _address(request: Request) -> str:
    return request.client.host if request.client else "?"


async def _form(request: Request) -> dict[str, str] | None:
    """An urlencoded form (the only kind the page sends), one value per field; None when too large."""
    length = request.headers.get("content-length") or "0"
    if not length.isdigit() or int(length) > MAX_FORM:
        return None
    body = await request.body()
    if len(body) > MAX_FORM:
        return None
    try:
        fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    except ValueError:  # more fields than any form of the page has
        return None
    return {name: values[0] for name, values in fields.items()}


def create_app(admin: Admin) -> Starlette:
    def is_client_key(given: str) -> bool:
        try:
            return keys.digest(given) in {e["sha256"] for e in admin.keys.entries()}
        except keys.KeysFileError:
            return False  # the keys cannot be read: the audit log says wrong_password

    def session_of(request: Request) -> Session | None:
        return admin.sessions.read(request.cookies.get(COOKIE))

    async def checked_post(request: Request) -> tuple[Session, dict[str, str]] | Response:
        """The session and form of a change, or the answer that refuses it (no session, no CSRF token)."""
        session = session_of(request)
        if session is None:
            return _html(page.refused(401, "you are not logged in (or the session expired): log in again"), 401)
        form = await _form(request)
        if form is None:
            return _html(page.refused(413, "this is not a form of the admin page (too large, or too many fields)"), 413)
        if not admin.sessions.csrf_ok(session, form.get("csrf")):
            log.warning(
                "refused %s %s from %s: no valid CSRF token", request.method, request.url.path, _address(request)
            )
            return _html(
                page.refused(403, "this form has no valid CSRF token: reload the admin page and try again"), 403
            )
        return session, form

    async def login_form(request: Request) -> Response:
        if session_of(request) is not None:
            return RedirectResponse("/", 303, headers=HEADERS)
        return _html(page.login())

    async def login(request: Request) -> Response:
        address = _address(request)
        wait = admin.throttle.retry_after(address)
        if wait:
            message = f"too many failed logins from your address: try again in {max(1, round(wait))} s"
            return _html(page.login(message), 429)
        form = await _form(request) or {}
        who, given = form.get("who", "").strip(), form.get("password", "")
        if not keys.VALID_CLIENT.match(who):
            return _html(
                page.login("give your name (1 to 64 letters, digits, '.', '_', '-'): it goes into the audit log"), 400
            )
        if admin.password.matches(given):
            admin.throttle.succeeded(address)
            session_cookie = admin.sessions.issue(who)
            admin.audit.write(who, address, "login")
            answer = RedirectResponse("/", 303, headers=HEADERS)
            answer.set_cookie(
                COOKIE,
                session_cookie,
                max_age=int(admin.sessions.ttl),
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return answer
        admin.throttle.failed(address)
        # A client key gets the same answer as any wrong password; only the audit log says what it was.
        reason = "client_key" if given and await run_in_threadpool(is_client_key, given) else "wrong_password"
        admin.audit.write(who, address, "login_refused", reason=reason)
        return _html(page.login("wrong password", who), 401)

    async def logout(request: Request) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, _ = checked
        admin.sessions.end(session)
        admin.audit.write(session.who, _address(request), "logout")
        answer = RedirectResponse("/login", 303, headers=HEADERS)
        answer.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return answer

    async def dashboard(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return RedirectResponse("/login", 303, headers=HEADERS)
        now = datetime.now(UTC)
        usage, usage_problem = None, ""
        if admin.ledger is None:
            usage_problem = (
                "no ledger here (GATEWAY_LEDGER_DIR=off): the replicas write their usage records to stdout only, "
                "so spend, the response cache and errors are not shown. Read them with analyze_costs.py on your "
                "log pipeline's export (docs/kubernetes.md), or give the page the replicas' ledger directory "
                "(the Helm chart: ledger.existingClaim)"
            )
        else:
            try:
                usage = await run_in_threadpool(figures.usage, admin.ledger, admin.pricing_file, now)
            except (figures.costs.UsageError, OSError) as e:
                usage_problem = f"cannot read the ledger: {e}"
        entries, keys_problem = [], ""
        try:
            entries = figures.key_entries(await run_in_threadpool(admin.keys.entries))
        except keys.KeysFileError as e:
            keys_problem = str(e)
        limit_uses, limits_problem = [], ""
        try:
            config = figures.limits_config(admin.config)
            clients = {e["client"] for e in entries} | set(config.clients)
            if usage is not None:
                clients |= {r["key"] for r in usage.month["by_client"] if r["key"] != "(none)"}
            limit_uses = await figures.limit_use(config, sorted(clients), admin.redis_url, admin.redis_timeout)
        except (OSError, ValueError) as e:
            limits_problem = f"cannot read the limits of {admin.config}: {e}"
        replicas, unresolved = await figures.replicas(admin.replicas)
        revoked = request.query_params.get("revoked", "")
        notice = (
            f"revoked the key of client {revoked}; every replica refuses it within {admin.keys.follows}"
            if revoked
            else ""
        )
        return _html(
            page.dashboard(
                who=session.who,
                csrf=admin.sessions.csrf_token(session),
                replicas=replicas,
                unresolved=unresolved,
                usage=usage,
                usage_problem=usage_problem,
                limit_uses=limit_uses,
                limits_problem=limits_problem,
                redis=figures.redis_shown(admin.redis_url),
                keys=entries,
                keys_problem=keys_problem,
                keys_where=admin.keys.where,
                keys_follow=admin.keys.follows,
                last_use=usage.last_use if usage else {},
                config=admin.config,
                reload_how=admin.reload_how if admin.reloader is None else "",
                notice=notice,
            )
        )

    async def add_key(request: Request) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        try:
            client = keys.client_name(form.get("client", "").strip())
        except argparse.ArgumentTypeError as e:
            return _html(page.refused(400, str(e)), 400)
        try:
            key = await asyncio.to_thread(admin.keys.add, client)
        except (keys.KeysFileError, OSError) as e:
            return _html(page.refused(500, f"the key was not added: {e}"), 500)
        admin.audit.write(session.who, _address(request), "key_added", client=client, prefix=key[: keys.SHOWN])
        return _html(page.key_created(client, key, admin.keys.follows))

    async def revoke_key(request: Request) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, form = checked
        client, prefix = form.get("client", ""), form.get("prefix", "")
        if not keys.VALID_CLIENT.match(client) or not prefix.startswith(keys.KEY_PREFIX):
            return _html(page.refused(400, "say which key: a client and a key prefix (gwk_...)"), 400)
        try:
            removed = await asyncio.to_thread(admin.keys.revoke, client, prefix)
        except (keys.KeysFileError, OSError) as e:
            return _html(page.refused(500, f"nothing was revoked: {e}"), 500)
        if not removed:
            return _html(page.refused(404, f"no key {prefix}... of client {client!r}: it may be revoked already"), 404)
        admin.audit.write(session.who, _address(request), "key_revoked", client=client, prefix=prefix, keys=removed)
        return RedirectResponse(f"/?revoked={quote(client)}", 303, headers=HEADERS)

    async def reload_config(request: Request) -> Response:
        checked = await checked_post(request)
        if isinstance(checked, Response):
            return checked
        session, _ = checked
        if admin.reloader is None:
            return _html(page.refused(404, admin.reload_how), 404)
        addresses, _ = await asyncio.to_thread(figures.replica_addresses, admin.replicas)
        roll = await asyncio.to_thread(admin.reloader.roll, addresses)
        details = {"result": roll.result, "config": admin.config, "config_hash": roll.config_hash}
        if roll.problem:
            details["problem"] = roll.problem
        replicas = {r.address: r.outcome for r in roll.replicas}
        admin.audit.write(session.who, _address(request), "config_reload", **details, replicas=replicas)
        status = {"reloaded": 200, "refused": 422, "busy": 409}.get(roll.result, 502)
        return _html(page.reloaded(roll, admin.config), status)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok", headers=HEADERS)

    return Starlette(
        routes=[
            Route("/", dashboard, methods=["GET"]),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/keys", add_key, methods=["POST"]),
            Route("/keys/revoke", revoke_key, methods=["POST"]),
            Route("/reload", reload_config, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )
