#!/usr/bin/env bash
# A Docker Engine for the container tests (tests/containers/) on a machine that has none.
set -euo pipefail
test "${DEBUG:-}" && set -x

# shellcheck source-path=SCRIPTDIR
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/docker_engine.sh up|env|exec CMD...|dockerd NETNS CONFIG|stop|status

Gives the container tests an engine that can run the kit's compose files (Engine >= 25, compose plugin).
Where 'docker info' answers, that engine is used and nothing is started. Elsewhere (these Debian 12
machines: a docker CLI, no engine, no Docker Hub) it provisions one without touching the host's network:

  up       unpack Docker Engine 26 + compose from Debian trixie .debs (dpkg -x, never installed), make the
           base images (the real ones if a registry answers, else Debian stand-ins tagged with the names
           the Dockerfile and compose files use), build the kit image (mlflow-gateway:local) with a daemon
           in the host's namespace (no bridge, no iptables: pip reaches PyPI), then run the daemon that
           runs containers in the network namespace \$KIT_DOCKER_NETNS, on the same data-root.
  env      print the export lines for this engine (eval "\$(scripts/docker_engine.sh env)"); nothing when
           the machine's own engine is used
  exec     run CMD in the engine's network namespace (ports published by containers are there), e.g.
           scripts/docker_engine.sh exec curl -s http://127.0.0.1:5000/health
  dockerd NETNS CONFIG
           run the unpacked dockerd (after 'up') with the daemon.json CONFIG in the existing network
           namespace NETNS, in the foreground, with the cgroups re-mounted there: for extra engines, such
           as the swarm test's nodes (tests/containers/test_swarm.py); the caller stops it by its pid
  stop     stop every daemon this script started (by pid) and delete the namespace
  status   say which engine is in use and whether stand-ins were used

Environment:
  KIT_DOCKER_CACHE   kept between runs: .debs, the unpacked engine, stand-in tarballs, the data-root
                     with the built image (default /var/cache/mlflow-gateway-kit)
  KIT_DOCKER_STATE   sockets, pids and logs of this boot (default /run/mlflow-gateway-kit)
  KIT_DOCKER_NETNS   the network namespace of the run daemon (default mlflow-gateway-kit)
  KIT_IMAGE_ARGS     extra 'docker build' arguments for the kit image (e.g. --build-arg ...)
USAGE
}

CACHE_DIR="${KIT_DOCKER_CACHE:-/var/cache/mlflow-gateway-kit}"
STATE_DIR="${KIT_DOCKER_STATE:-/run/mlflow-gateway-kit}"
NETNS="${KIT_DOCKER_NETNS:-mlflow-gateway-kit}"
ENGINE_ROOT="$CACHE_DIR/engine"          # the unpacked .debs
ENGINE_BIN="$ENGINE_ROOT/bin"            # dockerd, containerd, runc, ... first on dockerd's PATH
DATA_ROOT="$CACHE_DIR/data-root"         # images, build cache, volumes: shared by both phases
DOCKER_CONFIG_DIR="$STATE_DIR/docker-config"
RUN_SOCK="$STATE_DIR/run/docker.sock"
KIT_IMAGE="mlflow-gateway:local"
# The trixie packages that run on Debian 12 when unpacked; trixie's runc needs a newer glibc, so runc is bookworm's.
TRIXIE_PACKAGES=(docker.io containerd docker-buildx docker-compose tini)
HOST_PACKAGES=(runc)
# Images the Dockerfile and docker-compose*.yml name (kept in step with them by tests/static/test_static.py).
PYTHON_IMAGE="python:3.11.17-slim-bookworm"
NGINX_IMAGE="nginx:1.30.5-alpine"
REDIS_IMAGE="redis:7.4.11-alpine"
PROMETHEUS_IMAGE="prom/prometheus:v3.5.0"

# ---- engine binaries ----

# The machine's Debian mirror (from its own apt sources), so the trixie .debs come from where apt already goes.
debian_mirror() {
    local uri
    uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
    [ -n "$uri" ] || uri="$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
    printf '%s' "${uri:-http://deb.debian.org/debian}"
}

