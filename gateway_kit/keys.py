"""Client keys: who may call the gateway, under which client name. Clients never hold provider keys.

    python -m gateway_kit.keys add team-search          # prints the new key ONCE; only its hash is stored
    python -m gateway_kit.keys list                     # client, created, key prefix (never the key)
    python -m gateway_kit.keys revoke team-search       # every key of that client (or --prefix gwk_AbCd1234)
    python -m gateway_kit.keys --file /path/keys.json list --json

scripts/gateway_keys.sh wraps this. The file (GATEWAY_KEYS_FILE, default keys/keys.json beside entrypoint.sh;
/app/keys/keys.json in the image, a read-only mount) holds one entry per key: client name, sha256 of the key,
the key's first characters (to tell keys apart in `list`), creation time. A key is `gwk_` + 43 characters
of secrets.token_urlsafe(32): 256 random bits, so a plain sha256 cannot be reversed or guessed and needs no
salt or slow hash; a lookup is one hash and one dict lookup per request.

Every worker of every replica checks the file at most once a second (one stat) and reloads it when it
changed, so `add` and `revoke` take effect everywhere within about a second, without Redis or a restart.
Writes are atomic (a temporary file renamed over the old one), so a reader never sees half a file; mount the
directory, not the file, into containers (a file bind mount keeps the old inode after a rename).

GATEWAY_AUTH: `auto` (default) requires a key except in demo mode, when every endpoint answers from the fake
upstream and no provider key can be spent; `on` always requires one (the demo too); `off` is refused unless
in demo mode (entrypoint.sh exits 78).

Exit codes: 0 ok, 1 nothing to revoke, 2 usage error (bad client name, unreadable file).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from gateway_kit import launcher, settings
from gateway_kit.exit_status import ExitStatus
from gateway_kit.request import KEYLESS, error_body, route_of, send_json

log = logging.getLogger("gateway_kit.keys")

KEY_PREFIX = "gwk_"
SHOWN = 12  # characters of a key kept in the file and shown by `list`: gwk_ + 8
VALID_CLIENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_CHECK_EVERY = 1.0  # seconds between two looks at the keys file (per worker)


def keys_file(configured: str = "") -> Path:
    """GATEWAY_KEYS_FILE when set (`configured`), else keys/keys.json beside entrypoint.sh."""
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / "keys" / "keys.json"


def default_file() -> Path:
    """The keys file the environment names now (the CLI's default; the gateway's comes from its settings)."""
    return keys_file(settings.read("GATEWAY_KEYS_FILE"))


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeysFileError(Exception):
    """The keys file cannot be read or is not the kit's format; worded for the user."""


def read_entries(path: Path) -> list[dict]:
    """The entries of a keys file; a missing file has none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise KeysFileError(f"{path}: cannot read the keys file ({e.strerror})") from None
    return parse_entries(text, str(path))


def parse_entries(text: str, where: str) -> list[dict]:
    """The entries of a keys file's text (`where` names it in the error: a path, or a Kubernetes Secret)."""
    try:
        data = json.loads(text) if text.strip() else {"keys": []}
        entries = data["keys"]
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and "sha256" in e and "client" in e for e in entries
        ):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise KeysFileError(
            f"{where}: not a gateway keys file (JSON with a `keys` list); "
            "restore it from a backup or remove it and add the keys again"
        ) from None
    return entries


def dumps(entries: list[dict]) -> str:
    """A keys file's text."""
    return json.dumps({"version": 1, "keys": entries}, indent=2) + "\n"


def new_key(client: str) -> tuple[str, dict]:
    """A new key for `client` and its entry (the hash, never the key)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return key, {"client": client, "sha256": digest(key), "prefix": key[:SHOWN], "created": created}


def without(entries: list[dict], client: str, prefix: str | None = None) -> list[dict]:
    """The entries but `client`'s keys (all, or the one whose prefix starts with `prefix`)."""
    return [
        e for e in entries if not (e["client"] == client and (prefix is None or e.get("prefix", "").startswith(prefix)))
    ]


