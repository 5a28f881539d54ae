#!/usr/bin/env bash
# Change the number of gateway replicas behind nginx (production stack) and wait until they are all healthy.
set -euo pipefail
test "${DEBUG:-}" && set -x

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/scale.sh N [--timeout S]

Run N gateway replicas in the production stack (docker-compose.prod.yml) and wait until N are healthy:
  docker compose -f docker-compose.prod.yml up -d --no-recreate --scale mlflow-gateway=N

  N              number of replicas (a positive integer)
  --timeout S    seconds to wait for N healthy replicas (default 180)
  -h, --help     show this help

--no-recreate leaves running replicas alone: scaling up only adds containers, scaling down stops the
highest-numbered ones (each gets SIGTERM and its graceful timeout to finish in-flight requests).
nginx needs no reload: it re-resolves the service name mlflow-gateway every 5 s, so new replicas get
traffic, and removed ones stop getting it, within 5 s.
Note: a later plain 'docker compose -f docker-compose.prod.yml up -d' goes back to deploy.replicas
(\$GATEWAY_REPLICAS, default 3); pass --scale there too, or use scripts/deploy.sh --prod --replicas N.

Example: scripts/scale.sh 5
USAGE
}

replicas=""
timeout_s=180
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --timeout)
            require_positive_int "$1" "${2:-}"
            timeout_s="$2"; shift ;;
        -*) unexpected_argument "$1" ;;
        *)
            [ -z "$replicas" ] || unexpected_argument "$1"
            require_positive_int "N" "$1"
            replicas="$1" ;;
    esac
    shift
done
if [ -z "$replicas" ]; then
    printf 'Missing N, the number of replicas. Use --help.\n' >&2
    exit 2
fi

cd "$KIT_ROOT"
compose_available || die "docker compose (v2) not found: install Docker Engine with the compose plugin"
docker_engine_up || die "docker engine not reachable: start it (sudo systemctl start docker), then run this again"

prod_stack_running || die "the production stack is not running (no nginx container): start it with scripts/deploy.sh --prod --replicas $replicas"
read -r _ before < <(service_health_counts mlflow-gateway)
log info "scaling mlflow-gateway from $before to $replicas replica(s)"
docker compose -f "$PROD_COMPOSE_FILE" up -d --no-recreate --scale "mlflow-gateway=$replicas"

if ! wait_until "$replicas healthy gateway replicas" "$timeout_s" service_all_healthy mlflow-gateway "$replicas"; then
    read -r healthy total < <(service_health_counts mlflow-gateway)
    log error "$healthy of $total replicas are healthy (wanted $replicas) after ${timeout_s}s"
    log error "next: scripts/logs.sh --prod --service mlflow-gateway --tail 100   (a replica that never turns healthy says why there)"
    exit 1
fi
log info "$replicas replica(s) healthy; nginx sends them traffic within 5 s (it re-resolves mlflow-gateway, no reload)"
