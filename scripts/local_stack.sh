#!/usr/bin/env bash
# The production stack as plain processes on loopback, from the same entrypoint.sh, config.yaml and
# nginx.conf as the containers: N gateway replicas, nginx, Redis, the fake upstream, and with --admin the
# admin page (python -m gateway_kit.admin on 127.0.0.1:8090).
#
# How it stands in for Docker: replica i listens on 127.0.10.i:8000, and dnsmasq on 127.0.0.11:53
# (the address of Docker's embedded DNS, which nginx.conf asks) answers `mlflow-gateway` with every
# running replica, exactly as Docker answers a scaled service's name. Needs root for port 53.
set -euo pipefail
test "${DEBUG:-}" && set -x

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

usage() {
  cat <<'EOF'
Usage: scripts/local_stack.sh COMMAND [options]

Commands:
  up       start nginx (:5000), N replicas, Redis (:6379), dnsmasq and the fake upstream (:9000); with
           --admin, the admin page (:8090)
  down     stop everything this stack started (by pid), then remove nothing but the pid files
  scale N  start or stop replicas until N run; nginx picks the change up within 5 s, no reload. New replicas
           get the settings `up` had (GATEWAY_*, provider keys: kept in STATE/replica.env, mode 600); the
           admin page is restarted with the new replica list (its sessions end)
  restart redis   stop Redis (if it runs) and start it again, empty (limits start counting afresh)
  reload   check the config again and roll it to every replica without a restart (what scripts/reload.sh
           runs for the local stack): a refused file exits 78 and changes nothing
  status   what runs, with each replica's health

Options:
  --replicas N     replicas for `up` (default 2)
  --workers N      gunicorn workers per replica (default 2)
  --state-dir DIR  pid files, logs, ledger and runtime files (default .stack/ in the repo)
  --no-fake        do not start the fake upstream; provider keys and *_API_BASE come from your env
  --config FILE    the gateway config for every replica (default config.yaml)
  --keys FILE      client keys file (scripts/gateway_keys.sh --file FILE add NAME); turns GATEWAY_AUTH on,
                   the demo included (without it: auto, so no key in demo mode, keys/keys.json otherwise)
  --env NAME=VALUE another replica setting (repeatable), e.g. --env GATEWAY_LIMITS_ON_REDIS_DOWN=closed
  --admin FILE     also start the admin page on http://127.0.0.1:8090, its password in FILE (docs/admin.md);
                   it reads the stack's ledger and Redis and writes the keys file the replicas read, and
                   reloads the config from its Reload button (a reload token made in STATE/reload-token)
  --timeout S      how long to wait for health, or for a reload (default 60)
  -h, --help       this help

With no provider key in the environment, replicas start in demo mode against the fake upstream.
Examples:
  scripts/local_stack.sh up --replicas 3 && curl -s localhost:5000/gateway/chat/invocations \
    -H 'Content-Type: application/json' -d '{"messages":[{"role":"user","content":"Hi"}]}'
  scripts/local_stack.sh scale 1
  scripts/local_stack.sh down
EOF
}

command="${1:-}"
[ -n "$command" ] || { usage; exit 2; }
shift
replicas=2 workers=2 state="$repo/.stack" fake=1 timeout=60 target="" settings=() admin_password=""
while [ $# -gt 0 ]; do
  case "$1" in
    --replicas) replicas="${2:?--replicas needs a number}"; shift ;;
    --workers) workers="${2:?--workers needs a number}"; shift ;;
    --state-dir) state="${2:?--state-dir needs a directory}"; shift ;;
    --no-fake) fake="" ;;
    --timeout) timeout="${2:?--timeout needs seconds}"; shift ;;
    --config) settings+=("GATEWAY_CONFIG=$(realpath "${2:?--config needs a file}")"); shift ;;
    --keys) settings+=(GATEWAY_AUTH=on "GATEWAY_KEYS_FILE=$(realpath "${2:?--keys needs a file}")"); shift ;;
    --admin) admin_password="$(realpath "${2:?--admin needs the file that holds the admin password}")"; shift ;;
    --env) case "${2:-}" in
             GATEWAY_[A-Z0-9_]*=*) settings+=("$2") ;;
             *) echo "--env needs GATEWAY_NAME=VALUE, got '${2:-}'. Use --help." >&2; exit 2 ;;
           esac
           shift ;;
    redis) [ "$command" = restart ] || { echo "Unexpected argument: $1. Use --help." >&2; exit 2; }
           target=redis ;;
    -h|--help) usage; exit 0 ;;
    [0-9]*) [ "$command" = scale ] && [ -z "$target" ] || { echo "Unexpected argument: $1. Use --help." >&2; exit 2; }
            target="$1" ;;
    *) echo "Unexpected argument: $1. Use --help." >&2; exit 2 ;;
  esac
  shift