# ---------------------------------------------------------------------------------------------- the store
class KeyStore:
    """sha256 -> client name, from the keys file, reloaded when the file changes (looked at once a second)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.clock = clock
        self.clients: dict[str, str] = {}
        self._stamp: tuple | None = None
        self._next_check = 0.0
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now < self._next_check:
            return
        self._next_check = now + _CHECK_EVERY
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        except OSError as e:
            log.error(
                "keys: cannot read %s (%s) — keeping the %d key(s) loaded before",
                self.path,
                e.strerror,
                len(self.clients),
            )
            return
        if stamp == self._stamp and not force:
            return
        try:
            entries = read_entries(self.path)
        except KeysFileError as e:
            log.error("keys: %s — keeping the %d key(s) loaded before", e, len(self.clients))
            return
        self._stamp = stamp
        self.clients = {e["sha256"]: e["client"] for e in entries}
        if stamp is None:
            log.warning(
                "keys: %s does not exist: every request is refused with 401 until a key is added "
                "(scripts/gateway_keys.sh add <client>)",
                self.path,
            )
        else:
            log.info(
                "keys: %d key(s) for %d client(s) loaded from %s",
                len(self.clients),
                len(set(self.clients.values())),
                self.path,
            )

    def client_of(self, key: str) -> str | None:
        self.refresh()
        return self.clients.get(digest(key))


# ---------------------------------------------------------------------------------------------- middleware
_CREDENTIALS = {b"authorization", b"x-api-key"}


def presented_key(headers) -> str | None:
    """The key a client sent: `Authorization: Bearer <key>` (OpenAI clients) or `x-api-key: <key>` (Anthropic)."""
    bearer = api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key" and value.strip():
            api_key = value.decode("latin-1").strip()
    return bearer or api_key


class ClientKeys:
    """ASGI middleware: a known gateway key or a 401; the client's name goes on as X-Gateway-Client.

    The client's Authorization and x-api-key headers never go further (MLflow and the providers get the
    provider key from the config, never the client's), and a client-sent X-Gateway-Client is replaced.
    With `store` None (auth off, demo mode only) it only removes those headers. `refused` (recording.Refusals)
    is told of each 401, after it was sent.
    """

    def __init__(self, app, store: KeyStore | None, refused=None) -> None:
        self.app = app
        self.store = store
        self.refused = refused

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if route_of(scope["path"]).kind in KEYLESS:
            # Probes (compose healthchecks, kubelet) and Prometheus send no key. nginx answers 404 for /metrics
            # from outside, and /ready says only whether this replica can serve. The reload requests carry the
            # reload token instead, which gateway_kit.reload checks (nginx never passes them on).
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        if self.store is None:  # auth off (demo mode): the client's credentials still go no further
            kept = [(k, v) for k, v in headers if k not in _CREDENTIALS]
        else:
            key = presented_key(headers)
            client = self.store.client_of(key) if key else None
            if client is None:
                started = time.time()
                try:
                    return await _unauthorized(send, key is not None)
                finally:
                    if self.refused is not None:
                        self.refused(scope, 401, "invalid_gateway_key" if key else "gateway_key_required", started)
            kept = [(k, v) for k, v in headers if k not in _CREDENTIALS and k != b"x-gateway-client"]
            kept.append((b"x-gateway-client", client.encode()))
        await self.app({**scope, "headers": kept}, receive, send)


async def _unauthorized(send, key_sent: bool) -> None:
    if key_sent:
        kind, message = (
            "invalid_gateway_key",
            (
                "this gateway key is not known or was revoked — ask the gateway's operators for a key "
                "(scripts/gateway_keys.sh add <client>) and send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            ),
        )
    else:
        kind, message = (
            "gateway_key_required",
            (
                "this gateway needs a client key: send 'Authorization: Bearer <key>' (the OpenAI client's api_key) "
                "or 'x-api-key: <key>'; operators create keys with scripts/gateway_keys.sh add <client>. "
                "Provider keys (sk-...) are not accepted here"
            ),
        )
    await send_json(send, 401, error_body(kind, message), [(b"www-authenticate", b'Bearer realm="gateway"')])


# ---------------------------------------------------------------------------------------------- the setting
def demo_only(config: dict, demo_key: str) -> bool:
    """True when every endpoint's provider key is the demo key: no real provider key can be spent."""
    endpoints = config.get("endpoints") or []

    def keys_of(endpoint: dict) -> list:
        model_config = (endpoint.get("model") or {}).get("config") or {}
        return [value for field, value in model_config.items() if field.endswith("_api_key")]

    return bool(endpoints) and all(keys_of(e) and all(v == demo_key for v in keys_of(e)) for e in endpoints)


