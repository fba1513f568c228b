"""Run the app on Flower's Deployment Engine on this machine: one SuperLink + N SuperNodes, TLS, node auth.

Real ``flower-superlink`` / ``flower-supernode`` processes on 127.0.0.1 (free ports), each with a private
``FLWR_HOME``; the ServerApp and every ClientApp run in SuperExec subprocesses (``--isolation subprocess``).
Certificates and node keys come from ``docker/certs.sh`` (the same script docker-compose.yml uses).

API
---
``make_certs(out_dir, num_supernodes) -> Path``
    Runs ``docker/certs.sh``: CA, SuperLink and per-SuperNode certificates, OpenSSH P-384 node keys.
    Node keys are registered with ``docker/register-supernodes.sh`` (also the compose ``register`` service).
``deployment(workdir, num_supernodes=2, tls=True, auth=True, ...)`` (context manager) ``-> Deployment``
    Starts a SuperLink (persistent ``--database`` in ``workdir``), writes the ``flwr`` CLI connection
    into ``workdir/cli/config.toml``, registers each node's public key (when ``auth``), starts the
    SuperNodes with ``--node-config "partition-id=i num-partitions=N"`` and waits until all are online.
    On exit it stops every process tree it started, also after an exception.
``Deployment.run(run_config, app_dir=REPO, timeout=...) -> int``
    ``flwr run <app_dir> <connection> --stream --run-config ...``; returns its exit code, log in
    ``workdir/flwr-run.log``.
``Deployment.start_supernode(index, partition_id, num_partitions, tls=..., auth=..., register=...)``
    Starts one more SuperNode (e.g. an unregistered or plain-text one, to prove it is refused);
    ``Deployment.wait_exit(proc, timeout)`` waits for such a node to give up.
``Deployment.online_nodes() -> int`` / ``Deployment.list_runs() -> list[dict]`` / ``restart_superlink()``
    Query the SuperLink through the ``flwr`` CLI; restart it on the same database.

    python -m simulations.engines.deployment --num-supernodes 2 -c "num-server-rounds=2 data-dir='../shared/data/sst2'"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from simulations.engines import (REPO, flower_env, format_run_config, free_port, parse_overrides,
                                 run_to_end, stop_tree, wait_port)

CERTS_SCRIPT = REPO / "docker" / "certs.sh"
REGISTER_SCRIPT = REPO / "docker" / "register-supernodes.sh"
CONNECTION = "fedsparse-deploy"


class DeploymentError(RuntimeError):
    """A Flower process failed to start or the deployment did not become ready; the message names the log."""


def make_certs(out_dir: Path, num_supernodes: int) -> Path:
    """Generate TLS certificates and node keys with ``docker/certs.sh``; returns ``out_dir``."""
    res = subprocess.run(["sh", str(CERTS_SCRIPT), str(out_dir), str(num_supernodes)], capture_output=True, text=True)
    if res.returncode != 0:
        raise DeploymentError(f"docker/certs.sh failed ({res.returncode}): {res.stderr.strip()}")
    return out_dir


@dataclass
class Deployment:
    """A running SuperLink + SuperNodes; see the module docstring for the API."""

    workdir: Path
    tls: bool
    auth: bool
    certs: Path | None
    port: int = field(default_factory=free_port)
    superlink: subprocess.Popen | None = None
    supernodes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def cli_home(self) -> Path:
        return self.workdir / "cli"

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen:
        home = self.workdir / name
        home.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / f"{name}.log", "ab") as log:
            return subprocess.Popen(cmd, env=flower_env(home), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def start_superlink(self) -> None:
        """Start (or restart) the SuperLink on ``self.port`` with state in ``workdir/superlink/state.db``."""
        cmd = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.port), "--isolation", "subprocess",
               "--database", str(self.workdir / "superlink" / "state.db")]
        if self.tls:
            c = self.certs
            cmd += ["--ssl-ca-certfile", str(c / "ca.crt"), "--ssl-certfile", str(c / "superlink.crt"),
                    "--ssl-keyfile", str(c / "superlink.key")]
        else:
            cmd += ["--insecure"]
        if self.auth:
            cmd += ["--enable-supernode-auth"]
        self.superlink = self._spawn(cmd, "superlink")
        wait_port(self.port, self.superlink, self.workdir / "superlink.log")

    def restart_superlink(self) -> None:
        """Stop the SuperLink and start it again on the same port and database."""
        if self.superlink is not None:
            stop_tree(self.superlink.pid)
        self.start_superlink()

    def write_connection(self) -> None:
        """``[superlink.fedsparse-deploy]`` in the CLI's ``config.toml`` (address + CA or insecure)."""
        self.cli_home.mkdir(parents=True, exist_ok=True)
        tls = f'root-certificates = "{self.certs / "ca.crt"}"' if self.tls else "insecure = true"
        (self.cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{self.address}"\n{tls}\n')

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run a ``flwr`` CLI command against this deployment's connection."""
        return subprocess.run(["flwr", *args], env=flower_env(self.cli_home), capture_output=True, text=True,
                              timeout=timeout)

    def register(self, public_key: Path) -> None:
        """Register a node's public key with ``docker/register-supernodes.sh`` (the compose service's script);
        a key that is already registered is fine."""
        res = subprocess.run(["sh", str(REGISTER_SCRIPT), self.address, str(self.certs / "ca.crt"), str(public_key)],
                             env=flower_env(self.workdir / "register"), capture_output=True, text=True, timeout=180)
        if res.returncode != 0:
            raise DeploymentError(f"registering {public_key} failed: {res.stdout.strip()} {res.stderr.strip()}")

    def _json(self, *args: str) -> dict:
        res = self.flwr(*args, CONNECTION, "--format", "json")
        start = res.stdout.find("{")  # the CLI may print a banner line before the JSON
        reply = json.loads(res.stdout[start:]) if start >= 0 else {}
        if not reply.get("success"):
            raise DeploymentError(f"flwr {' '.join(args)} failed: {res.stdout.strip()} {res.stderr.strip()}")
        return reply

    def online_nodes(self) -> int:
        return sum(n.get("status") == "online" for n in self._json("supernode", "list")["nodes"])

    def list_runs(self) -> list[dict]:
        return list(self._json("list").get("runs", []))

    def start_supernode(self, index: int, partition_id: int, num_partitions: int, tls: bool | None = None,
                        auth: bool | None = None, register: bool = True, max_wait_time: float | None = None,
                        ) -> subprocess.Popen:
        """Start SuperNode ``index`` (1-based; names its certs, key and log). ``tls``/``auth`` default to the
        deployment's settings; ``register=False`` leaves its public key unknown to the SuperLink."""
        tls, auth = (self.tls if tls is None else tls), (self.auth if auth is None else auth)
        if self.certs is not None:
            make_certs(self.certs, index)  # idempotent: adds this node's certificate and key if missing
        key = self.certs / f"supernode-{index}.auth" if auth else None
        if key is not None and register:
            self.register(key.with_name(key.name + ".pub"))
        cmd = ["flower-supernode", "--superlink", self.address, "--isolation", "subprocess",
               "--node-config", f"partition-id={partition_id} num-partitions={num_partitions}",
               "--host", "127.0.0.1", "--port", str(free_port())]
        if tls:  # TLS to the SuperLink, and on this node's Runtime API (its SuperExec connects to it)
            c = self.certs
            cmd += ["--root-certificates", str(c / "ca.crt"), "--ssl-certfile", str(c / f"supernode-{index}.crt"),
                    "--ssl-keyfile", str(c / f"supernode-{index}.key"), "--ssl-ca-certfile", str(c / "ca.crt")]
        else:
            cmd += ["--insecure"]
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key)]
        if max_wait_time is not None:
            cmd += ["--max-wait-time", str(max_wait_time)]
        proc = self._spawn(cmd, f"supernode-{index}")
        self.supernodes.append(proc)
        return proc

    def wait_online(self, count: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [i + 1 for i, p in enumerate(self.supernodes) if p.poll() is not None]
            if dead:
                raise DeploymentError(f"SuperNode(s) {dead} exited; see {self.workdir}/supernode-*.log")
            if self.online_nodes() >= count:
                return
            time.sleep(1.0)
        raise DeploymentError(f"fewer than {count} SuperNodes online after {timeout:.0f}s; see {self.workdir}")

    @staticmethod
    def wait_exit(proc: subprocess.Popen, timeout: float = 60.0) -> int | None:
        """The process's exit code, or None if it is still running after ``timeout`` seconds."""
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def run(self, run_config: Mapping[str, Any], app_dir: Path = REPO, timeout: float = 1800.0) -> int:
        """``flwr run <app_dir> <connection> --stream``; returns its exit code (124 on timeout)."""
        cmd = ["flwr", "run", str(app_dir), CONNECTION, "--stream"]
        if run_config:
            cmd += ["--run-config", format_run_config(run_config)]
        with open(self.workdir / "flwr-run.log", "ab") as log:
            return run_to_end(cmd, flower_env(self.cli_home), timeout, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        """Stop every SuperNode, then the SuperLink (each with all its SuperExec/app children)."""
        for proc in self.supernodes:
            stop_tree(proc.pid)
        if self.superlink is not None:
            stop_tree(self.superlink.pid)


@contextmanager
def deployment(workdir: Path, num_supernodes: int = 2, tls: bool = True, auth: bool = True,
               certs: Path | None = None, ready_timeout: float = 90.0) -> Iterator[Deployment]:
    """A SuperLink + ``num_supernodes`` SuperNodes (partition i of N each), stopped on exit."""
    if auth and not tls:
        raise ValueError("SuperNode authentication needs TLS: use tls=True or auth=False")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if tls:
        certs = make_certs(Path(certs or workdir / "certs").resolve(), max(1, num_supernodes))
    dep = Deployment(workdir=workdir, tls=tls, auth=auth, certs=certs)
    try:
        dep.start_superlink()
        dep.write_connection()
        for i in range(num_supernodes):
            dep.start_supernode(i + 1, i, num_supernodes)
        if num_supernodes:
            dep.wait_online(num_supernodes, ready_timeout)
        yield dep
    finally:
        dep.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--run-config", default="", help="run-config overrides, e.g. \"num-server-rounds=2\"")
    ap.add_argument("--num-supernodes", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=REPO / ".flwr-deploy")
    ap.add_argument("--no-tls", action="store_true", help="plain-text links (implies --no-auth)")
    ap.add_argument("--no-auth", action="store_true", help="accept any SuperNode (no key registration)")
    args = ap.parse_args(argv)
    overrides = parse_overrides(args.run_config)
    overrides.setdefault("min-available-nodes", args.num_supernodes)
    t0 = time.perf_counter()
    with deployment(args.workdir, args.num_supernodes, tls=not args.no_tls,
                    auth=not (args.no_auth or args.no_tls)) as dep:
        t_up = time.perf_counter() - t0
        rc = dep.run(overrides)
    print(f"deployment: up in {t_up:.1f}s, flwr run exit {rc}, total {time.perf_counter() - t0:.1f}s; "
          f"logs in {args.workdir}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