done
case "$command" in
  -h|--help) usage; exit 0 ;;
  up|down|scale|status|restart|reload) ;;
  *) echo "Unexpected argument: $command. Use --help." >&2; exit 2 ;;
esac

python="${PYTHON:-}"
[ -n "$python" ] || { [ -x "$repo/.venv/bin/python" ] && python="$repo/.venv/bin/python" || python=python3; }
pids="$state/pids" logs="$state/logs"
nginx_port=5000 fake_port=9000 redis_port=6379 dns_ip=127.0.0.11 admin_port=8090

replica_ip() { echo "127.0.10.$1"; }
pid_of() { cat "$pids/$1.pid" 2>/dev/null || true; }
# Running, and not a zombie waiting to be reaped (a killed replica can linger as one).
alive() {
  local pid state
  pid="$(pid_of "$1")"
  [ -n "$pid" ] && state="$(ps -o stat= -p "$pid" 2>/dev/null)" && [ "${state:0:1}" != Z ]
}

# Start a command in its own process group (so stopping it stops its children), logging to a file:
# stdout and stderr to logs/NAME.log, or stderr to logs/NAME-error.log with --stderr-apart (nginx: its stdout
# is the JSON access log, which must hold nothing else).
# Appending: nginx reopens /dev/stdout itself, and every writer must append or they overwrite each other.
start() {
  local errors=""
  [ "$1" = --stderr-apart ] && { errors=1; shift; }
  local name="$1"; shift
  if [ -n "$errors" ]; then
    setsid "$@" >>"$logs/$name.log" 2>>"$logs/$name-error.log" < /dev/null &
  else
    setsid "$@" >>"$logs/$name.log" 2>&1 < /dev/null &
  fi
  echo $! >"$pids/$name.pid"
}

stop() {
  local name="$1" pid waited=0
  pid="$(pid_of "$name")"
  [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ $waited -lt 40 ]; do sleep 0.25; waited=$((waited + 1)); done
  if kill -0 "$pid" 2>/dev/null; then
    log warn "$name (pid $pid) still running after 10s, killing it"
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pids/$name.pid"
}

