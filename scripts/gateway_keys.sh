#!/usr/bin/env bash
# Client keys for the gateway: add (prints the key once), list (prefixes only), revoke. Only sha256 hashes are
# stored, in the keys file every replica reads (mounted read-only; reloaded within about a second).
set -euo pipefail
test "${DEBUG:-}" && set -x

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<'EOF_USAGE'
Usage: scripts/gateway_keys.sh [--file FILE] COMMAND [args]

Commands:
  add CLIENT                  create a key for CLIENT and print it once (give it to the client)
  list [--json]               every key: client, created, key prefix (never the key itself)
  revoke CLIENT [--prefix P]  remove CLIENT's keys (all, or the one whose prefix `list` shows as P)

Options:
  --file FILE   the keys file (default: $GATEWAY_KEYS_FILE, else keys/keys.json in this kit, which
                docker-compose.prod.yml mounts read-only into every replica)
  -h, --help    this help

Clients send the key as `Authorization: Bearer <key>` (the OpenAI client's api_key) or `x-api-key: <key>`.
Every replica picks a change up within about a second; no restart. See docs/limits-and-keys.md.
Examples:
  scripts/gateway_keys.sh add team-search
  scripts/gateway_keys.sh list
  scripts/gateway_keys.sh revoke team-search
Exit status: 0 ok, 1 nothing to revoke, 2 usage error or unreadable keys file.
EOF_USAGE
}

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --file) args+=(--file "${2:?--file needs a path}"); shift ;;
    add|list|revoke) args+=("$@"); break ;;
    *) echo "Unexpected argument: $1. Use --help." >&2; exit 2 ;;
  esac
  shift
done
[ "${#args[@]}" -gt 0 ] || { usage >&2; exit 2; }

python="${PYTHON:-}"
[ -n "$python" ] || { [ -x "$repo/.venv/bin/python" ] && python="$repo/.venv/bin/python" || python=python3; }
# gateway_kit.keys needs only the standard library: any python3 on the host will do, so the kit may not be
# installed in it (PYTHONPATH: this checkout's gateway_kit).
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m gateway_kit.keys "${args[@]}"