fetch_debs() {
    local apt_dir="$CACHE_DIR/apt" debs="$CACHE_DIR/debs"
    if [ -f "$debs/.complete" ]; then
        log info "engine packages: cached in $debs"
        return 0
    fi
    log info "engine packages: downloading ${TRIXIE_PACKAGES[*]} (trixie) and ${HOST_PACKAGES[*]} (bookworm)"
    mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$debs"
    touch "$apt_dir/state/status"
    # A separate apt configuration whose only source is trixie on the machine's mirror: the host's sources,
    # lists and installed packages are left as they are.
    printf 'deb %s trixie main\n' "$(debian_mirror)" >"$apt_dir/sources.list"
    cat >"$apt_dir/apt.conf" <<APT
Dir::State "$apt_dir/state";
Dir::State::status "$apt_dir/state/status";
Dir::Cache "$apt_dir/cache";
Dir::Etc::SourceList "$apt_dir/sources.list";
Dir::Etc::SourceParts "/nonexistent";
APT::Sandbox::User "root";
APT
    APT_CONFIG="$apt_dir/apt.conf" timeout 300 apt-get update -qq
    (cd "$debs" && APT_CONFIG="$apt_dir/apt.conf" timeout 300 apt-get download -qq "${TRIXIE_PACKAGES[@]}")
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$debs" && timeout 300 apt-get -o APT::Sandbox::User=root download -qq "${HOST_PACKAGES[@]}")
    touch "$debs/.complete"
}

