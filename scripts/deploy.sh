#!/usr/bin/env bash
# Build and start the gateway stack, then wait until it answers. Safe to run again: it only changes what differs.
set -euo pipefail
test "${DEBUG:-}" && set -x

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/deploy.sh [--prod] [--replicas N] [--demo] [--timeout S]

Build the image and start the gateway with docker compose, then wait until it is healthy.

  (default)      development: one gateway, published on http://localhost:5000 (docker-compose.yml)
  --prod         production: nginx on :5000 in front of N gateway replicas and Redis (docker-compose.prod.yml)
  --replicas N   gateway replicas with --prod (default: \$GATEWAY_REPLICAS, from the shell or .env, or 3)
  --demo         also start the fake LLM (compose profile "demo"): works without any provider key
  --timeout S    seconds to wait for health before giving up (default 180)
  -h, --help     show this help

Steps: create .env from env.template if it is missing ('.env' already exists, skipped otherwise);
check that docker compose can read the project (.env included); check that a provider key is set and is not
the template's placeholder (the key is never printed); docker compose build; check config.yaml in the image;
docker compose up -d; wait for every replica to be healthy and for /health to answer.
A start that fails (port 5000 taken, ...) is taken down again, unless the stack was already running.

Examples:
  scripts/deploy.sh --demo                 # try it without a key
  scripts/deploy.sh --prod --replicas 3    # same as: docker compose -f docker-compose.prod.yml up -d --scale mlflow-gateway=3
Environment: DEBUG=1 traces every command.
USAGE
}

prod=false
demo=false
replicas="${GATEWAY_REPLICAS:-$(dotenv_value GATEWAY_REPLICAS "$KIT_ROOT/.env")}"
replicas="${replicas:-3}"
replicas_given=false
timeout_s=180
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --prod) prod=true ;;
        --demo) demo=true ;;
        --replicas)
            require_positive_int "$1" "${2:-}"
            replicas="$2"; replicas_given=true; shift ;;
        --timeout)
            require_positive_int "$1" "${2:-}"
            timeout_s="$2"; shift ;;
        *) unexpected_argument "$1" ;;
    esac
    shift
done
if [ "$replicas_given" = true ] && [ "$prod" = false ]; then
    printf '%s\n' "--replicas needs --prod: the dev stack runs one gateway with a fixed container name. Use --help." >&2
    exit 2
fi

cd "$KIT_ROOT"
if [ "$prod" = true ]; then
    compose=(docker compose -f "$PROD_COMPOSE_FILE")
    scale_args=(--scale "mlflow-gateway=$replicas")
    expected=$replicas
    prod_flag=" --prod"
    edge=nginx   # what answers on :5000
else
    compose=(docker compose -f "$DEV_COMPOSE_FILE")
    scale_args=()
    expected=1
    prod_flag=""
    edge=mlflow-gateway
fi
if [ "$demo" = true ]; then
    compose+=(--profile demo)
fi

# 1. Tools.
compose_available || die "docker compose (v2) not found: install Docker Engine with the compose plugin, then run this again"
docker_engine_up || die "docker engine not reachable: start it (sudo systemctl start docker) or check your permissions (docker info)"

# 2. .env, created once and never overwritten.
if [ -f .env ]; then
    log info "'.env' already exists, skipped"
else
    cp env.template .env
    chmod 600 .env
    log info "created .env from env.template (mode 600): put your provider key in it"
fi
# compose reads .env too: a line it cannot parse stops every compose command, so say so before anything starts.
if ! "${compose[@]}" config --quiet; then
    die "docker compose cannot read the project (above: which file and line, often .env); fix it, then run this again"
fi

# 3. A usable provider key, or demo mode. Only the state of each key is shown, never its value.
usable_key=false
while IFS= read -r line; do
    log info "  $line"
    case "$line" in *": set "*) usable_key=true ;; esac
done < <(provider_key_report .env)
if [ "$usable_key" = true ]; then
    if [ "$demo" = true ]; then
        log warn "a provider key is set: the gateway uses the real provider; fake-llm starts but stays idle"
    fi
