"""docker/certs.sh: a CA, server certificates with the right SANs, P-384 node keys Flower accepts; idempotent."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from simulations.engines.deployment import CERTS_SCRIPT, DeploymentError, make_certs


def sans(cert: Path) -> str:
    return subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(cert)],
                          capture_output=True, text=True, check=True).stdout


def test_certificates_chain_to_the_ca_and_name_their_hosts(tmp_path):
    out = make_certs(tmp_path / "c", 2)
    for name in ("superlink", "supernode-1", "supernode-2"):
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / f"{name}.crt")],
                                capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        text = sans(out / f"{name}.crt")
        assert f"DNS:{name}" in text and "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    assert not (out / "supernode-3.crt").exists()
    assert (out / "ca.key").stat().st_mode & 0o077 == 0  # private keys are not world-readable


def test_node_keys_are_p384_openssh_keys_flower_loads(tmp_path):
    from flwr.cli.supernode.register import try_load_public_key

    out = make_certs(tmp_path / "c", 1)
    key = load_ssh_private_key((out / "supernode-1.auth").read_bytes(), None)  # as flower-supernode loads it
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert try_load_public_key(out / "supernode-1.auth.pub")  # as `flwr supernode register` loads it


def test_rerun_keeps_existing_material_and_adds_missing_nodes(tmp_path):
    out = make_certs(tmp_path / "c", 1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    make_certs(out, 2)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert all(after[name] == data for name, data in before.items())  # registered keys stay valid
    assert {"supernode-2.crt", "supernode-2.key", "supernode-2.auth", "supernode-2.auth.pub"} <= set(after)


def test_extra_sans_and_bad_input(tmp_path):
    subprocess.run(["sh", str(CERTS_SCRIPT), str(tmp_path / "c"), "1", "flower.example.org", "203.0.113.7"],
                   check=True, capture_output=True)
    text = sans(tmp_path / "c" / "superlink.crt")
    assert "DNS:flower.example.org" in text and "IP Address:203.0.113.7" in text
    with pytest.raises(DeploymentError, match="positive integer"):
        make_certs(tmp_path / "d", "three")  # type: ignore[arg-type]


def test_needs_only_python_no_openssl_or_ssh_keygen(tmp_path):
    """What the compose `certs` service relies on: no openssl, no ssh-keygen, no package install."""
    import shutil
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, target in (("sh", shutil.which("sh")), ("dirname", shutil.which("dirname")), ("python3", sys.executable)):
        (bin_dir / tool).symlink_to(target)
    res = subprocess.run(["sh", str(CERTS_SCRIPT), str(tmp_path / "c"), "2"], capture_output=True, text=True,
                         env={"PATH": str(bin_dir)})
    assert res.returncode == 0, res.stderr
    out = tmp_path / "c"
    assert {p.name for p in out.iterdir()} == {"ca.crt", "ca.key", "superlink.crt", "superlink.key",
                                              *(f"supernode-{i}.{ext}" for i in (1, 2)
                                                for ext in ("crt", "key", "auth", "auth.pub"))}
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "superlink.crt")],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for name in ("ca.key", "superlink.key", "supernode-1.key", "supernode-1.auth"):
        assert (out / name).stat().st_mode & 0o777 == 0o600, name
    bad = subprocess.run([sys.executable, str(CERTS_SCRIPT.with_name("certs.py")), str(tmp_path / "d"), "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "positive integer" in bad.stderr, bad.stderr