unpack_engine() {
    local deb
    if [ -x "$ENGINE_BIN/dockerd" ] && [ -f "$ENGINE_ROOT/.complete" ]; then
        return 0
    fi
    rm -rf "$ENGINE_ROOT"
    mkdir -p "$ENGINE_BIN"
    for deb in "$CACHE_DIR"/debs/*.deb; do
        dpkg -x "$deb" "$ENGINE_ROOT"
    done
    # One directory first on dockerd's PATH with everything it execs. docker-init is tini, statically linked.
    ln -sf "$ENGINE_ROOT/usr/sbin/dockerd" "$ENGINE_BIN/dockerd"
    ln -sf "$ENGINE_ROOT/usr/bin/containerd" "$ENGINE_BIN/containerd"
    ln -sf "$ENGINE_ROOT/usr/bin/containerd-shim-runc-v2" "$ENGINE_BIN/containerd-shim-runc-v2"
    ln -sf "$ENGINE_ROOT/usr/sbin/docker-proxy" "$ENGINE_BIN/docker-proxy"
    ln -sf "$ENGINE_ROOT/usr/bin/tini-static" "$ENGINE_BIN/docker-init"
    ln -sf "$ENGINE_ROOT/usr/sbin/runc" "$ENGINE_BIN/runc"
    local missing=""
    for deb in dockerd containerd containerd-shim-runc-v2 docker-proxy docker-init runc; do
        [ -x "$ENGINE_BIN/$deb" ] || missing="$missing $deb"
    done
    [ -z "$missing" ] || die "unpacked engine lacks:$missing (see $ENGINE_ROOT); remove $CACHE_DIR/debs and rerun"
    touch "$ENGINE_ROOT/.complete"
    log info "engine: $("$ENGINE_BIN/dockerd" --version)"
}

# The docker CLI finds the compose plugin (and buildx) of the unpacked packages through its config.
write_docker_config() {
    mkdir -p "$DOCKER_CONFIG_DIR"
    printf '{"cliPluginsExtraDirs": ["%s"]}\n' "$ENGINE_ROOT/usr/libexec/docker/cli-plugins" \
        >"$DOCKER_CONFIG_DIR/config.json"
}

# ---- daemons ----

# $1 = phase (build|run): the daemon's files.
phase_dir() { printf '%s/%s' "$STATE_DIR" "$1"; }

daemon_pid() {
    local pidfile
    pidfile="$(phase_dir "$1")/dockerd.pid"
    [ -s "$pidfile" ] || return 1
    local pid
    pid="$(cat "$pidfile")"
    kill -0 "$pid" 2>/dev/null || return 1
    printf '%s' "$pid"
}

# $1 = phase, $2 = JSON lines added to daemon.json
write_daemon_json() {
    local dir
    dir="$(phase_dir "$1")"
    mkdir -p "$dir/exec-root" "$DATA_ROOT"
    cat >"$dir/daemon.json" <<JSON
{
  "data-root": "$DATA_ROOT",
  "exec-root": "$dir/exec-root",
  "pidfile": "$dir/dockerd.pid",
  "hosts": ["unix://$dir/docker.sock"],
  "storage-driver": "overlay2",
  "cgroup-parent": "mlflow-gateway-kit",
  "log-level": "warn",
  $2
  "features": {"buildkit": true}
}
JSON
}

wait_daemon() {
    local phase="$1" sock
    sock="$(phase_dir "$phase")/docker.sock"
    if ! wait_until "the $phase-phase dockerd" 60 env DOCKER_HOST="unix://$sock" docker info; then
        tail -n 20 "$(phase_dir "$phase")/dockerd.log" >&2 || true
        die "dockerd ($phase phase) did not answer; its log: $(phase_dir "$phase")/dockerd.log; then run: scripts/docker_engine.sh stop"
    fi
}

# The build phase: dockerd in the host's network namespace so builds reach PyPI, with no bridge, no iptables and
# no ip_forward change; under its own mount namespace so its overlay mounts stay out of the host's mount table.
start_build_daemon() {
    daemon_pid build >/dev/null && return 0
    stop_daemon run
    write_daemon_json build '"bridge": "none", "iptables": false, "ip6tables": false, "ip-forward": false,'
    log info "starting the build-phase dockerd (host network namespace, no bridge, no iptables)"
    PATH="$ENGINE_BIN:$PATH" setsid unshare -m --propagation private \
        dockerd --config-file "$(phase_dir build)/daemon.json" >"$(phase_dir build)/dockerd.log" 2>&1 </dev/null &
    wait_daemon build
}

# Re-mount the host's cgroup layout inside `ip netns exec`, whose fresh /sys hides it (dockerd: "Devices cgroup
# isn't mounted"), then exec dockerd. Runs inside the namespace's own mount namespace: nothing leaks out.
cgroup_mount_script() {
    local script="mount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup"
    local _dev mnt fstype opts _rest
    while read -r _dev mnt fstype opts _rest; do
        case "$fstype" in
            cgroup)
                opts="$(printf '%s' "$opts" | tr ',' '\n' | grep -Ev '^(rw|ro|relatime|nosuid|nodev|noexec)$' | paste -sd, -)"
                script="$script && mkdir -p $mnt && mount -t cgroup -o $opts cgroup $mnt" ;;
            cgroup2)
                script="$script && mkdir -p $mnt && mount -t cgroup2 cgroup2 $mnt" ;;
        esac
    done </proc/self/mounts
    printf '%s' "$script"
}

# The run phase: dockerd inside the namespace $NETNS: its bridge, iptables rules and embedded DNS live there only.
start_run_daemon() {
    daemon_pid run >/dev/null && return 0
    stop_daemon build
    ip netns add "$NETNS" 2>/dev/null || true
    ip -n "$NETNS" link set lo up
    write_daemon_json run '"ip-forward": true, "iptables": true,'
    log info "starting the run-phase dockerd in network namespace $NETNS"
    setsid "$0" dockerd "$NETNS" "$(phase_dir run)/daemon.json" >"$(phase_dir run)/dockerd.log" 2>&1 </dev/null &
    wait_daemon run
}

# $1 = network namespace, $2 = daemon.json: the unpacked dockerd there, in the foreground (exec: same pid).
cmd_dockerd() {
    [ -f "$ENGINE_ROOT/.complete" ] || die "no unpacked engine in $ENGINE_ROOT: run scripts/docker_engine.sh up first"
    ip netns list | grep -qw -- "$1" || die "no network namespace $1 (ip netns add $1)" 2
    [ -f "$2" ] || die "no such daemon configuration: $2" 2
    PATH="$ENGINE_BIN:$PATH" exec ip netns exec "$1" sh -c "$(cgroup_mount_script) && exec dockerd --config-file '$2'"
}

# SIGTERM a daemon by its pidfile, wait (bounded), SIGKILL what is left, and then its containerd shims, found by
# the exec-root in their command line (they outlive a killed dockerd).
stop_daemon() {
    local phase="$1" pid dir waited=0 shim
    dir="$(phase_dir "$phase")"
    if pid="$(daemon_pid "$phase")"; then
        log info "stopping the $phase-phase dockerd (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$waited" -ge 60 ]; then
                log warn "dockerd (pid $pid) still running after ${waited}s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            [ $((waited % 10)) -eq 5 ] && log info "waiting for dockerd (pid $pid) to stop (${waited}s / 60s)"
            sleep 1
            waited=$((waited + 1))
        done
    fi
    for shim in /proc/[0-9]*; do
        if { tr '\0' ' ' <"$shim/cmdline"; } 2>/dev/null | grep -q -- "$dir/exec-root"; then
            kill -KILL "${shim#/proc/}" 2>/dev/null || true
        fi
    done
    rm -f "$dir/dockerd.pid"
}

# ---- images ----

# Base images: pulled where a registry answers, else stand-ins. Records which in $STATE_DIR/base-images.
ensure_base_images() {
    local image missing=() standins=()
    for image in "$PYTHON_IMAGE" "$NGINX_IMAGE" "$REDIS_IMAGE" "$PROMETHEUS_IMAGE"; do
        if docker image inspect "$image" >/dev/null 2>&1; then
            if [ "$(docker image inspect --format '{{index .Config.Labels "org.mlflow-gateway-kit.stand-in"}}' "$image")" = true ]; then
                standins+=("$image")
            fi
            continue
        fi
        log info "pulling $image"
        if timeout 120 docker pull -q "$image" >/dev/null 2>&1; then
            continue
        fi
        missing+=("$image")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log warn "no registry answers for ${missing[*]}: making Debian stand-ins with those names"
        make_standins "${missing[@]}"
        standins+=("${missing[@]}")
    fi
    printf '%s\n' "${standins[@]}" >"$CACHE_DIR/standins.list"
}

standin_tarball() {
    local name="$1" include="$2" tarball="$CACHE_DIR/standins/$1.tar"
    shift 2
    if [ -s "$tarball" ]; then
        printf '%s' "$tarball"
        return 0
    fi
    command -v mmdebstrap >/dev/null 2>&1 || {
        log info "installing mmdebstrap (apt) to make stand-in base images" >&2
        timeout 300 apt-get install -y -qq mmdebstrap >/dev/null
    }
    mkdir -p "$CACHE_DIR/standins"
    log info "making stand-in $name ($include) with mmdebstrap" >&2
    timeout 600 mmdebstrap --quiet --format=tar --variant=minbase --include="$include" "$@" bookworm "$tarball.tmp" \
        "$(debian_mirror)" >&2
    mv "$tarball.tmp" "$tarball"
    printf '%s' "$tarball"
}

# Stand-ins: Debian bookworm trees that behave, for the kit's files, like the images they are named after.
make_standins() {
    local image tarball label='LABEL org.mlflow-gateway-kit.stand-in=true'
    for image in "$@"; do
        case "$image" in
            "$PYTHON_IMAGE")
                # Python 3.11 at /usr/bin (venv included) and this machine's CA bundle: pip inside the build
                # may have to trust an intercepting proxy.
                # shellcheck disable=SC2016 # mmdebstrap expands $1 (the tree) in its hooks
                tarball="$(standin_tarball python python3,python3-venv,python-is-python3,ca-certificates \
                    --customize-hook='cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"')"
                docker import --change "$label" --change 'CMD ["python3"]' \
                    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' "$tarball" "$image" >/dev/null ;;
            "$NGINX_IMAGE" | "$REDIS_IMAGE" | "$PROMETHEUS_IMAGE")
                # One tree for the three services: nginx logs to the container's output like the official
                # image, keeps its temp files on the compose file's tmpfs; Redis answers other containers
                # (protected mode off, like the official image) and works in /data.
                # shellcheck disable=SC2016 # mmdebstrap expands $1 (the tree) in its hooks
                tarball="$(standin_tarball services nginx-light,redis-server,redis-tools,prometheus,wget,ca-certificates \
                    --customize-hook='ln -sf /dev/stdout "$1/var/log/nginx/access.log"; ln -sf /dev/stderr "$1/var/log/nginx/error.log"' \
                    --customize-hook='rm -rf "$1/var/lib/nginx"; ln -s /var/cache/nginx "$1/var/lib/nginx"' \
                    --customize-hook='printf "#!/bin/sh\nexec /usr/bin/redis-server \"\$@\" --protected-mode no\n" >"$1/usr/local/bin/redis-server"; chmod 755 "$1/usr/local/bin/redis-server"; mkdir -p "$1/data"')"
                case "$image" in
                    "$NGINX_IMAGE") docker import --change "$label" --change 'STOPSIGNAL SIGQUIT' \
                        --change 'CMD ["nginx", "-g", "daemon off;"]' "$tarball" "$image" >/dev/null ;;
                    "$REDIS_IMAGE") docker import --change "$label" --change 'WORKDIR /data' \
                        --change 'CMD ["redis-server"]' "$tarball" "$image" >/dev/null ;;
                    *) docker import --change "$label" --change 'WORKDIR /prometheus' \
                        --change 'ENTRYPOINT ["/usr/bin/prometheus"]' "$tarball" "$image" >/dev/null ;;
                esac ;;
        esac
        log info "stand-in tagged $image"
    done
}

# What the kit image is built from: a change to any of it means a rebuild.
context_hash() {
    (cd "$KIT_ROOT" && {
        printf '%s\n' "${KIT_IMAGE_ARGS:-}"
        find Dockerfile .dockerignore requirements.lock requirements-slim.lock config.yaml pricing.yaml entrypoint.sh gateway_kit -type f \
            -not -name '*.pyc' -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum
    } | sha256sum | cut -c1-16)
}

build_kit_image() {
    local hash
    hash="$(context_hash)"
    if [ "$(docker image inspect --format '{{index .Config.Labels "org.mlflow-gateway-kit.context"}}' "$KIT_IMAGE" 2>/dev/null)" = "$hash" ]; then
        log info "$KIT_IMAGE is up to date (context $hash)"
        return 0
    fi
    log info "building $KIT_IMAGE (context $hash): docker build --network host ."
    local start=$SECONDS
    # shellcheck disable=SC2086 # KIT_IMAGE_ARGS is a list of words on purpose
    docker build --network host --label "org.mlflow-gateway-kit.context=$hash" ${KIT_IMAGE_ARGS:-} \
        -t "$KIT_IMAGE" "$KIT_ROOT" >"$STATE_DIR/build.log" 2>&1 \
        || { tail -n 30 "$STATE_DIR/build.log" >&2; die "docker build failed; the whole log: $STATE_DIR/build.log"; }
    log info "built $KIT_IMAGE in $((SECONDS - start))s"
}

# ---- commands ----

own_engine_running() { daemon_pid run >/dev/null || daemon_pid build >/dev/null; }

cmd_up() {
    mkdir -p "$STATE_DIR" "$CACHE_DIR"
    if ! own_engine_running && docker_engine_up; then
        log info "engine: the machine's own ($(docker version --format '{{.Server.Version}}' 2>/dev/null)); nothing started"
        rm -f "$STATE_DIR/provisioned"
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "provisioning an engine needs root (namespaces, mounts): run as root, or start Docker"
    fetch_debs
    unpack_engine
    # dockerd sets up NAT for the bridge inside the namespace with iptables (the host's own rules stay untouched).
    command -v iptables >/dev/null 2>&1 || {
        log info "installing iptables (apt): the run-phase dockerd needs it inside its namespace"
        timeout 300 apt-get install -y -qq iptables >/dev/null
    }
    write_docker_config
    export DOCKER_CONFIG="$DOCKER_CONFIG_DIR"
    local hash_file="$CACHE_DIR/kit-image.context"
    [ -d "$DATA_ROOT" ] || rm -f "$hash_file"
    if [ "$(cat "$hash_file" 2>/dev/null)" != "$(context_hash)" ]; then
        start_build_daemon   # stops the run-phase daemon first: one daemon at a time on the data-root
        DOCKER_HOST="unix://$(phase_dir build)/docker.sock"
        export DOCKER_HOST
        ensure_base_images
        build_kit_image
        context_hash >"$hash_file"
    elif daemon_pid run >/dev/null; then
        log info "the run-phase dockerd is already running (pid $(daemon_pid run))"
    else
        log info "$KIT_IMAGE and the base images are cached in $DATA_ROOT (context $(context_hash))"
    fi
    start_run_daemon
    touch "$STATE_DIR/provisioned"
    export DOCKER_HOST="unix://$RUN_SOCK"
    log info "engine: Docker $(docker version --format '{{.Server.Version}}'), compose $(docker compose version --short) in namespace $NETNS"
    if [ -s "$CACHE_DIR/standins.list" ]; then
        log warn "stand-in base images (Debian bookworm, not the official images): $(paste -sd' ' "$CACHE_DIR/standins.list")"
    fi
}

cmd_env() {
    [ -f "$STATE_DIR/provisioned" ] || return 0
    printf 'export DOCKER_HOST=%q\nexport DOCKER_CONFIG=%q\nexport KIT_DOCKER_NETNS=%q\n' \
        "unix://$RUN_SOCK" "$DOCKER_CONFIG_DIR" "$NETNS"
}

cmd_stop() {
    stop_daemon run
    stop_daemon build
    if ip netns list 2>/dev/null | grep -qw -- "$NETNS"; then
        ip netns del "$NETNS"
    fi
    # Empty cgroup folders the daemon's cgroup-parent leaves behind (rmdir removes only empty ones).
    find /sys/fs/cgroup -depth -type d -path '*/mlflow-gateway-kit*' -exec rmdir {} + 2>/dev/null || true
    rm -f "$STATE_DIR/provisioned"
    log info "engine stopped; cache kept in $CACHE_DIR"
}

