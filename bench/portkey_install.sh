#!/usr/bin/env bash
# Makes .bench/portkey, Portkey's AI gateway (npm @portkey-ai/gateway) for bench/run.py's comparison: one node
# process (build/start-server.js), aimed at the bench's fake upstream by request headers. Idempotent.
#
# @hono/node-server is pinned to 1.14.1: the gateway asks for ^1.3.3, and from 1.14.2 on the server's own
# Response class hands back a fetch() answer's immutable headers, which Portkey then appends to: every stream
# answers 500 {"message":"Something went wrong"} ("TypeError: immutable" in its log; Portkey-AI/gateway#1389,
# which names 1.14.2 as still good: here 1.14.2 fails and 1.14.1 streams).
set -euo pipefail
test "${DEBUG:-}" && set -x

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"
version="${PORTKEY_VERSION:-1.15.2}"
hono_server_version="1.14.1"

usage() {
  cat <<'EOF_USAGE'
Usage: bench/portkey_install.sh [--help]

Creates .bench/portkey with @portkey-ai/gateway (PORTKEY_VERSION, default 1.15.2) from the npm registry,
@hono/node-server pinned to 1.14.1 (newer ones break its streams), for bench/run.py. Needs node and npm
(Node.js 18 or later). Runs again in seconds when it is already there.
EOF_USAGE
}

for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    *) echo "Unexpected argument: $arg. Use --help." >&2; exit 2 ;;
  esac
done

command -v npm >/dev/null || die "npm is not installed: apt-get install nodejs npm, then run this again"
prefix="$repo/.bench/portkey"
installed() { # NAME VERSION: is that version of the package in $prefix?
  grep -qs "\"version\": \"$2\"" "$prefix/node_modules/$1/package.json"
}
if installed @portkey-ai/gateway "$version" && installed @hono/node-server "$hono_server_version"; then
  log info "$prefix has @portkey-ai/gateway $version, skipped"
  exit 0
fi
mkdir -p "$prefix"
cat >"$prefix/package.json" <<EOF_PACKAGE
{
  "private": true,
  "dependencies": {"@portkey-ai/gateway": "$version"},
  "overrides": {"@hono/node-server": "$hono_server_version"}
}
EOF_PACKAGE
log info "installing @portkey-ai/gateway@$version into $prefix (a minute)"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error
