#!/usr/bin/env bash
# A Docker engine for the compose test (tests/docker/test_stack.py, marker `docker`) on a CI machine.
#
#   docker/ci-docker.sh up     install what is missing, start dockerd, provide the flwr/* 1.41.0 images
#   docker/ci-docker.sh down   remove the test's compose projects, stop the dockerd this script started
#   docker/ci-docker.sh wheels print the local folder to build torch from (for TORCH_WHEELS), or nothing
#                              when PyTorch's CPU index answers (then the Dockerfile's default is used)
#
# `up` follows ../shared/tools/flower-images/README.md: docker.io and debootstrap from the machine's
# Debian release, compose v2 and buildx from trixie (pinned low, --no-install-recommends, so docker.io
# stays), a plain `dockerd &` (`service docker start` fails on machines whose ulimit is too low), and
# local stand-ins for flwr/superlink, flwr/supernode and flwr/superexec (build.sh) when the official
# images are neither present nor pullable. It exits 0 when the engine answers and the images are there;
# otherwise it prints ONE line "docker test skipped: <why>" and exits 1, so CI can carry on without it.
# Details of every step go to $CI_DOCKER_DIR/setup.log (default /tmp/fedsparse-ci-docker).
set -uo pipefail

FLWR_VERSION=${FLWR_VERSION:-1.41.0}
DIR=${CI_DOCKER_DIR:-/tmp/fedsparse-ci-docker}
REPO=$(cd "$(dirname "$0")/.." && pwd)
IMAGES_BUILD=${FLOWER_IMAGES_BUILD:-$REPO/../shared/tools/flower-images/build.sh}
LOG=$DIR/setup.log
NICE=(nice -n 19)

skip() { echo "docker test skipped: $* (details: $LOG)"; exit 1; }

# run DESCRIPTION CMD...: run CMD with output to the log; on failure skip with DESCRIPTION.
run() {
    local what=$1; shift
    echo "== $what: $*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 || skip "$what failed"
}

engine_answers() { timeout 20 docker info >/dev/null 2>&1; }
compose_v2() { timeout 20 docker compose version --short 2>/dev/null | grep -Eq '^v?2\.'; }

apt_install() {  # apt_install PKG...: only as root, with apt-get
    [ "$(id -u)" = 0 ] || skip "$* missing and not root, cannot apt-get install"
    command -v apt-get >/dev/null || skip "$* missing and no apt-get on this machine"
    run "apt-get update" "${NICE[@]}" apt-get update -q
    run "apt-get install $*" env DEBIAN_FRONTEND=noninteractive "${NICE[@]}" apt-get install -y -q "$@"
}

install_compose_v2() {  # from trixie, pinned low, without recommends (which would replace docker.io)
    [ "$(id -u)" = 0 ] || skip "compose v2 missing and not root"
    local mirror
    mirror=$(grep -hoE '^URIs: *https?://[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1 | sed 's/^URIs: *//')
    [ -n "$mirror" ] || mirror=$(grep -hoE '^deb +https?://[^ ]+/debian/? ' /etc/apt/sources.list 2>/dev/null | head -n1 | awk '{print $2}')
    mirror=${mirror:-http://deb.debian.org/debian}
    printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$mirror" >/etc/apt/sources.list.d/fedsparse-trixie.sources
    printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' >/etc/apt/preferences.d/fedsparse-trixie
    run "apt-get update (trixie)" "${NICE[@]}" apt-get update -q
    run "apt-get install compose v2" env DEBIAN_FRONTEND=noninteractive "${NICE[@]}" \
        apt-get install -y -q --no-install-recommends docker-compose/trixie docker-buildx/trixie
}

up() {
    mkdir -p "$DIR" && : >"$LOG" || { echo "docker test skipped: cannot write $DIR"; exit 1; }
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
    command -v docker >/dev/null || skip "no docker CLI after installing docker.io"

    if ! engine_answers; then
        command -v dockerd >/dev/null || skip "no dockerd"
        echo "== dockerd (log $DIR/dockerd.log)" >>"$LOG"
        # Under nice: builds and containers inherit it (CI machines may be shared with other jobs).
        nohup "${NICE[@]}" dockerd >"$DIR/dockerd.log" 2>&1 &
        echo $! >"$DIR/dockerd.pid"
        local i
        for i in $(seq 60); do engine_answers && break; sleep 1; done
        engine_answers || skip "dockerd did not answer within 60s ($(tail -n1 "$DIR/dockerd.log" 2>/dev/null))"
    fi
    compose_v2 || install_compose_v2
    compose_v2 || skip "docker compose v2 is not available"
    docker buildx version >/dev/null 2>&1 || skip "docker buildx is not available"

    local t missing_img=0
    for t in superlink supernode superexec; do
        docker image inspect "flwr/$t:$FLWR_VERSION" >/dev/null 2>&1 \
            || timeout 60 docker pull -q "flwr/$t:$FLWR_VERSION" >>"$LOG" 2>&1 || missing_img=1
    done
    if [ $missing_img = 1 ]; then
        [ -f "$IMAGES_BUILD" ] || skip "flwr/*:$FLWR_VERSION cannot be pulled and $IMAGES_BUILD is missing"
        # build.sh greps /etc/apt/sources.list for the Debian mirror under `set -o pipefail`: a machine
        # with only deb822 sources (sources.list.d/*.sources) has no such file and build.sh stops there.
        [ -e /etc/apt/sources.list ] || [ "$(id -u)" != 0 ] \
            || echo "# sources are in /etc/apt/sources.list.d/ (created empty by fedsparse docker/ci-docker.sh)" >/etc/apt/sources.list
        run "building the flwr/* stand-ins ($IMAGES_BUILD)" "${NICE[@]}" bash "$IMAGES_BUILD" "$FLWR_VERSION"
    fi
    echo "docker engine up: $(docker version --format 'engine {{.Server.Version}}' 2>/dev/null), compose $(docker compose version --short), flwr/* $FLWR_VERSION images present"
}

down() {
    if engine_answers; then  # the compose test's projects, if a killed test left any behind
        local p
        for p in $(docker compose ls -a -q 2>/dev/null | grep '^fedsparse-test' || true); do
            docker compose -p "$p" down -v --remove-orphans >/dev/null 2>&1 || true
        done
    fi
    if [ -f "$DIR/dockerd.pid" ]; then
        local pid
        pid=$(cat "$DIR/dockerd.pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            echo "dockerd ($pid) stopped"
        fi
        rm -f "$DIR/dockerd.pid"
    fi
}

wheels() {  # the pip find-links folders of this machine that hold a CPU torch wheel
    timeout 15 python3 -c "import urllib.request as u; u.urlopen('https://download.pytorch.org/whl/cpu/', timeout=10)" \
        >/dev/null 2>&1 && return 0
    local d
    for d in ${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null); do
        if ls "$d"/torch-*+cpu-*.whl >/dev/null 2>&1; then echo "$d"; return 0; fi
    done
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    wheels) wheels ;;
    *) echo "usage: docker/ci-docker.sh up|down|wheels" >&2; exit 2 ;;
esac
