# shellcheck shell=bash
# Shared helpers for scripts/*.sh. Sourced, never run:
#   # shellcheck source=scripts/lib.sh
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# log info|warn|error MSG   one line, coloured only when that stream is a TTY (NO_COLOR turns colour off)
# die MSG [CODE]            log error MSG, exit CODE (default 1)
# wait_until WHAT TIMEOUT CMD...   run CMD every 2 s until it succeeds, printing
#                           "waiting for WHAT (12s / 60s)"; returns 1 on timeout (the caller says what to do next)
# unexpected_argument ARG  "Unexpected argument: ARG. Use --help." on stderr, exit 2
# provider_key_report FILE  "NAME: set|placeholder|missing" per provider key, never the value
# service_health_counts SERVICE, service_all_healthy SERVICE N, prod_stack_running: container state by the
#                           labels compose puts on containers (project $COMPOSE_PROJECT)

# Repository root: every compose file, env.template and .env live there.
KIT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KIT_ROOT
# shellcheck disable=SC2034 # read by the scripts that source this file
DEV_COMPOSE_FILE="docker-compose.yml"
# shellcheck disable=SC2034 # read by the scripts that source this file
PROD_COMPOSE_FILE="docker-compose.prod.yml"
# Both compose files declare `name: mlflow-gateway`, so dev and prod are one project: switching between them
# replaces containers instead of leaving a second stack holding port 5000.
COMPOSE_PROJECT="${COMPOSE_PROJECT_NAME:-mlflow-gateway}"
# The value env.template ships (a placeholder by KEY_PLACEHOLDER_RE below, for the gateway as well).
# shellcheck disable=SC2034 # read by the scripts that source this file
KEY_PLACEHOLDER="sk-your-actual-key-here"
PROVIDER_KEYS=(OPENAI_API_KEY ANTHROPIC_API_KEY AZURE_OPENAI_API_KEY)

log() {
    local level="$1" fd=1 colour="" reset=""
    shift
    case "$level" in
        info) colour=$'\033[32m' ;;
        warn) colour=$'\033[33m'; fd=2 ;;
        error) colour=$'\033[31m'; fd=2 ;;
        *)
            printf 'log: unknown level %s\n' "$level" >&2
            return 2
            ;;
    esac
    # Colour only when the stream it goes to is a terminal (and NO_COLOR is not set).
    if [ -z "${NO_COLOR:-}" ] && [ -t "$fd" ]; then
        reset=$'\033[0m'
    else
        colour=""
    fi
    if [ "$fd" = 2 ]; then
        printf '%s%-5s%s %s\n' "$colour" "$level" "$reset" "$*" >&2
    else
        printf '%s%-5s%s %s\n' "$colour" "$level" "$reset" "$*"
    fi
}

die() {
    log error "$1"
    exit "${2:-1}"
}

# The standard complaint for an unknown argument (exit 2, the usage-error code).
unexpected_argument() {
    printf 'Unexpected argument: %s. Use --help.\n' "$1" >&2
    exit 2
}

# $1 = flag name, $2 = value: die with exit 2 unless the value is a positive integer.
require_positive_int() {
    case "$2" in
        '' | *[!0-9]* | 0*) printf '%s needs a positive integer, got %s. Use --help.\n' "$1" "${2:-nothing}" >&2; exit 2 ;;
    esac
}

wait_until() {
    local what="$1" timeout="$2" start now elapsed last_report=-5
    shift 2
    start=$SECONDS
    while :; do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        now=$SECONDS
        elapsed=$((now - start))
        if [ "$elapsed" -ge "$timeout" ]; then
            log error "timed out waiting for $what (${elapsed}s / ${timeout}s)"
            return 1
        fi
        if [ $((elapsed - last_report)) -ge 5 ]; then
            log info "waiting for $what (${elapsed}s / ${timeout}s)"
            last_report=$elapsed
        fi
        sleep 2
    done
}