def auth_problem(mode: str, config: dict, demo_key: str) -> str | None:
    """Why GATEWAY_AUTH=`mode` (auto, on or off, as gateway_kit.settings parsed it) cannot be used with this
    (active) config, or None."""
    if mode == "off" and not demo_only(config, demo_key):
        return (
            "GATEWAY_AUTH=off is only allowed in demo mode (every endpoint on the fake upstream), and this "
            "replica has real provider keys — create client keys with scripts/gateway_keys.sh add <client> "
            f"and remove GATEWAY_AUTH from {launcher.current().settings_at}"
        )
    return None


def auth_required(mode: str, config: dict, demo_key: str) -> bool:
    """What the app enforces for GATEWAY_AUTH=`mode`: a key, unless auth is off or auto, in demo mode."""
    return mode == "on" or not demo_only(config, demo_key)


# ---------------------------------------------------------------------------------------------- the CLI
@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock beside the file, so two `add`s at once cannot lose one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(path: Path, entries: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(dumps(entries))
    # Hashes only, so readable by the gateway's user inside the container (uid 10001) through the mount.
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def add(path: Path, client: str) -> str:
    key, entry = new_key(client)
    with _locked(path):
        entries = read_entries(path)
        entries.append(entry)
        _write(path, entries)
    return key


def revoke(path: Path, client: str, prefix: str | None = None) -> int:
    with _locked(path):
        entries = read_entries(path)
        kept = without(entries, client, prefix)
        if len(kept) != len(entries):
            _write(path, kept)
    return len(entries) - len(kept)


def client_name(value: str) -> str:
    if not VALID_CLIENT.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a client name: 1 to 64 of letters, digits, '.', '_' and '-', starting with a letter "
            "or digit (it appears in usage records and limits)"
        )
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gateway_keys.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--file",
        type=Path,
        default=None,
        help="the keys file (default: $GATEWAY_KEYS_FILE, else keys/keys.json in the kit)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="add|list|revoke")
    p_add = commands.add_parser("add", help="create a key for a client and print it once")
    p_add.add_argument("client", type=client_name, help="the client's name (team-search, ci-bot ...)")
    p_list = commands.add_parser("list", help="clients, when each key was created, and each key's prefix")
    p_list.add_argument("--json", action="store_true", help="machine-readable output")
    p_revoke = commands.add_parser("revoke", help="remove a client's keys (all, or one by --prefix)")
    p_revoke.add_argument("client", type=client_name, help="the client whose keys to remove")
    p_revoke.add_argument("--prefix", help="only the key starting with this (as `list` shows it)")
    args = parser.parse_args(argv)
    path = args.file or default_file()
    prog = "gateway_keys"
    try:
        if args.command == "add":
            key = add(path, args.client)
            print(f"{prog}: added a key for client {args.client!r} to {path}", file=sys.stderr)
            print(
                f"{prog}: this is the only time it is shown; give it to the client "
                "(OpenAI clients: api_key=..., others: 'Authorization: Bearer <key>'):",
                file=sys.stderr,
            )
            print(key)
            return ExitStatus.OK
        if args.command == "list":
            entries = read_entries(path)
            shown = [
                {"client": e["client"], "created": e.get("created"), "prefix": e.get("prefix", "?") + "..."}
                for e in entries
            ]
            if args.json:
                print(json.dumps(shown, indent=2, sort_keys=True))
            elif not shown:
                print(f"no keys in {path}; add one: scripts/gateway_keys.sh add <client>")
            else:
                width = max(len("client"), *(len(e["client"]) for e in shown))
                print(f"{'client':<{width}}  {'created':<20}  key")
                for e in shown:
                    print(f"{e['client']:<{width}}  {e['created'] or '?':<20}  {e['prefix']}")
            return ExitStatus.OK
        removed = revoke(path, args.client, args.prefix)
        if not removed:
            what = f"key {args.prefix}... of client" if args.prefix else "key for client"
            print(
                f"{prog}: error: no {what} {args.client!r} in {path} — see: scripts/gateway_keys.sh list",
                file=sys.stderr,
            )
            return ExitStatus.FAILED
        print(
            f"{prog}: revoked {removed} key(s) of client {args.client!r}; every replica refuses them within "
            "about a second",
            file=sys.stderr,
        )
        return ExitStatus.OK
    except (KeysFileError, OSError) as e:
        print(f"{prog}: error: {e} — check the path (--file) and its permissions", file=sys.stderr)
        return ExitStatus.USAGE


if __name__ == "__main__":
    raise SystemExit(main())
