"""Generate the TLS material and SuperNode authentication keys for a Flower deployment, offline.

    python docker/certs.py OUT_DIR [NUM_SUPERNODES] [EXTRA_SAN ...]     (or: sh docker/certs.sh ...)

Needs only Python and ``cryptography`` (a dependency of flwr, so present in every Flower image and in
this project's environment): no openssl or ssh-keygen binary, no network. docker-compose.yml's `certs`
service runs it in the project's own image; simulations/engines/deployment.py runs it through docker/certs.sh.
Writes into OUT_DIR:

  ca.crt, ca.key                       a self-signed CA (RSA 4096), the root of trust for every TLS link
  superlink.crt, superlink.key         the SuperLink's server certificate (Fleet, Control, Runtime APIs);
                                       SANs: superlink, localhost, 127.0.0.1, ::1 and each EXTRA_SAN
  supernode-I.crt, supernode-I.key     SuperNode I's Runtime API certificate (its SuperExec connects to
                                       it); SANs: supernode-I, localhost, 127.0.0.1, ::1
  supernode-I.auth, supernode-I.auth.pub
                                       SuperNode I's authentication key pair: ECDSA P-384 in OpenSSH
                                       format (what `flower-supernode --auth-supernode-private-key` and
                                       `flwr supernode register` read)

for I = 1..NUM_SUPERNODES (default 3). An EXTRA_SAN that parses as an IP address becomes an IP SAN,
anything else a DNS SAN. Idempotent: existing files are kept (new certificates are signed by the
existing CA), so keys already registered with a SuperLink stay valid; delete OUT_DIR to rotate
everything. Private keys are written 0600, certificates and public keys 0644. CERT_DAYS (default 365)
sets the validity. A bad argument ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PROG = "certs.py"


class CertsError(ValueError):
    """A bad argument or an unusable OUT_DIR; the message is one line."""


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with ``mode`` (a private key is never world-readable, not even briefly)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(entry: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(entry))
    except ValueError:
        return x509.DNSName(entry)


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))


def _load_or_make_ca(out: Path, days: int):
    crt, key = out / "ca.crt", out / "ca.key"
    if crt.is_file() and crt.stat().st_size and key.is_file() and key.stat().st_size:
        ca_key = serialization.load_pem_private_key(key.read_bytes(), None)
        return x509.load_pem_x509_certificate(crt.read_bytes()), ca_key
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    builder = (x509.CertificateBuilder().subject_name(_name("fedsparse-flower-ca")).issuer_name(_name("fedsparse-flower-ca"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(ski, critical=False))
    ca_crt = _validity(builder, days).sign(ca_key, hashes.SHA256())
    _write(key, _key_pem(ca_key), 0o600)
    _write(crt, ca_crt.public_bytes(serialization.Encoding.PEM), 0o644)
    return ca_crt, ca_key


def _server_cert(out: Path, name: str, sans: list[str], ca_crt, ca_key, days: int) -> None:
    crt, key = out / f"{name}.crt", out / f"{name}.key"
    if crt.is_file() and crt.stat().st_size and key.is_file() and key.stat().st_size:
        return
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    builder = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_crt.subject)
               .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.SubjectAlternativeName([_san(s) for s in dict.fromkeys(sans)]), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    _write(key, _key_pem(server_key), 0o600)
    _write(crt, _validity(builder, days).sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM), 0o644)


def _node_key(out: Path, name: str) -> None:
    priv, pub = out / f"{name}.auth", out / f"{name}.auth.pub"
    if priv.is_file() and priv.stat().st_size:
        return
    key = ec.generate_private_key(ec.SECP384R1())
    _write(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()), 0o600)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(pub, line + f" {name}\n".encode(), 0o644)


def make_certs(out: Path, num_supernodes: int = 3, extra_sans: list[str] | tuple[str, ...] = (),
               days: int = 365) -> Path:
    """Create whatever of the files above is missing in ``out``; returns ``out``."""
    if not isinstance(num_supernodes, int) or isinstance(num_supernodes, bool) or num_supernodes < 1:
        raise CertsError(f"NUM_SUPERNODES must be a positive integer, got {num_supernodes!r}")
    if days < 1:
        raise CertsError(f"CERT_DAYS must be a positive integer, got {days}")
    for s in extra_sans:
        if not s or any(c.isspace() for c in s) or s.startswith("-"):
            raise CertsError(f"EXTRA_SAN must be a host name or an IP address, got {s!r}")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertsError(f"cannot create OUT_DIR {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise CertsError(f"OUT_DIR {out} is not writable")
    local = ["localhost", "127.0.0.1", "::1"]
    ca_crt, ca_key = _load_or_make_ca(out, days)
    _server_cert(out, "superlink", ["superlink", *local, *extra_sans], ca_crt, ca_key, days)
    for i in range(1, num_supernodes + 1):
        _server_cert(out, f"supernode-{i}", [f"supernode-{i}", *local], ca_crt, ca_key, days)
        _node_key(out, f"supernode-{i}")
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() if argv else f"usage: {PROG} OUT_DIR [NUM_SUPERNODES] [EXTRA_SAN ...]",
              file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    out, num, extra = argv[0], (argv[1] if len(argv) > 1 else "3"), argv[2:]
    try:
        if not num.isdigit():
            raise CertsError(f"NUM_SUPERNODES must be a positive integer, got '{num}'")
        days = os.environ.get("CERT_DAYS", "365")
        if not days.isdigit():
            raise CertsError(f"CERT_DAYS must be a positive integer, got '{days}'")
        make_certs(Path(out), int(num), extra, int(days))
    except CertsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    print(f"{PROG}: CA, superlink and {num} supernode certificates and auth keys in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
