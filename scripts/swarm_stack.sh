#!/usr/bin/env bash
# The stack file for Docker swarm mode: docker-compose.prod.yml with docker-stack.yml over it, in the form
# `docker stack deploy` reads. Prints it on stdout.
set -euo pipefail
test "${DEBUG:-}" && set -x

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/swarm_stack.sh [--profile NAME]... [-f FILE]...

Prints the stack file that runs the prod stack on a swarm (docs/swarm.md):
  docker compose -f docker-compose.prod.yml -f docker-stack.yml [-f FILE]... config
made readable by 'docker stack deploy', whose loader is older than the compose files: without the
compose-only keys it rejects (name, profiles, depends_on, build), cpus a string and published ports numbers, and with each
swarm config named after its file's content (configs cannot change in place: a changed nginx.conf
gets a new name, and the services using it roll).

  --profile NAME   a compose profile to include: demo (the fake LLM), monitoring (Prometheus, Grafana)
  -f FILE          another compose file over both (your settings), as with docker compose -f
  -h, --help       show this help

Variables (GATEWAY_REPLICAS, GATEWAY_WORKERS, ...) come from the shell and .env, as with docker compose;
.env's values are written into the output (the services' environment): pipe it, do not keep it.

Examples:
  docker node update --label-add mlflow-gateway.redis=true NODE   # once: where Redis keeps its data
  scripts/swarm_stack.sh | docker stack deploy -c - mlflow-gateway
  scripts/swarm_stack.sh --profile demo | docker stack deploy -c - mlflow-gateway
USAGE
}

compose_args=(-f "$PROD_COMPOSE_FILE" -f docker-stack.yml)
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --profile) [ -n "${2:-}" ] || { printf -- '--profile needs a name. Use --help.\n' >&2; exit 2; }
            compose_args+=(--profile "$2"); shift ;;
        -f) [ -n "${2:-}" ] || { printf -- '-f needs a file. Use --help.\n' >&2; exit 2; }
            [ -f "$2" ] || die "no such file: $2" 2
            compose_args+=(-f "$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift ;;
        *) unexpected_argument "$1" ;;
    esac
    shift
done

compose_available || die "docker compose (v2) not found: install Docker Engine with the compose plugin"
command -v python3 >/dev/null 2>&1 || die "python3 not found: it turns compose's output into a stack file"
cd "$KIT_ROOT"
docker compose "${compose_args[@]}" config --format json | python3 -c '
import hashlib, json, sys

stack = json.load(sys.stdin)
project = stack.pop("name")
for service in stack["services"].values():
    # Compose-only keys the stack loader rejects; swarm orders nothing by depends_on and builds nothing.
    for key in ("profiles", "depends_on", "build"):
        service.pop(key, None)
    for key in [k for k, v in service.items() if v is None]:
        del service[key]
    for mount in service.get("volumes", []):
        mount.get("bind", {}).pop("create_host_path", None)  # a bind source must exist on the node anyway
    for port in service.get("ports", []):
        if "published" in port:
            port["published"] = int(port["published"])
    for limits in service.get("deploy", {}).get("resources", {}).values():
        if "cpus" in limits:
            limits["cpus"] = str(limits["cpus"])
for key, config in stack.get("configs", {}).items():
    with open(config["file"], "rb") as f:
        config["name"] = f"{project}_{key}-{hashlib.sha256(f.read()).hexdigest()[:12]}"
json.dump(stack, sys.stdout, indent=2)
print()
'
