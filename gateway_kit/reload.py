"""Config changes without a restart: which config a replica serves (its hash), the check a new config.yaml must
pass, and what a replica's gunicorn master does on SIGHUP.

    scripts/reload.sh                             # check config.yaml, then roll it to every replica
    python -m gateway_kit.reload check config.yaml   # the check alone: prints the hash the replicas will serve
    python -m gateway_kit.reload served URL...       # the hash each replica's GET /ready reports

On SIGHUP the master (gunicorn_conf.on_reload) runs the start-up checks again, exactly as entrypoint.sh does
(`python -m gateway_kit.preflight GATEWAY_CONFIG --write GATEWAY_ACTIVE_CONFIG`). A good file replaces the active
config; a bad one is refused with its line and reason on the replica's log, and the active config stays as it
was. gunicorn then starts new workers, which read the active config (and pricing.yaml), and stops the old ones
gracefully: they take no new connection and finish what they serve, streams too, within
GATEWAY_GRACEFUL_TIMEOUT. The master keeps the listening socket, so no connection is refused meanwhile.

No mlflow import here: gunicorn_conf.py imports this module in the master (the checks run in a child process).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from gateway_kit.exit_status import ExitStatus

HASH_LENGTH = 12  # hex digits of sha256: enough to tell versions apart, short enough to read in a table


def config_hash(active: Path) -> str:
    """Which config a replica serves: the first 12 hex digits of the sha256 of its active config (the file the
    start-up checks wrote) followed by its pricing file (pricing.yaml, when there is one). Replicas with the same
    hash serve the same endpoints, limits, key settings and prices. Computed once per worker, at its start."""
    from gateway_kit.pricing import find_pricing_file

    digest = hashlib.sha256(active.read_bytes())
    if (pricing := find_pricing_file()) is not None:
        digest.update(pricing.read_bytes())
    return digest.hexdigest()[:HASH_LENGTH]


def preflight(config: str, write: str) -> subprocess.CompletedProcess:
    """The start-up checks of entrypoint.sh on `config`, in a child process (they import mlflow); when they pass,
    the active config is written to `write` (atomically). Their messages go to this process's stderr."""
    return subprocess.run([sys.executable, "-m", "gateway_kit.preflight", config, "--write", write], check=False)


def check(config: str) -> str | None:
    """The hash replicas will serve once `config` is rolled out, or None: refused (the line and reason are on
    stderr). Nothing running is touched. What scripts/reload.sh runs first, in a replica's environment."""
    with tempfile.TemporaryDirectory(prefix="gateway-check-") as tmp:
        active = Path(tmp) / "config.active.yaml"
        if preflight(config, str(active)).returncode != 0:
            return None
        return config_hash(active)


def rewrite_active_config(config: str, active: str, log: logging.Logger) -> bool:
    """SIGHUP in the master: the checks on `config` and, when it passes, it becomes the `active` config the new
    workers read. False: refused, `active` unchanged (the new workers serve what the old ones did)."""
    if preflight(config, active).returncode != 0:
        log.error("reload: %s refused (the line and reason above); the active config is unchanged", config)
        return False
    log.info("reload: %s checked and active; new workers start, the old ones finish their requests", config)
    return True


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
        expected = check(args.config)
        if expected is None:
            return ExitStatus.CONFIG
        print(expected)
        return ExitStatus.OK
    for url in args.urls:
        print(url, served(url))
    return ExitStatus.OK


if __name__ == "__main__":
    raise SystemExit(main())
