"""docker-compose.yml for real: images built, the stack up, runs driven from the host, a node lost, a restart.

In a real Docker engine (skips with one line when none answers, or when the flwr/* images can neither be
found nor pulled) and on a copy of this working tree, with its own compose project name and a free host
port, so it never touches a stack the user runs:

1. ``docker compose build certs`` (the app image all app services share; torch from ``TORCH_SOURCE``, or from the wheels folder ``TORCH_WHEELS``,
   which is linked into the copy's docker/torch-wheels/), ``docker compose run --rm certs`` (no network),
   ``docker compose up -d``;
2. 3 SuperNodes online, seen by the host's ``flwr`` CLI over TLS (a plain-text client is refused) on a
   SuperLink that runs ``--enable-supernode-auth``;
3. ``flwr run <copy> fedsparse-docker`` from the host: 2 rounds on a tiny BERT, 3 replies each;
4. a 3-round run during which ``supernode-3`` is stopped after round 1: the run completes on the 2 others
   (min-train-replies=2);
5. ``docker compose restart superlink``: both runs are still listed as completed (state in the volume);
   the nodes reconnect with their registered keys (supernode-3 started again) and a 1-round run works;
6. a 4th SuperNode joins the running federation: refused while its key is unregistered, online once
   ``flwr supernode register`` knows it;
7. ``docker compose down -v`` (also on failure).

The timeline, the runs' summary.json and the compose logs go to outputs/docker-test/ in this repository.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import flwr
import pytest

from simulations.engines import format_run_config

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "outputs" / "docker-test"
CONN = "fedsparse-docker"
IMAGES = [f"flwr/{name}:{flwr.__version__}" for name in ("superlink", "supernode", "superexec")]
NODES = 3


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(cmd, 124, exc.stdout or "", f"timed out after {timeout:.0f}s")
    except OSError as exc:
        return subprocess.CompletedProcess(cmd, 127, "", str(exc))


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def docker_skip_reason() -> str | None:
    """Why the stack cannot run here (one line), or None when a Docker engine, Compose v2 and the images are there."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    info = _run(["docker", "info", "--format", "{{.ServerVersion}}"], 30)
    if info.returncode != 0 or not info.stdout.strip():
        return f"no Docker engine answers ({_last_line(info.stderr) or 'docker info failed'})"
    compose = _run(["docker", "compose", "version", "--short"], 30)
    if compose.returncode != 0 or not compose.stdout.strip().lstrip("v").startswith("2."):
        return "docker compose v2 is not available (Compose v1 cannot read docker-compose.yml)"
    for image in IMAGES:
        if _run(["docker", "image", "inspect", image], 30).returncode != 0 and \
                _run(["docker", "pull", "-q", image], 180).returncode != 0:
            return f"{image} is not present and cannot be pulled (local stand-ins: ../shared/tools/flower-images/build.sh)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_tree(dst: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored), without tests/: what a user has."""
    listed = _run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"], 60)
    if listed.returncode != 0:
        pytest.fail(f"git ls-files failed in {REPO}: {_last_line(listed.stderr)}")
    for rel in filter(None, listed.stdout.split("\0")):
        src = REPO / rel
        if rel.startswith("tests/") or not src.is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class Timeline:
    def __init__(self):
        self.t0 = time.monotonic()
        self.last = self.t0
        self.events: list[dict] = []

    def mark(self, what: str) -> None:
        now = time.monotonic()
        self.events.append({"event": what, "at_s": round(now - self.t0, 1), "took_s": round(now - self.last, 1)})
        self.last = now
        print(f"[docker-test {now - self.t0:7.1f}s] {what}", flush=True)


