"""The Simulation Engine's machinery: a private SuperLink on free loopback ports, ``flwr run`` against it, and
every process it started stopped by id afterwards. The commands of every family run federations through it
(``simulations.engines`` re-exports what they use); ``simulations.engines.launcher`` is its command line.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import psutil

from simulations import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def format_run_config(overrides: Mapping[str, Any]) -> str:
    """``{"lr": 0.01, "model": "x"}`` -> ``lr=0.01 model='x'`` (TOML values, as flwr expects)."""
    parts = []
    for key, value in overrides.items():
        if isinstance(value, bool):
            parts.append(f"{key}={str(value).lower()}")
        elif isinstance(value, (int, float)):
            parts.append(f"{key}={value!r}")
        else:
            parts.append(f"{key}='{value}'")
    return " ".join(parts)


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = os.environ.copy()
    env.update(FLWR_HOME=str(flwr_home), FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", TOKENIZERS_PARALLELISM="false", RAY_DEDUP_LOGS="0", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def stop_tree(pid: int, timeout: float = 10.0) -> None:
    """Terminate a process and all its descendants (SIGTERM, then SIGKILL)."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = root.children(recursive=True) + [root]
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def run_to_end(cmd: list[str], env: Mapping[str, str], timeout: float, **streams: Any) -> int:
    """Run ``cmd`` in its own session and return its exit code, 124 after ``timeout`` seconds; whatever way it ends,
    nothing it started (Ray workers, a SuperExec's app processes) outlives the call."""
    tee = streams.pop("tee", None)
    proc = subprocess.Popen(cmd, env=dict(env), start_new_session=True,
                            **({"text": True, "errors": "replace"} if tee else {}), **streams)
    reader = None
    if tee is not None:  # copy the output line by line from a thread, so the timeout below still holds
        reader = threading.Thread(target=lambda: [tee(line) for line in proc.stdout], daemon=True)
        reader.start()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124
    finally:
        stop_tree(proc.pid)
        if reader is not None:
            reader.join(timeout=10)


@contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """Inside: SIGTERM (``kill PID``, a job scheduler, ``timeout``) exits like Ctrl-C, through every ``finally``, so
    the SuperLink, the ``flwr run`` process and Ray stop with the launcher instead of outliving it (Python's default
    for SIGTERM ends the process at once). Only the main thread may set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    before = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextmanager
def simulation_superlink(flwr_home: Path, ray_address: str | None = None) -> Iterator[str]:
    """A private simulation SuperLink; yields its Control API address, stops it on exit.

    ``ray_address``: Flower's Ray backend calls ``ray.init()`` without an address, so it attaches to
    the cluster named by ``RAY_ADDRESS`` in the environment of the SuperLink (which its SuperExec and
    simulation process inherit); the federation then must not set ``init-args`` num-cpus/num-gpus.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    ports = [free_port() for _ in range(2)]
    control = f"127.0.0.1:{ports[0]}"  # flwr 1.41 serves Control, Runtime and Fleet APIs on one port
    log_file = flwr_home / "superlink.log"
    cmd = ["flower-superlink", "--insecure", "--simulation", "--isolation", "subprocess",
           "--host", "127.0.0.1", "--port", str(ports[0]), "--health-server-address", f"127.0.0.1:{ports[1]}"]
    env = flower_env(flwr_home)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    else:
        env.pop("RAY_ADDRESS", None)  # a stray RAY_ADDRESS must not send a local run to some cluster
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(ports[0], proc, log_file)
        yield control
    finally:
        stop_tree(proc.pid)


def wait_port(port: int, proc: subprocess.Popen, log_file: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode}; see {log_file}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"flower-superlink did not open port {port} within {timeout:.0f}s; see {log_file}")


def write_connection(flwr_home: Path, name: str, address: str) -> None:
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\ninsecure = true\n'
    )


def federation_config(num_supernodes: int, cpus_per_client: int = 2, gpus_per_client: float = 0.0,
                      ray_cpus: int = 0) -> str:
    """``--federation-config`` of a simulation: the nodes, each virtual client's Ray resources and, with
    ``ray_cpus``, the CPUs the local Ray schedules them on (0: the machine's)."""
    if cpus_per_client < 1 or int(cpus_per_client) != cpus_per_client:
        raise ValueError(f"cpus-per-client must be a positive integer (Flower's federation config), got {cpus_per_client}")
    if gpus_per_client < 0:
        raise ValueError(f"gpus-per-client must be >= 0 (a fraction shares a GPU), got {gpus_per_client}")
    if ray_cpus < 0 or int(ray_cpus) != ray_cpus or (ray_cpus and ray_cpus < cpus_per_client):
        raise ValueError(f"ray-cpus must be 0 (the machine's CPUs) or an integer >= cpus-per-client "
                         f"({cpus_per_client}), got {ray_cpus}")
    fed = f"num_supernodes={num_supernodes} client_resources_num_cpus={int(cpus_per_client)}"
    if ray_cpus:
        fed += f" init_args_num_cpus={int(ray_cpus)}"
    if gpus_per_client:
        fed += f" client_resources_num_gpus={float(gpus_per_client)!r}"
    return fed


def check_ray(ray_cpus: int, ray_address: str | None) -> None:
    """``ray_cpus`` sizes a local Ray; a running cluster has its own CPUs, so the two are not passed together."""
    if ray_cpus and ray_address:
        raise ValueError("--ray-cpus sizes a local Ray; a running cluster (--ray-address) has its own CPUs: "
                         "pass one of the two")


