#!/bin/sh
# Generate the TLS material and SuperNode authentication keys for a Flower deployment.
#
#   docker/certs.sh OUT_DIR [NUM_SUPERNODES] [EXTRA_SAN ...]
#
# One source of truth for docker-compose.yml (the `certs` one-shot service) and for the
# deployment test (simulations/deployment.py calls this script). Writes into OUT_DIR:
#   ca.crt, ca.key                      a self-signed CA (root of trust for every TLS link)
#   superlink.crt, superlink.key        SuperLink server certificate (Fleet, Control, Runtime APIs);
#                                       SANs: superlink, localhost, 127.0.0.1, ::1 and each EXTRA_SAN
#   supernode-I.crt, supernode-I.key    SuperNode I's Runtime API certificate (its SuperExec connects
#                                       to it); SANs: supernode-I, localhost, 127.0.0.1, ::1
#   supernode-I.auth, supernode-I.auth.pub
#                                       SuperNode I's authentication key pair: ECDSA P-384 in OpenSSH
#                                       format (what `flower-supernode --auth-supernode-private-key`
#                                       and `flwr supernode register` read)
# for I = 1..NUM_SUPERNODES (default 3). An EXTRA_SAN that parses as an IPv4 address becomes an IP SAN,
# anything else a DNS SAN. Idempotent: existing files are kept, so the keys already registered with a
# SuperLink stay valid when the script runs again; delete OUT_DIR to rotate everything.
# Needs openssl (certificates) and ssh-keygen (OpenSSH-format node keys).
set -eu

OUT=${1:?usage: certs.sh OUT_DIR [NUM_SUPERNODES] [EXTRA_SAN ...]}
NUM=${2:-3}
[ $# -ge 2 ] && shift 2 || shift $#
DAYS=${CERT_DAYS:-365}

for tool in openssl ssh-keygen; do
    command -v "$tool" >/dev/null 2>&1 || { echo "certs.sh: $tool not found; install it" >&2; exit 2; }
done
case "$NUM" in ''|*[!0-9]*) echo "certs.sh: NUM_SUPERNODES must be a positive integer, got '$NUM'" >&2; exit 2;; esac
mkdir -p "$OUT"
umask 077

san_list() {  # san_list NAME [EXTRA ...] -> "DNS:NAME,DNS:localhost,IP:127.0.0.1,IP:::1,..."
    sans="DNS:$1,DNS:localhost,IP:127.0.0.1,IP:0:0:0:0:0:0:0:1"
    shift
    for extra in "$@"; do
        if printf '%s' "$extra" | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$'; then
            sans="$sans,IP:$extra"
        else
            sans="$sans,DNS:$extra"
        fi
    done
    printf '%s' "$sans"
}

server_cert() {  # server_cert NAME SANS: key + CSR + certificate signed by the CA
    name=$1
    [ -s "$OUT/$name.crt" ] && [ -s "$OUT/$name.key" ] && return 0
    openssl req -new -newkey rsa:2048 -nodes -keyout "$OUT/$name.key" -out "$OUT/$name.csr" \
        -subj "/CN=$name" 2>/dev/null
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
        "$2" > "$OUT/$name.ext"
    openssl x509 -req -in "$OUT/$name.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
        -out "$OUT/$name.crt" -days "$DAYS" -sha256 -extfile "$OUT/$name.ext" 2>/dev/null
    rm -f "$OUT/$name.csr" "$OUT/$name.ext"
}

if [ ! -s "$OUT/ca.crt" ] || [ ! -s "$OUT/ca.key" ]; then
    openssl req -x509 -new -newkey rsa:4096 -nodes -keyout "$OUT/ca.key" -out "$OUT/ca.crt" \
        -days "$DAYS" -sha256 -subj "/CN=fedsparse-flower-ca" 2>/dev/null
fi
server_cert superlink "$(san_list superlink "$@")"

i=1
while [ "$i" -le "$NUM" ]; do
    server_cert "supernode-$i" "$(san_list "supernode-$i")"
    if [ ! -s "$OUT/supernode-$i.auth" ]; then
        rm -f "$OUT/supernode-$i.auth.pub"
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" -f "$OUT/supernode-$i.auth"
    fi
    i=$((i + 1))
done
# Certificates and public keys are public; private keys stay 0600 (docker-compose.yml hands them to
# uid 49999, the official Flower images' user, with chown).
chmod 644 "$OUT"/*.crt "$OUT"/*.pub
rm -f "$OUT/ca.srl"
echo "certs.sh: CA, superlink and $NUM supernode certificates and auth keys in $OUT"
