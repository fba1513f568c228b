"""`kill PID` of the launcher (a job scheduler, `timeout`, a user) stops the whole federation it started: the
SuperLink, its SuperExec, `flwr run`, the simulation process and Ray end with it (Python's default for SIGTERM
would end the launcher alone and leave them running)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.integration


def _tree(pid: int) -> dict[int, str]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for child in kids:
        try:
            out[child.pid] = " ".join(child.cmdline())
        except psutil.Error:
            pass
    return out


def test_sigterm_stops_every_process_the_launcher_started(repo_root, tiny_model_dir, sst2_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    cfg = (f"model='{tiny_model_dir}' data-dir='{sst2_dir}' output-dir='{tmp_path / 'run'}' num-server-rounds=200 "
           f"local-steps=2 max-eval-examples=32 trusted-examples=16")
    proc = subprocess.Popen([sys.executable, "-m", "simulations.engines.launcher", "--num-supernodes", "2",
                             "--cpus-per-client", "1", "--flwr-home", str(tmp_path / "flwr"), "-c", cfg],
                            cwd=repo_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 240
    try:  # wait until the federation is up and training: the history of round 1 is written
        while time.monotonic() < deadline and proc.poll() is None:
            seen.update(_tree(proc.pid))
            if (tmp_path / "run" / "history.json").exists() and any("flwr-simulation" in c for c in seen.values()):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert any("flower-superlink" in c for c in seen.values()), seen
        seen.update(_tree(proc.pid))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        time.sleep(2)
        alive = []
        for pid, cmd in seen.items():
            try:
                p = psutil.Process(pid)
                if p.status() != psutil.STATUS_ZOMBIE and " ".join(p.cmdline()) == cmd:
                    alive.append(cmd)
            except psutil.NoSuchProcess:
                pass
        assert not alive, alive
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in seen:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
