#!/usr/bin/env bash
# Is the gateway up and answering? Health over HTTP, the containers behind it, and one real chat request.
set -euo pipefail
test "${DEBUG:-}" && set -x

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<USAGE
Usage: ./check_gateway.sh [--url URL] [--endpoint NAME] [--timeout S] [--no-chat]

Checks, in order, then prints a verdict:
  1. ready       GET URL/ready answers 200: the replica that answered can serve (config loaded, Redis when
                 required); a 503 says what is missing. (/health, which only says "alive", is not enough.)
  2. nginx       GET URL/nginx-health answers 200 (prod only: required when an nginx container runs here)
  3. containers  state and health of every container of the compose project, each replica on its own line
                 (skipped, with a warning, when no docker engine answers: "docker engine not reachable")
  4. config      which config each replica serves (GET /ready's config_hash, asked --samples times through URL,
                 so every replica behind nginx answers); fails when replicas disagree, e.g. after a reload
                 (scripts/reload.sh) that one replica refused or has not finished
  5. chat        one real request to URL/gateway/NAME/invocations: shows the answer and the X-Gateway-Replica,
                 X-Request-ID and X-Upstream-Addr headers, and checks that the request id comes back

  --url URL        gateway base URL (default: \$GATEWAY_URL, from the shell or .env, or http://localhost:5000)
  --endpoint NAME  endpoint for the chat check (default: chat)
  --timeout S      seconds allowed for the chat request (default 60)
  --samples N      GET /ready requests for the config check (default 20: enough to reach every one of a few
                   replicas behind nginx, which picks one at random per request)
  --no-chat        skip the chat request (it costs a few tokens with a real provider)
                   The chat request sends \$GATEWAY_API_KEY (shell or .env) as the client key when set
                   (scripts/gateway_keys.sh add ops); it is never printed.
  -h, --help       show this help

Exit codes: 0 every check passed, 1 a check failed, 2 usage error, 3 cannot reach the gateway at URL.
Examples:
  ./check_gateway.sh
  GATEWAY_URL=http://10.0.0.5:5000 ./check_gateway.sh --no-chat
USAGE
}

# Defaults: $GATEWAY_URL, else GATEWAY_URL in .env, else the published port. --url overrides.
url="${GATEWAY_URL:-$(dotenv_value GATEWAY_URL "$KIT_ROOT/.env")}"
url="${url:-http://localhost:5000}"
endpoint="chat"
chat_timeout=60
chat=true
samples=20
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --url)
            [ -n "${2:-}" ] || { printf '%s\n' "--url needs a value. Use --help." >&2; exit 2; }
            url="$2"; shift ;;
        --endpoint)
            [ -n "${2:-}" ] || { printf '%s\n' "--endpoint needs a name. Use --help." >&2; exit 2; }
            endpoint="$2"; shift ;;
        --timeout)
            require_positive_int "$1" "${2:-}"
            chat_timeout="$2"; shift ;;
        --samples)
            require_positive_int "$1" "${2:-}"
            samples="$2"; shift ;;
        --no-chat) chat=false ;;
        *) unexpected_argument "$1" ;;
    esac
    shift
done
url="${url%/}"
command -v curl >/dev/null 2>&1 || die "curl not found: install it (apt-get install curl)"

passed=()
failed=()
unreachable=false
pass() { passed+=("$1"); log info "ok    $1: $2"; }
fail() { failed+=("$1"); log error "FAIL  $1: $2"; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The client key goes to curl in a 0600 file (-H @file), never on the command line where `ps` would show it.
api_key="${GATEWAY_API_KEY:-$(dotenv_value GATEWAY_API_KEY "$KIT_ROOT/.env")}"
(umask 077; if [ -n "$api_key" ]; then printf 'Authorization: Bearer %s\n' "$api_key"; fi >"$tmp/auth")

# 1. readiness (through nginx: whichever replica nginx picked)
log info "checking $url"
code="$(curl --silent --output "$tmp/ready" --write-out '%{http_code}' --max-time 10 "$url/ready" || true)"
case "$code" in
    200) pass ready "GET /ready -> 200" ;;
    000 | '') unreachable=true; fail ready "nothing answers at $url (connection refused or timed out)" ;;
    503) fail ready "GET /ready -> 503, the replica cannot serve: $(head -c 300 "$tmp/ready")" ;;
    *) fail ready "GET /ready -> $code: $(head -c 200 "$tmp/ready")" ;;
esac

# 2 and 3: containers first, they say whether an nginx edge is expected.
nginx_expected=unknown
if docker_engine_up; then
    ids="$(docker ps --all --quiet --filter "label=com.docker.compose.project=$COMPOSE_PROJECT")"
    if [ -z "$ids" ]; then
        log warn "no containers of compose project '$COMPOSE_PROJECT' on this docker engine: skipping container checks (is the stack on another host?)"
    else
        nginx_expected=false
        bad=0
        total=0
        # One line per container: service, name, state, health (none when the image has no healthcheck).
        # shellcheck disable=SC2086 # $ids is a whitespace-separated list of container ids
        while read -r service name state health; do
            total=$((total + 1))
            [ "$service" = nginx ] && nginx_expected=true
            if [ "$state" = running ] && { [ "$health" = healthy ] || [ "$health" = none ]; }; then
                log info "      $service  ${name#/}  $state, $health"
            else
                bad=$((bad + 1))
                log error "      $service  ${name#/}  $state, $health"
            fi
        done < <(docker inspect --format \
            '{{index .Config.Labels "com.docker.compose.service"}} {{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' \
            $ids | sort)
        if [ "$bad" -eq 0 ]; then
            pass containers "$total running and healthy"
        else
            fail containers "$bad of $total not running and healthy (a replica still 'starting' needs up to a minute)"
        fi
    fi
