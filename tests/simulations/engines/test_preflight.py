"""Every mistake named before anything starts: the launcher (and so `make run` and the benchmark, which run it)
checks the whole run-config with the app's own typed settings, the data and the model, then prints one line and
exits 2 without starting a SuperLink or Ray."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from simulations.engines import launcher
from simulations.engines.lib import superlink

GLUE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "..", "shared", "data", "glue")

BAD = [
    ("methd='pafi'", "unknown run-config key 'methd'", "did you mean 'method'"),
    ("mask-density=1.5", "mask-density", "1.5"),
    ("model='bert-base-uncased'", "cannot load model 'bert-base-uncased'", "bundled"),
    ("dataset='stsb' local-loss='balanced'", "is a regression without classes", "local-loss='ce'"),
    ("dataset='rte'", "data-dir", ""),  # an SST-2 folder for RTE: its files are not RTE's layout
    ("data-dir='/nonexistent/sst2'", "/nonexistent/sst2", ""),
    # a multi-task run: its data-dir holds every task's folder; two nodes for a three-node assignment
    (f"data-dir='{GLUE}' tasks='rte:2,mrpc:1'", "assigns 3 nodes but the federation has 2", "--num-supernodes 3"),
    ("tasks='rte:2,mrpc:1'", "RTE", ""),  # the SST-2 folder holds no task folders
    (f"data-dir='{GLUE}' tasks='rte:1,mrpc:1' method='sam'", "selected from the clients' data", "pafi"),
]


@pytest.mark.parametrize("text,needle,fix", BAD, ids=[b[0] for b in BAD])
def test_the_launcher_names_the_mistake_in_one_line_before_any_process_starts(text, needle, fix, monkeypatch,
                                                                             capsys, sst2_dir):
    def never(*args, **kwargs):
        raise AssertionError("a SuperLink was started for a run that cannot run")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(superlink, "simulation_superlink", never)
    monkeypatch.setattr(launcher, "run_simulation", never)
    assert launcher.main(["--num-supernodes", "2", "-c", f"data-dir='{sst2_dir}'", "-c", text]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[-1].startswith("fedsparse: error: ")
    assert needle in err[-1] and fix in err[-1]


def test_through_the_real_command_the_last_line_is_the_error_and_nothing_is_left_running(repo_root):
    import psutil

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "simulations.engines.launcher", "-c", "methd='pafi'"],
                            cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    while proc.poll() is None:  # every process it spawns, while it runs (a library may run `uname`: not ours)
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    seen.add(" ".join(child.cmdline()))
                except psutil.Error:
                    pass
        except psutil.NoSuchProcess:
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("fedsparse: error: unknown run-config key 'methd'") and "did you mean 'method'" in last
    started = [c for c in seen if any(n in c for n in ("superlink", "flwr", "ray", "supernode"))]
    assert not started, started  # no SuperLink, no flwr run, no Ray: it refused before starting any of them
