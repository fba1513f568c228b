"""docker-compose.yml is consistent with the pinned Flower and with itself (no container engine needed).

Every flag exists in the installed Flower CLI that the service runs (and is not a deprecated one), the
image tags are the installed flwr version, ports and addresses line up, every certificate/key path is
mounted from a file that docker/certs.sh produces (server certificates carrying the SAN the clients dial),
every node's key is registered, and the partition ids cover 0..N-1 exactly once.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from functools import lru_cache
from pathlib import Path

import flwr
import pytest
import yaml

from simulations.engines.deployment import make_certs

REPO = Path(__file__).resolve().parents[2]
PATH_FLAGS = ("--ssl-certfile", "--ssl-keyfile", "--ssl-ca-certfile", "--root-certificates",
              "--auth-supernode-private-key")


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory, services) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"), len(supernodes(services)))


def supernodes(services: dict) -> dict:
    return {n: s for n, s in services.items() if cli_of(s) == "flower-supernode"}


def cli_of(svc: dict) -> str | None:
    """The Flower executable a service runs: the official image's entrypoint, or the project's SuperExec."""
    if "entrypoint" in svc:
        return None
    image = svc.get("image", "")
    for name in ("superlink", "supernode", "superexec"):
        if image.startswith(f"flwr/{name}:") or (name == "superexec" and "Dockerfile.superexec" in str(svc.get("build"))):
            return f"flower-{name}"
    return None


@lru_cache(maxsize=None)
def cli_flags(cli: str) -> tuple[frozenset[str], frozenset[str]]:
    """(all long flags, deprecated long flags) from ``<cli> --help`` of the installed flwr."""
    text = subprocess.run([cli, "--help"], capture_output=True, text=True, env={"FLWR_DISABLE_UPDATE_CHECK": "1",
                          "PATH": subprocess.os.environ["PATH"], "COLUMNS": "200"}, timeout=60).stdout
    options = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    flags, deprecated = set(), set()
    for opt in options:
        names = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", opt.split("  ", 1)[0]))
        flags |= names
        if "deprecated" in opt.lower():
            deprecated |= names
    return frozenset(flags), frozenset(deprecated)


def args_of(svc: dict) -> dict[str, str | None]:
    """``--flag value`` pairs of a service's command (``--flag`` alone maps to None)."""
    cmd = svc["command"]
    tokens = shlex.split(cmd) if isinstance(cmd, str) else [str(t) for t in cmd]
    out: dict[str, str | None] = {}
    for i, tok in enumerate(tokens):
        if tok.startswith("--"):
            name, eq, val = tok.partition("=")
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            out[name] = val if eq else (nxt if nxt is not None and not nxt.startswith("--") else None)
    return out