port_free() {  # address port
  ! (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# Wait until `curl URL` succeeds, showing progress; fail with the log of NAME when it dies or times out.
wait_http() {
  local name="$1" url="$2" started=$SECONDS log_file="$logs/$1.log"
  [ -e "$logs/$name-error.log" ] && log_file="$logs/$name-error.log"  # its errors are kept apart (start)
  while ! curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    if ! alive "$name"; then
      log error "$name exited while starting; last lines of $log_file:"
      tail -n 20 "$log_file" >&2
      return 1
    fi
    if [ $((SECONDS - started)) -ge "$timeout" ]; then
      log error "$name did not answer $url within ${timeout}s; see $log_file"
      return 1
    fi
    if [ $(((SECONDS - started) % 5)) -eq 0 ] && [ $((SECONDS - started)) -gt 0 ]; then
      log info "waiting for $name ($((SECONDS - started))s / ${timeout}s)"
    fi
    sleep 0.5
  done
}

running_replicas() {
  local f
  for f in "$pids"/replica-*.pid; do
    [ -e "$f" ] || continue
    f="${f##*/replica-}"; echo "${f%.pid}"
  done | sort -n
}

# What Docker's DNS would answer for `mlflow-gateway`: every running replica.
publish_replicas() {
  local i tmp="$state/hosts.tmp"
  : >"$tmp"
  for i in $(running_replicas); do echo "$(replica_ip "$i") mlflow-gateway" >>"$tmp"; done
  mv "$tmp" "$state/hosts"
  if alive dnsmasq; then kill -HUP "$(pid_of dnsmasq)"; fi
}

# The environment `up` ran in, as far as a replica reads it: every GATEWAY_* setting, and every variable the
# config reads (provider keys, NAME_FILE paths, base URLs). Kept in $state/replica.env (mode 600: it may hold
# a key that was only in the environment) so that `scale` starts replicas exactly as `up` did, whatever the
# shell that runs `scale` exports. Never traced (DEBUG) and never on a command line.
remember_environment() {
  local config="$1"
  (
    set +x
    umask 077
    local name kind names=()
    while read -r name kind; do
      names+=("$name")
      if [ "$kind" = key ]; then names+=("${name}_FILE"); fi
    done < <("$python" -m gateway_kit.preflight "$config" --variables)
    printf '%s\n' "${names[@]}" >"$state/variables"
    rm -f "$state/replica.env"
    for name in "${names[@]}" $(compgen -e | grep '^GATEWAY_' | grep -v '^GATEWAY_ADMIN_\|^GATEWAY_RELOAD_TOKEN' | grep -vx 'GATEWAY_API_KEY\|GATEWAY_URL'); do
      if [ -n "${!name+set}" ]; then printf '%s=%s\0' "$name" "${!name}"; fi
    done >"$state/replica.env"
  )
}

# Run a command (or a function of this script) in replica i's environment: `up`'s settings and environment.
as_replica() {
  local i="$1" env=() name
  shift
  env+=(GATEWAY_HOST="$(replica_ip "$i")" GATEWAY_PORT=8000 GATEWAY_WORKERS="$workers"
        GATEWAY_REPLICA_ID="gateway-$i" GATEWAY_RUNTIME_DIR="$state/replica-$i"
        GATEWAY_LEDGER_DIR="$state/ledger" GATEWAY_REDIS_URL="redis://127.0.0.1:$redis_port/0"
        GATEWAY_LAUNCHER=local-stack PYTHON="$python")
  [ -n "$fake" ] && env+=(GATEWAY_DEMO_UPSTREAM="http://127.0.0.1:$fake_port")
  # The admin page's Reload asks the replicas with this token (gateway_kit/reload.py).
  [ -f "$state/reload-token" ] && env+=(GATEWAY_RELOAD_TOKEN_FILE="$state/reload-token")
  # --config, --keys and --env settings given to `up`, kept for the replicas `scale` starts later.
  [ -s "$state/settings" ] && mapfile -t -O "${#env[@]}" env <"$state/settings"
  (
    set +x
    # `up`'s environment, whatever this shell exports now: in the replica's environment, never on a command line.
    for name in $(compgen -e | grep '^GATEWAY_') $(cat "$state/variables" 2>/dev/null); do unset "$name"; done
    if [ -f "$state/replica.env" ]; then
      while IFS= read -r -d '' name; do export "${name?}"; done <"$state/replica.env"
    fi
    export "${env[@]}"
    "$@"
  )
}

start_replica() {
  mkdir -p "$state/replica-$1"
  as_replica "$1" start "replica-$1" "$repo/entrypoint.sh"
}

# What a replica's /ready says it serves: its config_hash (gateway_kit/reload.py), or why there is none.
served_hash() {
  PYTHONPATH="$repo" "$python" -m gateway_kit.reload served "http://$(replica_ip "$1"):8000" | cut -d' ' -f2-
}

# Check the config file first, as entrypoint.sh does at start (`entrypoint.sh --check`, in a replica's
# environment); refused: exit 78, nothing is signalled. Then, one replica at a time, SIGHUP its gunicorn master
# (it checks again, writes the active config, starts new workers and lets the old ones finish their requests)
# and wait until its /ready reports the checked config's hash; the other replicas serve meanwhile.
cmd_reload() {
  local expected i started
  log info "checking the config of the replicas (entrypoint.sh --check)"
  if ! expected="$(as_replica 1 "$repo/entrypoint.sh" --check)"; then
    log error "config refused (the line and reason above): nothing reloaded, every replica keeps its config"
    exit 78
  fi
  log info "config $expected checked; reloading replicas one at a time: $(running_replicas | tr '\n' ' ')"
  for i in $(running_replicas); do
    alive "replica-$i" || continue
    kill -HUP "$(pid_of "replica-$i")"
    log info "gateway-$i: SIGHUP sent"
    started=$SECONDS
    until [ "$(served_hash "$i")" = "$expected" ]; do
      if [ $((SECONDS - started)) -ge "$timeout" ]; then
        log error "gateway-$i serves $(served_hash "$i"), not $expected, ${timeout}s after SIGHUP; see $logs/replica-$i.log"
        exit 1
      fi
      log info "waiting for gateway-$i to serve $expected ($((SECONDS - started))s / ${timeout}s)"
      sleep 2
    done
    log info "gateway-$i serves config $expected"
  done
  log info "every replica serves config $expected; requests in flight finish on the old workers"
}

scale_to() {
  local n="$1" i
  for i in $(running_replicas); do
    if [ "$i" -gt "$n" ]; then
      log info "stopping replica $i"
      stop "replica-$i"
    fi
  done
  publish_replicas
  for i in $(seq 1 "$n"); do
    alive "replica-$i" || { log info "starting replica $i on $(replica_ip "$i"):8000"; start_replica "$i"; }
  done
  for i in $(seq 1 "$n"); do
    wait_http "replica-$i" "http://$(replica_ip "$i"):8000/health"
  done
  publish_replicas
  log info "$n replica(s) behind nginx: $(running_replicas | tr '\n' ' ')"
  if alive admin; then stop admin; start_admin; fi
}

# The admin page (python -m gateway_kit.admin): the replicas' ledger, Redis, config and keys file (the settings
# `up` was given), and the replicas to ask /ready, listed (the host does not resolve mlflow-gateway). Run from
# the repository, so that `python -m` finds this checkout's gateway_kit first.
start_admin() {
  local replica_list="" i env=()
  for i in $(running_replicas); do replica_list+="${replica_list:+,}$(replica_ip "$i"):8000"; done
  env+=(GATEWAY_ADMIN_PASSWORD_FILE="$(cat "$state/admin")" GATEWAY_ADMIN_PORT="$admin_port"
        GATEWAY_ADMIN_REPLICAS="$replica_list" GATEWAY_ADMIN_AUDIT_LOG="$state/admin-audit.jsonl"
        GATEWAY_LEDGER_DIR="$state/ledger" GATEWAY_REDIS_URL="redis://127.0.0.1:$redis_port/0"
        GATEWAY_CONFIG="$repo/config.yaml" GATEWAY_LAUNCHER=local-stack
        GATEWAY_RELOAD_TOKEN_FILE="$state/reload-token")
  [ -s "$state/settings" ] && mapfile -t -O "${#env[@]}" env <"$state/settings"
  (
    set +x
    # Nothing of the replicas' secrets: no provider key or URL (the variables config.yaml reads), no GATEWAY_*
    # setting of this shell; the admin page gets only the settings above.
    for name in $(compgen -e | grep '^GATEWAY_') $(cat "$state/variables" 2>/dev/null); do unset "$name"; done
    cd "$repo" && start admin env "${env[@]}" "$python" -m gateway_kit.admin
  )
  wait_http admin "http://127.0.0.1:$admin_port/health"
}

cmd_up() {
  [ "$(id -u)" = 0 ] || { log error "the local stack needs root: dnsmasq serves Docker's DNS address $dns_ip:53"; exit 1; }
  local tool
  for tool in nginx dnsmasq redis-server curl; do
    command -v "$tool" >/dev/null || { log error "$tool is missing: scripts/setup.sh installs it"; exit 1; }
  done
  mkdir -p "$pids" "$logs" "$state/nginx" "$state/ledger"
  if alive nginx; then log error "the stack in $state is already up; stop it first: scripts/local_stack.sh down"; exit 1; fi
  echo "$workers" >"$state/workers"
  echo "$fake" >"$state/fake"
  if [ "${#settings[@]}" -gt 0 ]; then printf '%s\n' "${settings[@]}" >"$state/settings"; else : >"$state/settings"; fi
  if [ -n "$admin_password" ]; then
    echo "$admin_password" >"$state/admin"
    # A reload token for this run, shared by the replicas and the admin page only (mode 600, never printed).
    (umask 077 && "$python" -c 'import secrets; print(secrets.token_hex(32))' >"$state/reload-token")
  else
    rm -f "$state/admin" "$state/reload-token"
  fi
  local config="${GATEWAY_CONFIG:-$repo/config.yaml}" setting
  for setting in "${settings[@]}"; do case "$setting" in GATEWAY_CONFIG=*) config="${setting#*=}" ;; esac; done
  remember_environment "$config"
  local ip port name
  while read -r ip port name; do
    [ -n "$name" ] || continue
    port_free "$ip" "$port" || {
      log error "$ip:$port for $name is in use: stop what holds it (ss -ltnp | grep :$port), or scripts/local_stack.sh down"
      exit 1; }
  done <<EOF_PORTS
127.0.0.1 $nginx_port nginx
127.0.0.1 $redis_port redis
$dns_ip 53 dnsmasq
${fake:+127.0.0.1 $fake_port fake-upstream}
${admin_password:+127.0.0.1 $admin_port admin}
EOF_PORTS
  trap 'log error "start failed; stopping what started"; cmd_down; exit 1' ERR

  start_redis
  : >"$state/hosts"
  start dnsmasq dnsmasq --keep-in-foreground --no-resolv --no-hosts --addn-hosts="$state/hosts" \
    --listen-address="$dns_ip" --bind-interfaces --port=53 --local-ttl=1 --user="$(id -un)" \
    --pid-file="$state/dnsmasq.pid" --log-facility=-
  if [ -n "$fake" ]; then
    start fake-upstream "$python" -m gateway_kit.fake_upstream --host 127.0.0.1 --port "$fake_port"
    wait_http fake-upstream "http://127.0.0.1:$fake_port/health"
  fi
  scale_to "$replicas"
  # -e: where nginx writes before it has read nginx.conf's `error_log stderr` (the same file).
  start --stderr-apart nginx nginx -c "$repo/nginx.conf" -p "$state/nginx" -e "$logs/nginx-error.log" \
    -g "daemon off; pid $state/nginx/nginx.pid;"
  wait_http nginx "http://127.0.0.1:$nginx_port/nginx-health"
  if [ -n "$admin_password" ]; then
    start_admin
    log info "admin page: http://127.0.0.1:$admin_port (audit log: $state/admin-audit.jsonl)"
  fi
  trap - ERR
  log info "stack up: http://127.0.0.1:$nginx_port (logs: $logs, down: scripts/local_stack.sh down)"
}

start_redis() {
  start redis redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --dir "$state"
  local waited=0
  until (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null; do
    alive redis || { log error "redis exited while starting; see $logs/redis.log"; return 1; }
    [ $waited -lt 40 ] || { log error "redis did not listen on :$redis_port within 10s; see $logs/redis.log"; return 1; }
    sleep 0.25; waited=$((waited + 1))
  done
}

cmd_down() {
  local name f
  [ -d "$pids" ] || { log info "nothing to stop in $state"; return 0; }
  for name in admin nginx $(running_replicas | sed 's/^/replica-/') fake-upstream dnsmasq redis; do
    [ -e "$pids/$name.pid" ] && { log info "stopping $name"; stop "$name"; }
  done
  for f in "$pids"/*.pid; do [ -e "$f" ] && { name="${f##*/}"; stop "${name%.pid}"; }; done
  log info "stack in $state stopped"
}

cmd_status() {
  local f name status=0
  for f in "$pids"/*.pid; do
    [ -e "$f" ] || { log warn "nothing runs from $state"; return 1; }
    name="${f##*/}"; name="${name%.pid}"
    if alive "$name"; then echo "$name: running (pid $(pid_of "$name"))"; else echo "$name: DEAD"; status=1; fi
  done
  return $status
}

case "$command" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  restart)
    [ "$target" = redis ] || { echo "restart needs what to restart: redis. Use --help." >&2; exit 2; }
    alive nginx || { log error "the stack is not up: scripts/local_stack.sh up"; exit 1; }
    stop redis
    start_redis
    log info "redis restarted (pid $(pid_of redis))" ;;
  reload)
    alive nginx || { log error "the stack is not up: scripts/local_stack.sh up"; exit 1; }
    workers="$(cat "$state/workers")" fake="$(cat "$state/fake")"
    cmd_reload ;;
  scale)
    [ -n "$target" ] || { echo "scale needs a number of replicas. Use --help." >&2; exit 2; }
    alive nginx || { log error "the stack is not up: scripts/local_stack.sh up"; exit 1; }
    workers="$(cat "$state/workers")" fake="$(cat "$state/fake")"
    scale_to "$target" ;;
esac
