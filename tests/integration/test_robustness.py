"""End to end through ``flwr run`` (Simulation Engine, tiny BERT): failing clients, crash and resume.

- ~30 % of clients raise, stall past ``round-timeout`` or send NaN every round: the run completes,
  aggregates the rest and records every failure with its reason in history.json.
- The server is crashed (``crash-after-round``) or killed with SIGKILL at a random point, then
  restarted with ``resume=true``: the final ``delta.safetensors`` values equal those of an
  uninterrupted run with the same seed, bit for bit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from server.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from simulations.engines import REPO, format_run_config, run_simulation

pytestmark = pytest.mark.integration


def _base(tiny_model_dir: Path, sst2_dir: Path, out: Path, **extra) -> dict:
    cfg = {"model": str(tiny_model_dir), "data-dir": str(sst2_dir), "mask-density": 0.05, "local-steps": 2,
           "batch-size": 8, "max-length": 32, "max-eval-examples": 64, "output-dir": str(out),
           "min-available-nodes": 4, "fraction-train": 0.75, "seed": 7,
           "trust-weighting": "none"}  # failures and crashes here: 2 steps of 8 rows give FLTrust no direction
    cfg.update(extra)
    return cfg


def _history(out: Path) -> list[dict]:
    return json.loads((out / "history.json").read_text())


def test_run_with_30_percent_failing_clients_completes(tmp_path, tiny_model_dir, sst2_dir):
    out = tmp_path / "fail"
    cfg = _base(tiny_model_dir, sst2_dir, out, **{"num-server-rounds": 4, "fraction-train": 1.0,
                                                 "min-available-nodes": 6, "fail-rate": 0.3, "fail-mode": "mixed",
                                                 "round-timeout": 60.0, "min-train-replies": 2})
    assert run_simulation(cfg, num_supernodes=6, cpus_per_client=1, flwr_home=tmp_path / "home", timeout=900) == 0
    rounds = [r for r in _history(out) if r["round"] >= 1]
    assert len(rounds) == 4 and (out / "delta.safetensors").is_file()
    bad = sum(r["failed"] + r["rejected"] for r in rounds)
    print(f"\nfailure run: {bad} of {sum(r['sampled'] for r in rounds)} client-rounds failed or rejected; "
          + "; ".join(f"r{r['round']}: {r['replied']} ok, {r['failed']} failed, {r['rejected']} rejected, "
                      f"aggregated={r['aggregated']}" for r in rounds))
    assert bad > 0
    for r in rounds:
        assert r["replied"] + r["failed"] + r["rejected"] == r["sampled"]
        assert len([x for x in r["rejected_reasons"] if x.startswith("partition")]) == r["failed"] + r["rejected"]
        assert r["aggregated"] == (r["replied"] >= 2)


def _launch(cfg: dict, home: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "simulations.engines.launcher", "--num-supernodes", "4", "--cpus-per-client", "1",
           "--flwr-home", str(home), "-c", format_run_config(cfg)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _kill_hard(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it (SuperLink, simulation, Ray): a real crash."""
    root = psutil.Process(proc.pid)
    procs = root.children(recursive=True) + [root]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def _ckpt_round(out: Path) -> int:
    try:
        return load_checkpoint(out / CHECKPOINT_NAME).round
    except (CheckpointError, FileNotFoundError):
        return -1


def _values(out: Path) -> torch.Tensor:
    t = load_file(str(out / "delta.safetensors"))
    return torch.cat([t["values"]] + [t[k].reshape(-1) for k in sorted(t) if k.startswith("head.")])


def test_crash_and_resume_is_bit_identical(tmp_path, tiny_model_dir, sst2_dir):
    knobs = {"num-server-rounds": 4, "aggregator": "fedadam", "server-lr": 0.01, "dp-clip-norm": 1.0,
             "dp-noise-multiplier": 0.1}
    ref = tmp_path / "ref"
    assert run_simulation(_base(tiny_model_dir, sst2_dir, ref, **knobs), 4, 1, flwr_home=tmp_path / "h0",
                          timeout=900) == 0

    # 1. the ServerApp exits hard right after checkpoint 2 (crash-after-round), then resumes
    crash = tmp_path / "crash"
    proc = _launch(_base(tiny_model_dir, sst2_dir, crash, **knobs, **{"crash-after-round": 2}), tmp_path / "h1")
    deadline = time.monotonic() + 600
    while _ckpt_round(crash) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(5)
    _kill_hard(proc)
    assert _ckpt_round(crash) == 2 and not (crash / "delta.safetensors").exists()
    resumed = _base(tiny_model_dir, sst2_dir, crash, **knobs, resume=True)
    assert run_simulation(resumed, 4, 1, flwr_home=tmp_path / "h2", timeout=900) == 0

    # 2. SIGKILL of the whole process tree at a random moment after checkpoint 1
    kill = tmp_path / "kill"
    proc = _launch(_base(tiny_model_dir, sst2_dir, kill, **knobs), tmp_path / "h3")
    while _ckpt_round(kill) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(float(torch.rand(1)) * 3)
    _kill_hard(proc)
    killed_at = _ckpt_round(kill)
    assert 1 <= killed_at
    resumed = _base(tiny_model_dir, sst2_dir, kill, **knobs, resume=True)
    assert run_simulation(resumed, 4, 1, flwr_home=tmp_path / "h4", timeout=900) == 0

    want = _values(ref)
    for out in (crash, kill):
        got = _values(out)
        print(f"\nresume from {out.name}: max |diff| {float((got - want).abs().max()):.3e}, "
              f"bit-identical {torch.equal(got, want)}")
        assert torch.equal(got, want)
        assert [r["round"] for r in _history(out)] == [r["round"] for r in _history(ref)]
        assert [r["accuracy"] for r in _history(out)] == [r["accuracy"] for r in _history(ref)]
    print(f"killed run: SIGKILL after checkpoint {killed_at}")