def run_simulation(run_config: Mapping[str, Any], num_supernodes: int = 10, cpus_per_client: int = 2,
                   app_dir: Path = REPO, flwr_home: Path | None = None, timeout: float = 3600.0,
                   quiet: bool = False, gpus_per_client: float = 0.0, ray_address: str | None = None,
                   ray_cpus: int = 0) -> int:
    """Run the app once in the Simulation Engine; 0 only if the run ended and wrote its summary.

    ``flwr run --stream`` exits 0 even when the ServerApp fails, so success is judged by the run's
    ``output-dir/summary.json`` being written after the start.
    """
    flwr_home = (flwr_home or REPO / ".flwr").resolve()
    # Resolve output-dir here: the ServerApp runs in another process with another working directory.
    run_config = {**run_config, "output-dir": str(Path(str(run_config.get("output-dir", "outputs/run"))).resolve())}
    run_config.update(resume_settings(run_config))  # what a resumed run was made with reaches every node
    started = time.time()
    check_ray(ray_cpus, ray_address)
    fed = federation_config(num_supernodes, cpus_per_client, gpus_per_client, ray_cpus)
    errors: list[str] = []
    rc = _flwr_run(run_config, fed, app_dir, flwr_home, timeout, quiet, ray_address, errors)
    summary = Path(run_config["output-dir"]) / "summary.json"
    if rc == 0 and (not summary.is_file() or summary.stat().st_mtime < started):
        if errors:  # the app's own one-line error, as the last line the user sees
            print(errors[-1], file=sys.stderr)
        else:
            print(f"fedsparse: the run ended without writing {summary}: the ServerApp failed or the SuperLink ended "
                  f"the run; see the log above and {flwr_home / 'superlink.log'}", file=sys.stderr)
        return 1
    return rc


APP_ERROR = re.compile(r"fedsparse: error: .*")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _flwr_run(run_config: Mapping[str, Any], fed: str, app_dir: Path, flwr_home: Path, timeout: float,
              quiet: bool, ray_address: str | None, errors: list[str] | None = None) -> int:
    """``flwr run --stream`` against a private SuperLink; its output goes to ours line by line (unless ``quiet``),
    and every app error line it carries (``fedsparse: error: …``) is appended to ``errors``."""
    with stopped_by_sigterm(), simulation_superlink(flwr_home, ray_address) as control:
        write_connection(flwr_home, "fedsparse-sim", control)
        cmd = ["flwr", "run", str(app_dir), "fedsparse-sim", "--stream", "--federation-config", fed]
        if run_config:
            cmd += ["--run-config", format_run_config(run_config)]
        if quiet:
            return run_to_end(cmd, flower_env(flwr_home), timeout, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        return run_to_end(cmd, flower_env(flwr_home), timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          tee=lambda line: _tee(line, errors))


def _tee(line: str, errors: list[str] | None) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()
    found = APP_ERROR.search(ANSI.sub("", line))  # Flower colours its log lines
    if found and errors is not None:
        errors.append(found.group(0).rstrip())


def parse_overrides(text: str) -> dict[str, Any]:
    from flwr.common.config import parse_config_args

    return dict(parse_config_args([text])) if text else {}


def check_data(overrides: Mapping[str, Any]) -> str | None:
    """Load the run's dataset once before any SuperLink starts (from the Hub this also fills the local cache,
    so the nodes do not all download it); the one-line reason it cannot be loaded, or None. Settings that do not
    parse are left to the app, which names them, except the data's own: a custom dataset that does not fit its
    description (a missing file or column, a bad label) is refused at parse, and named here."""
    from shared.config import core_config
    from shared.data import DataLoadError, held_out, run_splits
    from shared.knobs import ConfigError
    from shared.settings import parse_run_config
    from shared.tasks import TaskError, task_of

    try:
        cfg = parse_run_config(overrides)
    except ConfigError:
        try:
            task_of(core_config(overrides))
        except TaskError as exc:
            return str(exc)
        except ConfigError:
            pass
        return None
    try:
        held_out(run_splits(cfg), cfg.eval_split, cfg.data_dir)
    except (DataLoadError, TaskError) as exc:
        return str(exc)
    return None


def preflight(overrides: Mapping[str, Any], num_supernodes: int | None = None) -> str | None:
    """Everything a run can be refused for, checked before any SuperLink or Ray starts
    (:func:`shared.settings.check_run`: the whole run-config, the data, the model; a multi-task run's node count
    against ``num_supernodes``): ``"error: <the one line>"``, or None."""
    from shared.multitask import parse_tasks
    from shared.settings import check_run

    problem = check_run(overrides)
    if problem is None and num_supernodes is not None and overrides.get("tasks"):
        total = sum(slot.count for slot in parse_tasks(str(overrides["tasks"])))
        if total != num_supernodes:
            problem = (f"tasks={overrides['tasks']!r} assigns {total} nodes but the federation has {num_supernodes} "
                       f"SuperNodes; run with --num-supernodes {total} (or change the counts in tasks)")
    return f"error: {problem}" if problem else None


def resume_settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """With ``resume=true`` and a checkpoint in ``output-dir``: the settings to add so the resumed run -- server and
    clients alike -- trains with what the checkpoint's run resolved (``server.recovery.kept_settings``), each said in
    one line; {} otherwise."""
    from server.recovery import kept_settings

    kept = kept_settings(run_config)
    for key, value in kept.items():
        print(f"fedsparse: resume keeps {key}={value!r} of the checkpoint's run", flush=True)
    return kept
