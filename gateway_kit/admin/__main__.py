"""Serve the admin page: `python -m gateway_kit.admin`, or `gateway-admin` once the kit is installed (docs/admin.md).

Its settings are GATEWAY_* variables like the gateway's (gateway_kit.settings: GATEWAY_ADMIN_HOST, _PORT,
_REPLICAS, _AUDIT_LOG, _SESSION_MINUTES, and the gateway's own GATEWAY_LEDGER_DIR, GATEWAY_KEYS_FILE,
GATEWAY_CONFIG, GATEWAY_REDIS_URL, GATEWAY_PRICING_FILE; GATEWAY_ADMIN_KEYS_SECRET to write the keys to a Kubernetes
Secret instead of the file). The password is a secret: GATEWAY_ADMIN_PASSWORD, the
file GATEWAY_ADMIN_PASSWORD_FILE names, or /run/secrets/gateway_admin_password (gateway_kit.secrets). It must
not be a client key. The reload token, the replicas' too, is another secret, read the same way: GATEWAY_RELOAD_TOKEN,
GATEWAY_RELOAD_TOKEN_FILE or /run/secrets/gateway_reload_token (gateway_kit.reload); without it the page has no
Reload button and says how to reload instead. Exit codes: 0 stopped, 2 usage error, 78 a setting, the password or
the reload token is unusable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gateway_kit import keys, reload, settings
from gateway_kit.admin.app import Admin, Audit, create_app
from gateway_kit.admin.key_writers import chosen
from gateway_kit.admin.reloading import Reloader
from gateway_kit.admin.auth import LoginThrottle, Password, Sessions, password_problem
from gateway_kit.cli.costs import default_pricing_file
from gateway_kit.exit_status import ExitStatus
from gateway_kit.secrets import lookup_key

PASSWORD = "GATEWAY_ADMIN_PASSWORD"
NO_TOKEN = (
    "Reload config.yaml with scripts/reload.sh (on a swarm: scripts/reload.sh --swarm, a deploy). To reload from "
    "this page, give it and every replica the same reload token (GATEWAY_RELOAD_TOKEN: docs/admin.md)."
)
ON_KUBERNETES = (
    "On Kubernetes config.yaml is the chart's ConfigMap: a reload is a deploy, helm upgrade with the new file "
    "(docs/kubernetes.md), rolled one replica at a time."
)


def refuse(message: str) -> int:
    print(f"gateway-admin: error: {message}", file=sys.stderr, flush=True)
    return ExitStatus.CONFIG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway-admin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="check the settings and the password, then exit")
    args = parser.parse_args(argv)
    try:
        s = settings.current()
    except settings.SettingsError as e:
        return refuse(str(e))
    found = lookup_key(PASSWORD)
    if found.value is None:
        return refuse(
            f"{PASSWORD} {found.problem} — put the admin password in a file and name it with {PASSWORD}_FILE "
            "(or the secret gateway_admin_password); it must not be a client key"
        )
    problem = password_problem(found.value)
    if problem:
        return refuse(f"{PASSWORD} (from the {found.source}) {problem} — choose another admin password")
    try:
        client_keys = chosen(s.admin_keys_secret, keys.keys_file(s.keys_file), s.environ)
        client_hashes = {e["sha256"] for e in client_keys.entries()}
    except keys.KeysFileError as e:
        return refuse(str(e))
    if keys.digest(found.value) in client_hashes:
        return refuse(
            f"{PASSWORD} is a client key of {client_keys.where} — the admin password must be a secret of its own"
        )
    token, problem = reload.find_token()
    if problem:
        return refuse(f"{problem} — fix the reload token (openssl rand -hex 32), or remove it: no Reload button")
    if token and (token == found.value or keys.digest(token) in client_hashes):
        return refuse(
            f"{reload.TOKEN} is the admin password or a client key — the reload token must be a secret of its own"
        )
    on_kubernetes = "KUBERNETES_SERVICE_HOST" in s.environ
    reloader = Reloader(token) if token and not on_kubernetes else None
    audit = Audit(Path(s.admin_audit_log))
    try:
        audit.check()
    except OSError as e:
        return refuse(f"cannot write the audit log {s.admin_audit_log} ({e.strerror}) — fix GATEWAY_ADMIN_AUDIT_LOG")
    admin = Admin(
        password=Password(found.value),
        sessions=Sessions(ttl=s.admin_session_minutes * 60),
        throttle=LoginThrottle(),
        audit=audit,
        keys=client_keys,
        ledger=Path(s.ledger_dir) if s.ledger_on else None,
        pricing_file=s.pricing_file or default_pricing_file(None),
        config=s.config,
        redis_url=s.redis_url,
        redis_timeout=s.redis_timeout,
        replicas=s.admin_replicas,
        reloader=reloader,
        reload_how=ON_KUBERNETES if on_kubernetes else NO_TOKEN,
    )
    if args.check:
        print(f"gateway-admin: ok: would serve http://{s.admin_host}:{s.admin_port}", file=sys.stderr)
        return ExitStatus.OK
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(admin),
        host=s.admin_host,
        port=s.admin_port,
        log_level=s.log_level,
        proxy_headers=True,
        forwarded_allow_ips=s.forwarded_allow_ips,
        server_header=False,
    )
    return ExitStatus.OK


if __name__ == "__main__":
    raise SystemExit(main())
