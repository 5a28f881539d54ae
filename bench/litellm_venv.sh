#!/usr/bin/env bash
# Makes .bench/litellm, LiteLLM's proxy in a venv of its own, for bench/run.py's comparison. Its own venv
# because LiteLLM pins versions of fastapi, gunicorn and openai that differ from the gateway's. Idempotent.
set -euo pipefail
test "${DEBUG:-}" && set -x

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"
# 1.102.4: the newest release installable from the registry here (1.103.11 and later require a certifi
# release the registry does not have).
version="${LITELLM_VERSION:-1.102.4}"

usage() {
  cat <<'EOF_USAGE'
Usage: bench/litellm_venv.sh [--help]

Creates .bench/litellm with litellm[proxy] (LITELLM_VERSION, default 1.102.4) for bench/run.py.
Runs again in seconds when it is already there.
EOF_USAGE
}

for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    *) echo "Unexpected argument: $arg. Use --help." >&2; exit 2 ;;
  esac
done

venv="$repo/.bench/litellm"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip show litellm 2>/dev/null | grep -qx "Version: $version"; then
  log info "$venv has litellm $version, skipped"
  exit 0
fi
python="${PYTHON_FOR_LITELLM:-python3}"
"$python" -m venv "$venv"
log info "installing litellm[proxy]==$version into $venv (a few minutes)"
"$venv/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$version"
