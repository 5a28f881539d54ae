#!/usr/bin/env bash
# Apply a changed config.yaml (and pricing.yaml) to every gateway replica without a restart: check it first with
# the start-up checks, then roll it out. One command for the local stack, docker compose and swarm.
set -euo pipefail
test "${DEBUG:-}" && set -x

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/reload.sh [--local | --compose | --swarm [--profile NAME]... [-f FILE]...] [--state-dir DIR] [--timeout S]

Checks config.yaml with the checks a replica runs at start (entrypoint.sh --check: typos, values, limits,
provider keys, pricing.yaml); a refused file is reported with its line and reason, nothing is reloaded and
every replica keeps serving its config. A good file is then rolled to every replica, and the script waits
until each one reports the new config's hash in GET /ready (check_gateway.sh shows it too):

  --local     the local stack (scripts/local_stack.sh): SIGHUP to each replica's gunicorn master, one at a time
  --compose   the production compose stack: SIGHUP to each replica's container, one at a time (as
              docker compose -f docker-compose.prod.yml kill -s HUP mlflow-gateway, but rolling); config.yaml
              and pricing.yaml are mounted read-only into every replica: edit them in place
  --swarm     the swarm stack: config.yaml is a swarm config named after its content, so a changed file is a
              service update (scripts/swarm_stack.sh | docker stack deploy), rolled one replica at a time,
              start-first, rolled back if the new replicas do not turn healthy. Give the --profile and -f
              arguments the stack was deployed with (scripts/swarm_stack.sh's): the file checked is the one
              the stack's gateway-config names (./config.yaml unless a -f file says otherwise)
  (none)      the local stack when one runs in DIR, else compose when its stack runs, else swarm

On SIGHUP a replica checks the file again, starts new workers on it and lets the old ones finish what they
serve, streams too (GATEWAY_GRACEFUL_TIMEOUT); its listening socket stays open, so no request fails (those
that arrive while the new workers start wait for them, a few seconds). One replica at a time: the others serve.

  --state-dir DIR  the local stack's state (default .stack in the repo)
  --timeout S      seconds to wait for each replica to serve the new config (default 120; swarm: 600 in all)
  -h, --help       show this help

Exit codes: 0 every replica serves the new config, 1 a replica did not follow in time (see its log),
2 usage error, 78 the file was refused (nothing changed).
Examples:
  vi config.yaml && scripts/reload.sh
  scripts/reload.sh --compose && ./check_gateway.sh --no-chat
USAGE
}

mode="" state="$KIT_ROOT/.stack" timeout_s="" stack_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --local | --compose | --swarm) [ -z "$mode" ] || unexpected_argument "$1"; mode="${1#--}" ;;
        --state-dir) [ -n "${2:-}" ] || { printf -- '--state-dir needs a directory. Use --help.\n' >&2; exit 2; }
            state="$2"; shift ;;
        --timeout) require_positive_int "$1" "${2:-}"; timeout_s="$2"; shift ;;
        --profile | -f) [ -n "${2:-}" ] || { printf -- '%s needs a value. Use --help.\n' "$1" >&2; exit 2; }
            stack_args+=("$1" "$2"); shift ;;
        *) unexpected_argument "$1" ;;
    esac
    shift
done

[ "${#stack_args[@]}" -eq 0 ] || [ "$mode" = swarm ] ||
    { printf -- '--profile and -f go with --swarm (the stack file scripts/swarm_stack.sh renders). Use --help.\n' >&2; exit 2; }
swarm_service="${COMPOSE_PROJECT}_mlflow-gateway"
if [ -z "$mode" ]; then
    if [ -e "$state/pids/nginx.pid" ]; then
        mode=local
    elif docker_engine_up && prod_stack_running; then
        mode=compose
    elif docker_engine_up && docker service inspect "$swarm_service" >/dev/null 2>&1; then
        mode=swarm
    else
        die "no gateway found: no local stack in $state, no compose stack or swarm service $swarm_service on this docker engine (or pass --local, --compose, --swarm)"
    fi
fi

# ------------------------------------------------------------------------------ local stack
if [ "$mode" = local ]; then
    exec "$KIT_ROOT/scripts/local_stack.sh" reload --state-dir "$state" --timeout "${timeout_s:-120}"
fi

compose_available || die "docker compose (v2) not found: install Docker Engine with the compose plugin"
docker_engine_up || die "docker engine not reachable: start it (sudo systemctl start docker), then run this again"
cd "$KIT_ROOT"