elif [ "$demo" = true ]; then
    log info "no provider key: demo mode, answers come from fake-llm"
else
    die "no usable provider key (OPENAI_API_KEY is missing or still '$KEY_PLACEHOLDER'): edit .env, or try the kit with: scripts/deploy.sh --demo"
fi

unreadable="$(unreadable_secret_files)"
if [ -n "$unreadable" ]; then
    die "the gateway runs as uid 10001 and cannot read $(printf '%s' "$unreadable" | paste -sd' '): chmod 644 them (and keep the folder private: chmod 700 secrets), then run this again"
fi

# 4. Build, check the config the image carries, start.
log info "building the image: ${compose[*]} build"
"${compose[@]}" build || die "the image build failed (the error is above); fix it, then run this again"
# Whether this run starts the stack or changes a running one: what a failed start leaves is removed only in the
# first case (a running stack keeps running).
[ -n "$(service_containers mlflow-gateway)" ] && was_running=true || was_running=false
abandon() {
    if [ "$was_running" = false ]; then
        "${compose[@]}" down --remove-orphans --timeout 10 >/dev/null 2>&1 || true
        log error "removed what this run had started (volumes kept): nothing of the stack is left running"
    fi
    die "$1"
}
# A config.yaml mistake would otherwise show only as replicas that never turn healthy: check it in the image
# (the same checks a replica makes when it starts, provider keys aside) before anything starts.
log info "checking config.yaml in the image"
if ! "${compose[@]}" run --rm --no-deps -T --entrypoint python mlflow-gateway \
    -m gateway_kit.preflight --no-keys /app/config.yaml; then
    abandon "config.yaml (or pricing.yaml, or a GATEWAY_* setting) has an error (above); fix it, then run this again"
fi
# --remove-orphans: dev and prod are one compose project, so switching removes the other variant's
# containers (nginx, redis) that would otherwise keep port 5000.
log info "starting: ${compose[*]} up -d --remove-orphans ${scale_args[*]}"
# up waits by itself for the healthchecks that depends_on names (fake-llm, redis, then the gateway for nginx).
up_log="$(mktemp)"
trap 'rm -f "$up_log"' EXIT
if ! "${compose[@]}" up -d --remove-orphans ${scale_args[@]+"${scale_args[@]}"} 2>&1 | tee "$up_log"; then
    if grep -Eqi 'port is already allocated|address already in use' "$up_log"; then
        log error "port 5000 is taken by another program or container; see what holds it: sudo ss -ltnp 'sport = :5000'   or   docker ps --filter publish=5000"
    else
        log error "docker compose up failed (above: which container, and why)"
    fi
    abandon "next: fix the cause, then run scripts/deploy.sh$prod_flag again   (details: scripts/logs.sh$prod_flag --service mlflow-gateway --tail 100)"
fi

# 5. Wait: every replica healthy (its own HEALTHCHECK), then /health through the published port.
if ! wait_until "gateway, $expected healthy replica(s)" "$timeout_s" service_all_healthy mlflow-gateway "$expected"; then
    read -r healthy total < <(service_health_counts mlflow-gateway)
    log error "$healthy of $total gateway replicas are healthy after ${timeout_s}s"
    log error "next: scripts/logs.sh$prod_flag --service mlflow-gateway --tail 100   (then ./check_gateway.sh)"
    exit 1
fi
url="${GATEWAY_URL:-$(dotenv_value GATEWAY_URL .env)}"
url="${url:-http://localhost:5000}"
# The replicas are healthy, so this is quick: the edge (nginx in prod, the published port in dev) must answer.
if ! wait_until "$url/health" "$((timeout_s < 30 ? timeout_s : 30))" http_ok "$url/health"; then
    log error "the replicas are healthy but $url/health does not answer"
    log error "next: ./check_gateway.sh --url $url   and   scripts/logs.sh$prod_flag --service $edge"
    exit 1
fi
log info "gateway is up at $url ($expected replica(s)); try: ./check_gateway.sh"
