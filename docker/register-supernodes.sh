#!/bin/sh
# Register SuperNode public keys with a running SuperLink (needed when it runs --enable-supernode-auth).
#
#   docker/register-supernodes.sh SUPERLINK_ADDRESS CA_CERT PUBLIC_KEY [PUBLIC_KEY ...]
#
# SUPERLINK_ADDRESS is host:port of the SuperLink (one port serves Control, Runtime and Fleet APIs in
# flwr 1.41); CA_CERT is the CA that signed its certificate. Writes a `flwr` CLI connection named
# `register` into $FLWR_HOME/config.toml (FLWR_HOME defaults to a temporary folder), waits up to
# REGISTER_WAIT seconds (default 120) for the SuperLink to answer, then runs
# `flwr supernode register KEY register` for each key. A key that is already registered (a restarted
# SuperLink with persisted state) counts as success, so the script can run on every `compose up`.
# Used by the `register` service in docker-compose.yml and by simulations/engines/deployment.py.
set -eu

ADDRESS=${1:?usage: register-supernodes.sh SUPERLINK_ADDRESS CA_CERT PUBLIC_KEY...}
CA=${2:?usage: register-supernodes.sh SUPERLINK_ADDRESS CA_CERT PUBLIC_KEY...}
shift 2
[ $# -ge 1 ] || { echo "register-supernodes.sh: give at least one PUBLIC_KEY" >&2; exit 2; }
export FLWR_HOME="${FLWR_HOME:-$(mktemp -d)}"
export FLWR_DISABLE_UPDATE_CHECK=1
mkdir -p "$FLWR_HOME"
printf '[superlink]\ndefault = "register"\n\n[superlink.register]\naddress = "%s"\nroot-certificates = "%s"\n' \
    "$ADDRESS" "$CA" > "$FLWR_HOME/config.toml"

deadline=$(( $(date +%s) + ${REGISTER_WAIT:-120} ))
until flwr supernode list register --format json 2>/dev/null | grep -q '"success": true'; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "register-supernodes.sh: SuperLink $ADDRESS did not answer within ${REGISTER_WAIT:-120}s" >&2
        exit 1
    fi
    sleep 2
done

for key in "$@"; do
    out=$(flwr supernode register "$key" register --format json 2>&1 || true)
    if printf '%s' "$out" | grep -q '"success": true'; then
        echo "registered $key"
    elif printf '%s' "$out" | grep -q 'already in use'; then
        echo "already registered $key"
    else
        echo "register-supernodes.sh: registering $key failed: $out" >&2
        exit 1
    fi
done