def with_defaults(text: str) -> str:
    """``${VAR:-default}`` -> ``default``: the value compose uses when VAR is not set."""
    return re.sub(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", r"\1", text)


def mounts(svc: dict) -> dict[str, str]:
    """Container target -> host source of a service's bind mounts (short and long syntax)."""
    out = {}
    for vol in svc.get("volumes", []):
        if isinstance(vol, str):
            source, target = vol.split(":")[:2]
        else:
            source, target = vol["source"], vol["target"]
        out[target] = source
    return out


def test_every_flag_exists_in_the_pinned_flower_cli(services):
    checked = 0
    for name, svc in services.items():
        cli = cli_of(svc)
        if cli is None:
            continue
        flags, deprecated = cli_flags(cli)
        assert "--ssl-certfile" in flags or cli == "flower-superexec"  # the help parsing works
        for flag in args_of(svc):
            assert flag in flags, f"{name}: {cli} {flwr.__version__} has no {flag}"
            assert flag not in deprecated, f"{name}: {flag} is deprecated in {cli} {flwr.__version__}"
            checked += 1
    assert checked > 30


def test_images_pin_the_installed_flower_version(services):
    for name, svc in services.items():
        if svc.get("image", "").startswith("flwr/"):
            assert svc["image"].split(":")[1] == flwr.__version__, name
        if "build" in svc:
            assert svc["build"]["args"]["FLWR_VERSION"] == flwr.__version__, name
    dockerfile = (REPO / "docker" / "Dockerfile.superexec").read_text()
    assert f"ARG FLWR_VERSION={flwr.__version__}" in dockerfile and "FROM flwr/superexec:${FLWR_VERSION}" in dockerfile


def test_ports_and_addresses_line_up(services):
    link = args_of(services["superlink"])
    port = link["--port"]
    assert link["--host"] == "0.0.0.0" and link["--isolation"] == "process"
    assert f"{port}:{port}" in [with_defaults(p) for p in services["superlink"]["ports"]]
    assert args_of(services["superexec-serverapp"])["--runtime-api-address"] == f"superlink:{port}"
    assert services["register"]["command"][0] == f"superlink:{port}"
    nodes = supernodes(services)
    execs = {args_of(s)["--runtime-api-address"] for n, s in services.items() if n.startswith("superexec-clientapp")}
    assert len(execs) == len(nodes)  # one ClientApp SuperExec per SuperNode, none shared
    for name, svc in nodes.items():
        a = args_of(svc)
        assert a["--superlink"] == f"superlink:{port}" and a["--isolation"] == "process"
        assert a["--host"] == "0.0.0.0" and f"{name}:{a['--port']}" in execs


def test_tls_everywhere_and_cert_paths_are_mounted_from_generated_files(services, certs):
    for name, svc in services.items():
        if cli_of(svc) is None:
            continue
        a, m = args_of(svc), mounts(svc)
        assert "--insecure" not in a, name
        assert "--root-certificates" in a or "--ssl-certfile" in a, f"{name} has no TLS"
        for flag in PATH_FLAGS:
            if flag in a:
                assert a[flag] in m, f"{name}: {flag} {a[flag]} is not mounted"
                source = Path(m[a[flag]])
                assert source.parent == Path("certs") and (certs / source.name).is_file(), f"{name}: {source}"
        if "--ssl-certfile" in a:  # the certificate must name the host its clients dial
            san = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                                  str(certs / Path(m[a["--ssl-certfile"]]).name)], capture_output=True, text=True)
            assert f"DNS:{name}" in san.stdout, f"{name}: certificate SANs {san.stdout.strip()}"


def test_node_auth_on_and_every_node_key_registered(services, certs):
    assert "--enable-supernode-auth" in args_of(services["superlink"])
    reg = services["register"]
    reg_mounts = mounts(reg)
    registered = {Path(reg_mounts[p]).name for p in reg["command"][2:]}
    for name, svc in supernodes(services).items():
        key = Path(mounts(svc)[args_of(svc)["--auth-supernode-private-key"]])
        assert key.name == f"{name}.auth" and f"{key.name}.pub" in registered, name
        assert (certs / f"{key.name}.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert (REPO / "docker" / "register-supernodes.sh").is_file()
    assert [v for v in reg["volumes"] if isinstance(v, str) and "register-supernodes.sh" in v]


def test_partition_ids_cover_each_index_once(services):
    configs = []
    for svc in supernodes(services).values():
        kv = dict(item.split("=") for item in args_of(svc)["--node-config"].split())
        configs.append((int(kv["partition-id"]), int(kv["num-partitions"])))
    n = len(configs)
    assert n == 3  # the documented default
    assert sorted(pid for pid, _ in configs) == list(range(n))
    assert {parts for _, parts in configs} == {n}
    assert f"certs.py /certs {n} " in services["certs"]["command"][0]  # a certificate and key per node


def test_state_persists_in_a_named_volume(services):
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    db = Path(args_of(services["superlink"])["--database"])
    source = mounts(services["superlink"])[str(db.parent)]
    assert source in compose["volumes"]
