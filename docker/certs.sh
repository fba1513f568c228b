#!/bin/sh
# Generate the TLS material and SuperNode authentication keys for a Flower deployment.
#
#   docker/certs.sh OUT_DIR [NUM_SUPERNODES] [EXTRA_SAN ...]
#
# A thin wrapper around docker/certs.py (the one implementation: what it writes, SANs, idempotence and
# file modes are described there), kept for simulations/engines/deployment.py and for users who call it by this
# name. Runs ${PYTHON:-python3}, which needs the `cryptography` package (a dependency of flwr); no
# openssl or ssh-keygen binary and no network. docker-compose.yml's `certs` service runs certs.py
# directly in the project's image.
set -eu
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || { echo "certs.sh: $PY not found; set PYTHON to a Python with cryptography" >&2; exit 2; }
"$PY" -c "import cryptography" 2>/dev/null || { echo "certs.sh: $PY has no 'cryptography' package; set PYTHON or pip install cryptography" >&2; exit 2; }
exec "$PY" "$(dirname "$0")/certs.py" "$@"