cmd_status() {
    if [ -f "$STATE_DIR/provisioned" ] && daemon_pid run >/dev/null; then
        printf 'engine: provisioned (pid %s, namespace %s, DOCKER_HOST=unix://%s)\n' "$(daemon_pid run)" "$NETNS" "$RUN_SOCK"
        if [ -s "$CACHE_DIR/standins.list" ]; then
            printf 'stand-in base images: %s\n' "$(paste -sd' ' "$CACHE_DIR/standins.list")"
        else
            printf 'stand-in base images: none\n'
        fi
    elif docker_engine_up; then
        printf "engine: the machine's own\n"
    else
        printf 'engine: none (run: scripts/docker_engine.sh up)\n'
        return 1
    fi
}

case "${1:-}" in
    -h | --help) usage ;;
    up) [ $# -eq 1 ] || unexpected_argument "$2"; cmd_up ;;
    env) [ $# -eq 1 ] || unexpected_argument "$2"; cmd_env ;;
    exec)
        shift
        [ $# -gt 0 ] || { printf 'exec needs a command. Use --help.\n' >&2; exit 2; }
        if [ -f "$STATE_DIR/provisioned" ]; then
            DOCKER_HOST="unix://$RUN_SOCK" DOCKER_CONFIG="$DOCKER_CONFIG_DIR" exec ip netns exec "$NETNS" "$@"
        fi
        exec "$@" ;;
    dockerd) [ $# -eq 3 ] || { printf 'dockerd needs NETNS and CONFIG. Use --help.\n' >&2; exit 2; }
        cmd_dockerd "$2" "$3" ;;
    stop) [ $# -eq 1 ] || unexpected_argument "$2"; cmd_stop ;;
    status) [ $# -eq 1 ] || unexpected_argument "$2"; cmd_status ;;
    '') printf 'Missing a command (up, env, exec, dockerd, stop, status). Use --help.\n' >&2; exit 2 ;;
    *) unexpected_argument "$1" ;;
esac
