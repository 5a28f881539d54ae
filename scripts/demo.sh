#!/usr/bin/env bash
# The demo: the local stack (nginx + 2 replicas + fake upstream, no API key), one request through
# nginx with its answer printed. The stack stays up for you to try; stop it with the command shown.
set -euo pipefail
test "${DEBUG:-}" && set -x

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

usage() {
  cat <<'EOF_USAGE'
Usage: scripts/demo.sh [--replicas N] [--help]

Starts scripts/local_stack.sh (fake upstream, no provider key needed), sends one chat request
through nginx on http://127.0.0.1:5000 and prints the answer, then evaluates the gateway with
evaluate_gateway.py when present. Stop the stack with: scripts/local_stack.sh down
EOF_USAGE
}

replicas=2
while [ $# -gt 0 ]; do
  case "$1" in
    --replicas) replicas="${2:?--replicas needs a number}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "Unexpected argument: $1. Use --help." >&2; exit 2 ;;
  esac
  shift
done

env -u OPENAI_API_KEY -u ANTHROPIC_API_KEY -u AZURE_OPENAI_API_KEY \
  "$repo/scripts/local_stack.sh" up --replicas "$replicas"
log info "POST http://127.0.0.1:5000/gateway/chat/invocations"
curl -sS -D "$repo/.stack/demo-headers.txt" http://127.0.0.1:5000/gateway/chat/invocations \
  -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"What is an AI gateway?"}]}' \
  | "$repo/.venv/bin/python" -c 'import json,sys; a=json.load(sys.stdin); print("answer:", a["choices"][0]["message"]["content"]); print("tokens:", a["usage"])'
grep -i -E '^(x-gateway-replica|x-request-id)' "$repo/.stack/demo-headers.txt" || true
log info "the stack is still up: try scripts/check_gateway.sh, then stop it with scripts/local_stack.sh down"
