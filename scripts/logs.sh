#!/usr/bin/env bash
# Show the stack's logs (docker compose logs), for one service or all of them.
set -euo pipefail
test "${DEBUG:-}" && set -x

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/logs.sh [--prod | --dev] [--service NAME] [--tail N] [--follow]

  --prod           the production stack (docker-compose.prod.yml)
  --dev            the development stack (docker-compose.yml)
                   default: the production stack when its nginx container runs, else the development one
  --service NAME   only this service: mlflow-gateway, nginx, redis, fake-llm (default: all)
  --tail N         last N lines per container (default 100)
  -f, --follow     keep printing new lines (Ctrl-C to stop)
  -h, --help       show this help

The gateway writes its usage records to stdout, so they are here too; nginx logs one JSON line per request.
Examples:
  scripts/logs.sh --service mlflow-gateway --follow
  scripts/logs.sh --prod --service nginx --tail 20
USAGE
}

compose_file=""
service=""
tail_n=100
follow=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --prod) compose_file="$PROD_COMPOSE_FILE" ;;
        --dev) compose_file="$DEV_COMPOSE_FILE" ;;
        --service)
            [ -n "${2:-}" ] || { printf '%s\n' "--service needs a name. Use --help." >&2; exit 2; }
            service="$2"; shift ;;
        --tail)
            require_positive_int "$1" "${2:-}"
            tail_n="$2"; shift ;;
        -f | --follow) follow=(--follow) ;;
        *) unexpected_argument "$1" ;;
    esac
    shift
done

cd "$KIT_ROOT"
compose_available || die "docker compose (v2) not found: install Docker Engine with the compose plugin"
docker_engine_up || die "docker engine not reachable: start it (sudo systemctl start docker), then run this again"

if [ -z "$compose_file" ]; then
    if prod_stack_running; then compose_file="$PROD_COMPOSE_FILE"; else compose_file="$DEV_COMPOSE_FILE"; fi
fi
# --profile demo so that fake-llm's logs are found too; it changes nothing when fake-llm is not running.
args=(logs --tail "$tail_n" --timestamps ${follow[@]+"${follow[@]}"})
if [ -n "$service" ]; then
    args+=("$service")
fi
exec docker compose -f "$compose_file" --profile demo "${args[@]}"