# True when a Docker engine answers (the CLI alone is not enough).
docker_engine_up() {
    command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

# True when `docker compose` (v2 plugin) is installed.
compose_available() {
    command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1
}

# Value of KEY in FILE (a dotenv file) without sourcing it: last assignment wins, surrounding quotes dropped.
dotenv_value() {
    local key="$1" file="$2" line value=""
    [ -f "$file" ] || return 0
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line%$'\r'}"
        case "$line" in
            "$key="* | "export $key="*) value="${line#*=}" ;;
        esac
    done <"$file"
    value="${value#\"}"; value="${value%\"}"
    value="${value#\'}"; value="${value%\'}"
    printf '%s' "$value"
}

# What counts as a placeholder key. The same expression as gateway_kit/secrets.py (_PLACEHOLDER), so these
# scripts and the gateway agree on which keys are real (tests/static/test_static.py checks that they stay equal).
KEY_PLACEHOLDER_RE='your|x{4,}|changeme|change[-_]me|placeholder|replace|<.*>|example|^\.\.\.|\.\.\.$|^todo$|^none$|^null$'

# True when VALUE is empty or a placeholder rather than a real key.
is_placeholder() {
    [ -z "$1" ] || grep -Eiq -- "$KEY_PLACEHOLDER_RE" <<<"$1"
}

# Status of every provider key, one "NAME: state" line each (state: set, placeholder, missing). Never prints a value.
# Looked up where the gateway finds keys: the shell environment (it wins over .env, as it does for docker
# compose), then the dotenv file $1, then secrets/<name lower-case> (the prod compose file's secrets example).
provider_key_report() {
    local env_file="$1" name value source secret_file
    for name in "${PROVIDER_KEYS[@]}"; do
        value="${!name:-}"
        source="shell"
        if [ -z "$value" ]; then
            value="$(dotenv_value "$name" "$env_file")"
            source="$(basename "$env_file")"
        fi
        secret_file="$KIT_ROOT/secrets/$(printf '%s' "$name" | tr '[:upper:]' '[:lower:]')"
        if { [ -z "$value" ] || is_placeholder "$value"; } && [ -s "$secret_file" ]; then
            value="$(head -n 1 "$secret_file")"
            source="secrets/$(basename "$secret_file")"
        fi
        if [ -z "$value" ]; then
            printf '%s: missing\n' "$name"
        elif is_placeholder "$value"; then
            printf '%s: placeholder (in %s)\n' "$name" "$source"
        else
            printf '%s: set (from %s)\n' "$name" "$source"
        fi
    done
}

# Files in secrets/ the gateway (uid 10001 in the container) cannot read: compose mounts a file secret with its
# owner and mode. One "secrets/NAME" line per such file.
unreadable_secret_files() {
    local file owner_mode
    for file in "$KIT_ROOT"/secrets/*; do
        [ -f "$file" ] || continue
        owner_mode="$(stat -c '%u %a' "$file" 2>/dev/null)" || continue   # GNU stat only (not macOS's): no check
        case "$owner_mode" in
            "10001 "[4-7]??) ;;
            *[4-7]) ;;
            *) printf 'secrets/%s\n' "$(basename "$file")" ;;
        esac
    done
}

# Container ids of one compose service, every replica, running or not. Found by the labels compose puts on
# containers, so this works whichever compose file started them. $1 = service.
service_containers() {
    docker ps --all --quiet \
        --filter "label=com.docker.compose.project=$COMPOSE_PROJECT" \
        --filter "label=com.docker.compose.service=$1" 2>/dev/null
}

# True when the production variant runs: only docker-compose.prod.yml has an nginx service.
prod_stack_running() {
    [ -n "$(docker ps --quiet --filter "label=com.docker.compose.project=$COMPOSE_PROJECT" \
        --filter "label=com.docker.compose.service=nginx" 2>/dev/null)" ]
}

# "healthy total" for one compose service. $1 = service.
service_health_counts() {
    local ids id healthy=0 total=0
    ids="$(service_containers "$1")"
    for id in $ids; do
        total=$((total + 1))
        if [ "$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id" 2>/dev/null)" = healthy ]; then
            healthy=$((healthy + 1))
        fi
    done
    printf '%s %s\n' "$healthy" "$total"
}

# True when service $1 has exactly $2 containers and all of them are healthy.
service_all_healthy() {
    [ "$(service_health_counts "$1")" = "$2 $2" ]
}

# True when the URL answers 2xx within 5 s.
http_ok() {
    curl --silent --fail --output /dev/null --max-time 5 "$1"
}
