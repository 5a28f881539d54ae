#!/usr/bin/env bash
# Starts one MLflow gateway replica: checks config.yaml and the provider keys, then execs gunicorn.
# The container's ENTRYPOINT, and what scripts/local_stack.sh runs for each local replica.
set -euo pipefail
test "${DEBUG:-}" && set -x

usage() {
  cat <<'EOF'
Usage: entrypoint.sh [--check] [--help]

Checks GATEWAY_CONFIG (default: config.yaml beside this script) and the provider keys, writes
the active config (endpoints without a usable key are dropped, with a warning), then runs
gunicorn with uvicorn workers in the foreground. Settings come from the environment; see
docs/architecture.md (GATEWAY_WORKERS, GATEWAY_PORT, GATEWAY_GRACEFUL_TIMEOUT, ...).

  --check   only check the config and keys, then exit (0 when at least one endpoint can serve); prints the
            hash of the config a replica would serve (GET /ready's config_hash; scripts/reload.sh runs this)
  --help    show this help

Exit status 78: config.yaml is broken, no endpoint has a usable key, or a GATEWAY_* setting has a
value the gateway cannot use (the message says which, and where to fix it).
EOF
}

check_only=""
for arg in "$@"; do
  case "$arg" in
    --check) check_only=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "Unexpected argument: $arg. Use --help." >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The gateway_kit beside this script: the image does not install the package (its code is /app), and a local
# replica runs its own checkout, whichever checkout the venv's editable install points at.
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python}"
config="${GATEWAY_CONFIG:-$here/config.yaml}"
runtime="${GATEWAY_RUNTIME_DIR:-/tmp/gateway}"
# Prices for models genai-prices does not know (see pricing.yaml), wherever this script is started from.
if [ -z "${GATEWAY_PRICING_FILE:-}" ] && [ -f "$here/pricing.yaml" ]; then
  export GATEWAY_PRICING_FILE="$here/pricing.yaml"
fi

if [ -n "$check_only" ]; then
  exec "$python" -m gateway_kit.reload check "$config"
fi
"$python" -m gateway_kit.preflight "$config" --write "$runtime/config.active.yaml"
export GATEWAY_ACTIVE_CONFIG="$runtime/config.active.yaml"
# The file gunicorn's master checks again and rewrites as the active config on SIGHUP (scripts/reload.sh).
export GATEWAY_CONFIG="$config"
# exec: gunicorn becomes this process and gets SIGTERM directly, so in-flight requests drain.
exec "$python" -m gunicorn -c python:gateway_kit.gunicorn_conf