# ------------------------------------------------------------------------------ swarm
# The swarm service's last rolling update: completed, rollback_completed, paused ... (empty: none yet).
update_state() {
    docker service inspect --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' "$swarm_service"
}
update_settled() { case "$(update_state)" in updating | rollback_started) return 1 ;; esac; }
if [ "$mode" = swarm ]; then
    docker service inspect "$swarm_service" >/dev/null 2>&1 ||
        die "no swarm service $swarm_service: deploy the stack first (docs/swarm.md)"
    image="$(docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "$swarm_service")"
    # The stack file, rendered once: read here, deployed below (it holds .env's values: a shell variable, no file).
    stack="$("$KIT_ROOT/scripts/swarm_stack.sh" "${stack_args[@]}")" || die "scripts/swarm_stack.sh ${stack_args[*]} failed (above)" 1
    # The files the stack's gateway-config and gateway-pricing are made from (a -f file may name others).
    mapfile -t files < <(printf '%s\n' "$stack" | python3 -c '
import json, sys
configs = json.load(sys.stdin).get("configs", {})
print(configs["gateway-config"]["file"]); print(configs["gateway-pricing"]["file"])')
    [ "${#files[@]}" -eq 2 ] || die "scripts/swarm_stack.sh ${stack_args[*]} names no gateway-config and gateway-pricing" 1
    # The replicas' keys are secrets on the swarm: check the file, pricing.yaml and settings with the service's
    # image, without keys. A replica that cannot serve it never turns healthy, and the update rolls back.
    log info "checking ${files[0]} with $image (preflight --no-keys)"
    docker run --rm --network none --entrypoint python -v "${files[0]}:/app/config.yaml:ro" \
        -v "${files[1]}:/app/pricing.yaml:ro" "$image" -m gateway_kit.preflight /app/config.yaml --no-keys ||
        die "${files[0]} refused (the line and reason above): nothing deployed, every replica keeps its config" 78
    log info "deploying: each replica is replaced in turn, the old one finishing its requests (start-first)"
    # --detach=false: the deploy waits until every service has converged (Docker Engine 26+), within --timeout.
    printf '%s\n' "$stack" |
        timeout "${timeout_s:-600}" docker stack deploy --detach=false -c - "$COMPOSE_PROJECT" || deployed=$?
    [ "${deployed:-0}" != 124 ] ||
        die "the update of $swarm_service is still running after ${timeout_s:-600}s: docker service ps $swarm_service" 1
    # The deploy returns once the tasks converged; the service's update status can say "updating" a moment longer.
    wait_until "the update of $swarm_service to settle" 120 update_settled ||
        die "the update of $swarm_service still says $(update_state) after 120 s: docker service ps $swarm_service" 1
    case "$(update_state)" in
        completed | '') ;;
        *) die "the update of $swarm_service ended $(update_state): $(docker service inspect --format '{{.UpdateStatus.Message}}' "$swarm_service") (docker service ps $swarm_service)" 1 ;;
    esac
    log info "every replica of $swarm_service runs the new config; ./check_gateway.sh --no-chat shows their hashes"
    exit 0
fi

# ------------------------------------------------------------------------------ compose
prod_stack_running || die "the production stack is not running (no nginx container): scripts/deploy.sh --prod"
mapfile -t ids < <(docker ps --quiet --filter "label=com.docker.compose.project=$COMPOSE_PROJECT" \
    --filter "label=com.docker.compose.service=mlflow-gateway")
[ "${#ids[@]}" -gt 0 ] || die "no running mlflow-gateway container: scripts/deploy.sh --prod"
# A replica sees ./config.yaml through a single-file bind mount, which follows the file's inode: a file replaced
# by a new one (an editor saving by rename, git checkout) is not what the running containers see.
host_sum="$(sha256sum config.yaml | cut -d' ' -f1)"
for id in "${ids[@]}"; do
    [ "$(docker exec "$id" sha256sum /app/config.yaml | cut -d' ' -f1)" = "$host_sum" ] ||
        die "container $(docker inspect --format '{{.Name}}' "$id") sees another config.yaml than ./config.yaml: the file was replaced rather than edited in place, so its bind mount still shows the old one. Write it in place (cp new.yaml config.yaml), or restart the replicas: docker compose -f $PROD_COMPOSE_FILE restart mlflow-gateway" 1
done
log info "checking config.yaml in a replica (entrypoint.sh --check)"
expected="$(docker exec "${ids[0]}" /app/entrypoint.sh --check)" ||
    die "config.yaml refused (the line and reason above): nothing reloaded, every replica keeps its config" 78
log info "config $expected checked; reloading ${#ids[@]} replica(s) one at a time (SIGHUP)"
serves_expected() {
    [ "$(docker exec "$1" python -m gateway_kit.reload served http://127.0.0.1:8000 | cut -d' ' -f2-)" = "$expected" ]
}
for id in "${ids[@]}"; do
    name="$(docker inspect --format '{{.Name}}' "$id")"
    docker kill --signal HUP "$id" >/dev/null   # what `docker compose kill -s HUP mlflow-gateway` sends each one
    wait_until "${name#/} to serve config $expected" "${timeout_s:-120}" serves_expected "$id" ||
        die "${name#/} does not serve config $expected: docker logs --tail 50 ${name#/}" 1
    log info "${name#/} serves config $expected"
done
log info "every replica serves config $expected; requests in flight finish on the old workers"