else
    log warn "docker engine not reachable: skipping container checks"
fi

code=000
[ "$unreachable" = true ] || code="$(curl --silent --output /dev/null --write-out '%{http_code}' --max-time 10 "$url/nginx-health" || true)"
case "$unreachable:$nginx_expected:$code" in
    true:*) ;;  # already failed above: nothing answers at all
    *:200) pass nginx "GET /nginx-health -> 200" ;;
    *:true:*) fail nginx "the nginx container runs but GET /nginx-health -> ${code:-000}" ;;
    *) log info "      no nginx edge at $url (the dev stack publishes the gateway directly)" ;;
esac

# 4. config: "replica hash" for every replica that answered GET /ready, one line each.
if [ "$unreachable" = false ]; then
    : >"$tmp/served"
    for _ in $(seq 1 "$samples"); do
        curl --silent --output "$tmp/ready" --dump-header "$tmp/ready-headers" --max-time 5 "$url/ready" || continue
        replica="$({ grep -i '^X-Gateway-Replica:' "$tmp/ready-headers" || true; } | tail -n 1 | cut -d: -f2- | tr -d '\r ')"
        served="$({ grep -o '"config_hash": *"[0-9a-f]*"' "$tmp/ready" || true; } | grep -o '[0-9a-f]\{12\}' || true)"
        echo "${replica:-unnamed} ${served:-none}" >>"$tmp/served"
    done
    sort -u "$tmp/served" -o "$tmp/served"
    while read -r replica served; do log info "      $replica  config $served"; done <"$tmp/served"
    hashes="$(cut -d' ' -f2 "$tmp/served" | sort -u | tr '\n' ' ')"
    replicas_seen="$(wc -l <"$tmp/served")"
    case "$(wc -w <<<"$hashes")" in
        0) fail config "no replica answered GET /ready" ;;
        1) pass config "every replica that answered ($replicas_seen) serves config ${hashes% }" ;;
        *) fail config "replicas serve different configs (${hashes% }): a reload is under way or was refused by one; run scripts/reload.sh again and see its output" ;;
    esac
fi

# 5. chat
if [ "$chat" = true ] && [ "$unreachable" = false ]; then
    request_id="check-$(date +%s)-$$"
    payload='{"messages": [{"role": "user", "content": "Reply with one short sentence: is the gateway working?"}], "max_tokens": 40}'
    log info "POST $url/gateway/$endpoint/invocations (X-Request-ID: $request_id)"
    code="$(curl --silent --show-error --output "$tmp/chat" --dump-header "$tmp/headers" --write-out '%{http_code}' \
        --max-time "$chat_timeout" -H 'Content-Type: application/json' -H "X-Request-ID: $request_id" -H "@$tmp/auth" \
        --data "$payload" "$url/gateway/$endpoint/invocations" 2>"$tmp/curl_err" || true)"
    # Last value of response header $1, empty when absent.
    header() { { grep -i "^$1:" "$tmp/headers" 2>/dev/null || true; } | tail -n 1 | cut -d: -f2- | tr -d '\r' | sed 's/^ *//'; }
    replica="$(header X-Gateway-Replica)"
    echoed_id="$(header X-Request-ID)"
    upstream="$(header X-Upstream-Addr)"
    log info "      X-Gateway-Replica: ${replica:-(missing)}"
    log info "      X-Request-ID:      ${echoed_id:-(missing)}"
    if [ -n "$upstream" ]; then
        log info "      X-Upstream-Addr:   $upstream"
    fi
    answer=""
    if [ "$code" = 200 ] && command -v python3 >/dev/null 2>&1; then
        answer="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])' <"$tmp/chat" 2>/dev/null || true)"
    fi
    [ -n "$answer" ] || answer="$(head -c 300 "$tmp/chat" 2>/dev/null || true)"
    case "$code" in
        200)
            log info "      answer: $answer"
            if [ "$echoed_id" = "$request_id" ]; then
                pass chat "200, answered by ${replica:-an unnamed replica}"
            else
                fail chat "200, but X-Request-ID came back as '${echoed_id:-nothing}', not '$request_id'"
            fi
            ;;
        000 | '') fail chat "no response within ${chat_timeout}s: $(cat "$tmp/curl_err")" ;;
        401) case "$answer" in
                 *gateway_key_required* | *invalid_gateway_key*)
                     fail chat "401 from the gateway: set GATEWAY_API_KEY to a client key (scripts/gateway_keys.sh add ops)" ;;
                 *) fail chat "401 from the provider: the key is wrong ($answer)" ;;
             esac ;;
        403) fail chat "403 from the provider: the key is wrong ($answer)" ;;
        429) fail chat "429: rate limit or provider quota ($answer); to try the kit without a key: scripts/deploy.sh --demo" ;;
        *) fail chat "$code: $answer" ;;
    esac
fi

# Verdict
if [ "${#failed[@]}" -eq 0 ]; then
    log info "verdict: OK, ${#passed[@]} check(s) passed (${passed[*]})"
    exit 0
fi
log error "verdict: FAILED, ${#failed[@]} of $((${#passed[@]} + ${#failed[@]})) check(s): ${failed[*]}"
log error "next: scripts/logs.sh --service mlflow-gateway --tail 100"
if [ "$unreachable" = true ]; then
    log error "nothing answers at $url: start the stack with scripts/deploy.sh (or --demo), or pass --url"
    exit 3
fi
exit 1