class Stack:
    """One compose project on a copy of the working tree, driven like a user would (compose + flwr CLI)."""

    def __init__(self, work: Path, env: dict[str, str], port: int, log: Path):
        self.work, self.env, self.port, self.log = work, env, port, log
        self.project = f"fedsparse-test-{os.getpid()}"
        self.flwr_home = work.parent / "flwr-home"  # outside the app folder: not shipped in the FAB
        self.extra_containers: list[str] = []

    def _logged(self, cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
        res = _run(cmd, timeout, env=env or self.env, cwd=self.work)
        with open(self.log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n[exit {res.returncode}]\n{res.stdout}{res.stderr}\n")
        return res

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["docker", "compose", "-p", self.project, "--project-directory", str(self.work),
               "-f", str(self.work / "docker-compose.yml"), *args]
        res = self._logged(cmd, timeout)
        if check and res.returncode != 0:
            pytest.fail(f"docker compose {' '.join(args)[:80]} failed ({res.returncode}): "
                        f"{_last_line(res.stderr) or _last_line(res.stdout)}; log {self.log}", pytrace=False)
        return res

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        res = self._logged(["docker", *args], timeout)
        if check and res.returncode != 0:
            pytest.fail(f"docker {' '.join(args)[:80]} failed ({res.returncode}): {_last_line(res.stderr)}", pytrace=False)
        return res

    def write_connections(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONN}"\n\n'
            f'[superlink.{CONN}]\naddress = "127.0.0.1:{self.port}"\nroot-certificates = "{self.work / "certs" / "ca.crt"}"\n\n'
            f'[superlink.plaintext]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(self.env, FLWR_HOME=str(self.flwr_home), FLWR_DISABLE_UPDATE_CHECK="1")
        return self._logged(["flwr", *args], timeout, env=env)

    def flwr_json(self, *args: str, timeout: float = 120) -> dict:
        res = self.flwr(*args, "--format", "json", timeout=timeout)
        start = res.stdout.find("{")
        try:
            return json.loads(res.stdout[start:]) if start >= 0 else {"success": False}
        except json.JSONDecodeError:
            return {"success": False, "raw": res.stdout[-500:]}

    def nodes(self, connection: str = CONN) -> list[dict] | None:
        reply = self.flwr_json("supernode", "list", connection)
        return reply.get("nodes") if reply.get("success") else None

    def online(self) -> int:
        return sum(n.get("status") == "online" for n in self.nodes() or [])

    def wait_online(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.online() == count:
                return
            time.sleep(2)
        pytest.fail(f"{self.online()} SuperNodes online after {timeout:.0f}s, expected {count}; log {self.log}",
                    pytrace=False)

    def start_run(self, config: dict) -> int:
        reply = self.flwr_json("run", str(self.work), CONN, "--run-config", format_run_config(config), timeout=300)
        assert reply.get("success") and reply.get("run-id"), f"flwr run did not start a run: {reply}"
        return int(reply["run-id"])

    def run_status(self, run_id: int) -> str:
        reply = self.flwr_json("ls", CONN)
        for run in reply.get("runs", []) if reply.get("success") else []:
            if int(run["run-id"]) == run_id:
                return str(run["status"])
        return "unknown"

    def wait_run(self, run_id: int, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        status = "unknown"
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status.startswith("finished"):
                return status
            time.sleep(3)
        return f"{status} (still after {timeout:.0f}s)"

    def run_log(self, run_id: int) -> str:
        return self.flwr("log", str(run_id), CONN, "--show", timeout=60).stdout[-4000:]

    def teardown(self) -> None:
        for name in self.extra_containers:
            self.docker("rm", "-f", name, check=False)
        logs = self.compose("logs", "--no-color", "--timestamps", timeout=120, check=False)
        (self.log.parent / "compose-services.log").write_text(logs.stdout + logs.stderr)
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=300, check=False)


def run_config(out: str, rounds: int, nodes: int) -> dict:
    return {"model": "/app/data/model", "data-dir": "/app/data", "output-dir": f"/app/outputs/{out}",
            "num-server-rounds": rounds, "fraction-train": 1.0, "min-available-nodes": nodes,
            "min-train-replies": 2, "node-wait-timeout": 180.0, "round-timeout": 300.0, "local-steps": 2,
            "batch-size": 8, "max-length": 32, "max-eval-examples": 64, "mask-density": 0.05,
            "trust-weighting": "none"}  # 2 steps of 8 rows on a tiny model: FLTrust may weigh every reply 0


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return default


@pytest.fixture(scope="module")
def docker_ready() -> None:
    reason = docker_skip_reason()
    if reason:
        pytest.skip(reason)


def test_compose_stack_runs_loses_a_node_and_survives_a_superlink_restart(docker_ready, tmp_path, tiny_model_dir,
                                                                          sst2_dir):
    tl = Timeline()
    REPORT.mkdir(parents=True, exist_ok=True)
    log = REPORT / "commands.log"
    log.write_text("")
    work = tmp_path / "app"
    work.mkdir()
    copy_tree(work)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATA_DIR", "COMPOSE_"))}
    wheels = os.environ.get("TORCH_WHEELS", "")
    if wheels:  # a local folder with the torch wheel: into the build context, TORCH_SOURCE points at it
        found = sorted(Path(wheels).glob("torch-*.whl")) if Path(wheels).is_dir() else []
        if not found:
            pytest.fail(f"TORCH_WHEELS={wheels} is not a folder with a torch-*.whl", pytrace=False)
        (work / "docker" / "torch-wheels").mkdir(parents=True, exist_ok=True)
        for whl in found:
            link_or_copy(whl, work / "docker" / "torch-wheels" / whl.name)
        env["TORCH_SOURCE"] = "docker/torch-wheels"

    # Every node's data folder: a slice of the real SST-2 plus the tiny model (read-only at /app/data).
    data = tmp_path / "data"
    data.mkdir()
    with open(sst2_dir / "train.tsv") as src, open(data / "train.tsv", "w") as dst:
        for i, line in enumerate(src):
            if i > 3000:
                break
            dst.write(line)
    shutil.copy2(sst2_dir / "test.tsv", data / "test.tsv")
    shutil.copytree(tiny_model_dir, data / "model")
    for path in (data, work, *data.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the containers' user is uid 49999
    port = free_port()
    env.update({"DATA_DIR": str(data), **{f"DATA_DIR_{i}": str(data) for i in range(1, NODES + 1)},
                "SUPERLINK_PORT": str(port), "FLWR_DISABLE_UPDATE_CHECK": "1"})
    stack = Stack(work, env, port, log)
    stack.write_connections()
    timeline_file = REPORT / "timeline.json"
    try:
        # Every app service (certs, register, the SuperExecs) shares the one image fedsparse-superexec:
        # build it once (Compose 2.26 would build it again for each service that names it).
        stack.compose("--progress", "plain", "build", "certs", timeout=2400)
        tl.mark("images built (docker compose build certs: fedsparse-superexec)")
        stack.compose("run", "--rm", "certs", timeout=300)
        for name in ("ca.crt", "superlink.crt", "superlink.key",
                     *(f"supernode-{i}.{ext}" for i in range(1, NODES + 1) for ext in ("crt", "key", "auth", "auth.pub"))):
            assert (work / "certs" / name).is_file(), f"certs service did not write {name}"
        tl.mark("certificates and node keys (certs service, no network)")
        stack.compose("up", "-d", timeout=600)
        tl.mark("stack up (docker compose up -d; keys registered)")

        # -- 3 nodes online over TLS, on a SuperLink with node authentication
        stack.wait_online(NODES, timeout=240)
        args = json.loads(stack.docker("inspect", f"{stack.project}-superlink-1", "--format", "{{json .Args}}").stdout)
        assert "--enable-supernode-auth" in args and "--ssl-certfile" in args and "--insecure" not in args, args
        assert stack.nodes("plaintext") is None, "a plain-text flwr client was answered by the TLS SuperLink"
        tl.mark(f"{NODES} SuperNodes online over TLS, node auth on")

        # -- run 1: two rounds, every node replies
        out = work / "outputs"
        run1 = stack.start_run(run_config("two-rounds", 2, NODES))
        status = stack.wait_run(run1, timeout=900)
        assert status == "finished:completed", f"run {run1}: {status}\n{stack.run_log(run1)}"
        history = read_json(out / "two-rounds" / "history.json", [])
        summary = read_json(out / "two-rounds" / "summary.json", {})
        assert [r["round"] for r in history] == [0, 1, 2], history
        for rec in history[1:]:
            assert rec["sampled"] == rec["replied"] == NODES and rec["failed"] == rec["rejected"] == 0, rec
        assert summary["rounds"] == 2 and 0 < summary["bytes_up_per_client_round"] < summary["dense_bytes_per_client_round"]
        assert (out / "two-rounds" / "model" / "config.json").is_file()
        tl.mark(f"run {run1}: 2 rounds, {NODES} replies each "
                f"({summary['bytes_up_per_client_round']:,.0f} B up/client-round)")

        # -- run 2: supernode-3 stopped after round 1; the others finish the run
        run2 = stack.start_run(run_config("node-lost", 3, NODES))
        deadline = time.monotonic() + 900
        while not any(r.get("round") == 1 for r in read_json(out / "node-lost" / "history.json", [])):
            assert time.monotonic() < deadline, f"run {run2} never finished round 1\n{stack.run_log(run2)}"
            assert not stack.run_status(run2).startswith("finished"), stack.run_log(run2)
            time.sleep(1)
        stack.compose("stop", "supernode-3", timeout=120)
        tl.mark(f"run {run2}: round 1 done, supernode-3 stopped")
        status = stack.wait_run(run2, timeout=900)
        assert status == "finished:completed", f"run {run2}: {status}\n{stack.run_log(run2)}"
        history = read_json(out / "node-lost" / "history.json", [])
        assert [r["round"] for r in history] == [0, 1, 2, 3], history
        assert history[1]["replied"] == NODES, history[1]
        assert history[-1]["replied"] == NODES - 1 and history[-1]["aggregated"], history[-1]
        assert history[-1]["failed"] >= 1 and history[-1]["rejected"] == 0, history[-1]  # the lost node, recorded
        tl.mark(f"run {run2}: completed on {NODES - 1} nodes (replies per round "
                f"{[r['replied'] for r in history[1:]]})")

        # -- SuperLink restart: the runs are still there; nodes come back with their registered keys
        before = {int(r["run-id"]): r["status"] for r in stack.flwr_json("ls", CONN)["runs"]}
        stack.compose("restart", "superlink", timeout=180)
        deadline = time.monotonic() + 120
        while (reply := stack.flwr_json("ls", CONN)).get("success") is not True:
            assert time.monotonic() < deadline, f"the restarted SuperLink does not answer: {reply}"
            time.sleep(2)
        after = {int(r["run-id"]): r["status"] for r in reply["runs"]}
        assert after == before and {run1, run2} <= set(after), (before, after)
        tl.mark("SuperLink restarted: runs kept")
        stack.compose("start", "supernode-3", timeout=120)
        stack.wait_online(NODES, timeout=240)
        run3 = stack.start_run(run_config("after-restart", 1, NODES))
        status = stack.wait_run(run3, timeout=900)
        assert status == "finished:completed", f"run {run3}: {status}\n{stack.run_log(run3)}"
        assert read_json(out / "after-restart" / "history.json", [])[-1]["replied"] == NODES
        tl.mark(f"after the restart: {NODES} nodes online again, run {run3} completed")

        # -- a 4th SuperNode joins: refused until its key is registered
        stack.compose("run", "--rm", "certs",
                      f"python /scripts/certs.py /certs {NODES + 1} && chown -R 49999:49999 /certs", timeout=300)
        key = work / "certs" / f"supernode-{NODES + 1}.auth"
        assert key.is_file() and key.with_name(key.name + ".pub").is_file()

        def node4(name: str, *extra: str) -> str:
            stack.extra_containers.append(name)
            certs = work / "certs"
            stack.docker("run", "-d", "--name", name, "--network", f"{stack.project}_default",
                         "-v", f"{certs / 'ca.crt'}:/app/certificates/ca.crt:ro",
                         "-v", f"{key}:/app/certificates/node.auth:ro", IMAGES[1],
                         "--superlink", "superlink:9093", "--root-certificates", "/app/certificates/ca.crt",
                         "--auth-supernode-private-key", "/app/certificates/node.auth", "--isolation", "process",
                         "--node-config", f"partition-id=0 num-partitions={NODES}", *extra)
            return name

        refused = node4(f"{stack.project}-unregistered", "--max-wait-time", "15")
        exit_code = stack.docker("wait", refused, timeout=120, check=False).stdout.strip()
        assert exit_code not in ("", "0"), f"an unregistered SuperNode kept running (docker wait: {exit_code!r})"
        logs = stack.docker("logs", refused, check=False)
        assert "Failed to activate SuperNode" in logs.stdout + logs.stderr, _last_line(logs.stdout + logs.stderr)
        assert stack.online() == NODES
        reg = stack.flwr_json("supernode", "register", str(key.with_name(key.name + ".pub")), CONN)
        assert reg.get("success"), f"flwr supernode register failed: {reg}"
        node4(f"{stack.project}-supernode-{NODES + 1}")
        stack.wait_online(NODES + 1, timeout=180)
        tl.mark(f"supernode-{NODES + 1} refused unregistered, online once registered")
    finally:
        stack.teardown()
        left = _run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={stack.project}"], 60)
        tl.mark("docker compose down -v")
        summaries = {name: read_json(work / "outputs" / name / "summary.json")
                     for name in ("two-rounds", "node-lost", "after-restart")}
        timeline_file.write_text(json.dumps({"timeline": tl.events, "summaries": summaries}, indent=2))
        assert left.stdout.strip() == "", f"containers left after down: {left.stdout.split()}"


@pytest.mark.parametrize("source, message", [
    ("/opt/wheels", "TORCH_SOURCE must be an index URL (http[s]://...) or a folder inside the build context"),
    ("docker", "TORCH_SOURCE=docker: no torch-*.whl in that folder of the build context"),
])
def test_build_refuses_a_bad_torch_source_in_one_line(docker_ready, tmp_path, source, message):
    work = tmp_path / "app"
    work.mkdir()
    copy_tree(work)
    res = _run(["docker", "build", "-f", "docker/Dockerfile.superexec", "--build-arg", f"TORCH_SOURCE={source}",
                "-t", "fedsparse-bad-torch-source:test", "."], 1200, cwd=work)
    assert res.returncode != 0, "the build accepted a bad TORCH_SOURCE"
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if message in ln]
    assert lines, _last_line(res.stderr)
    assert _run(["docker", "image", "inspect", "fedsparse-bad-torch-source:test"], 60).returncode != 0
