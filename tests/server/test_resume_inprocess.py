"""Crash and resume of the real ServerApp ``main`` over an in-process Grid: bit-identical finals."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict
from safetensors.torch import load_file

from server.checkpoint import CHECKPOINT_NAME, load_checkpoint
from server.recovery import CRASH_EXIT_CODE
from server.server_app import main
from client.client_app import app as client_app
from tests.support.local_grid import LocalGrid

NODES = 3
pytestmark = pytest.mark.integration  # a whole run three times (~1 min CPU)


def _config(tiny_model_dir: Path, sst2_dir: Path, out: Path, **extra) -> dict:
    cfg = {"model": str(tiny_model_dir), "data-dir": str(sst2_dir), "mask-density": 0.05, "local-steps": 2,
           "batch-size": 8, "max-length": 32, "max-eval-examples": 32, "output-dir": str(out), "seed": 3,
           "num-server-rounds": 3, "fraction-train": 0.67, "min-available-nodes": NODES, "aggregator": "fedadam",
           "server-lr": 0.01, "dp-clip-norm": 1.0, "dp-noise-multiplier": 0.1, "fail-rate": 0.3,
           "fail-mode": "raise", "resume": False, "crash-after-round": 0, "lr-schedule": "constant"}
    cfg.update(extra)
    return cfg


def _run(cfg: dict) -> LocalGrid:
    grid = LocalGrid(client_app, cfg, NODES, error_replies=True)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=cfg))
    return grid


def _final(out: Path) -> torch.Tensor:
    t = load_file(str(out / "delta.safetensors"))
    return torch.cat([t["values"]] + [t[k].reshape(-1) for k in sorted(t) if k.startswith("head.")])


def test_crash_after_round_then_resume_is_bit_identical(tmp_path, tiny_model_dir, sst2_dir, capsys):
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    _run(_config(tiny_model_dir, sst2_dir, ref))
    child = mp.get_context("spawn").Process(target=_run, args=(_config(tiny_model_dir, sst2_dir, crashed,
                                                                       **{"crash-after-round": 2}),))
    child.start()
    child.join(300)
    assert child.exitcode == CRASH_EXIT_CODE and load_checkpoint(crashed / CHECKPOINT_NAME).round == 2
    assert not (crashed / "delta.safetensors").exists()
    _run(_config(tiny_model_dir, sst2_dir, crashed, resume=True))
    got, want = _final(crashed), _final(ref)
    print(f"\nin-process resume after round 2: bit-identical {torch.equal(got, want)}, "
          f"max |diff| {float((got - want).abs().max()):.3e}, k+h = {got.numel()}")
    assert torch.equal(got, want)
    h_ref, h_res = (json.loads((d / "history.json").read_text()) for d in (ref, crashed))
    assert [r["accuracy"] for r in h_res] == [r["accuracy"] for r in h_ref]
    assert [r["failed"] for r in h_res] == [r["failed"] for r in h_ref]  # injected faults replay too

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # same output-dir, other settings: refused in one line
        _run(_config(tiny_model_dir, sst2_dir, crashed, resume=True, aggregator="fedavg"))
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert stop.value.code == 2 and last.startswith("fedsparse: error: ") and "aggregator='fedadam'" in last
    assert "Traceback" not in err


def test_sam_resume_reinstalls_the_checkpointed_mask_without_a_new_selection(tmp_path, tiny_model_dir, sst2_dir):
    sam = {"method": "sam", "aggregator": "fedavg", "fail-rate": 0.0, "dp-noise-multiplier": 0.0}
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    ref_grid = _run(_config(tiny_model_dir, sst2_dir, ref, **sam))
    assert ref_grid.sent_types.count("query.sam_stats") == NODES
    child = mp.get_context("spawn").Process(target=_run, args=(_config(tiny_model_dir, sst2_dir, crashed,
                                                                       **sam, **{"crash-after-round": 2}),))
    child.start()
    child.join(300)
    assert child.exitcode == CRASH_EXIT_CODE
    saved = load_checkpoint(crashed / CHECKPOINT_NAME).selection["sam.mask-index"]
    assert saved.dtype == torch.int32 and saved.numel() > 0
    grid = _run(_config(tiny_model_dir, sst2_dir, crashed, resume=True, **sam))
    assert "query.sam_stats" not in grid.sent_types  # no statistics traffic on resume
    assert grid.sent_types.count("query.sam_mask") == NODES  # the nodes get the same mask again
    assert torch.equal(_final(crashed), _final(ref))
    summary = json.loads((crashed / "summary.json").read_text())
    assert summary["mask_fingerprint"] == json.loads((ref / "summary.json").read_text())["mask_fingerprint"]
    assert summary["selection_resumed"] is True and summary["selection_bytes_up"] < 4096  # confirmations only


def test_a_finished_run_extended_to_more_rounds_equals_one_run_of_that_many(tmp_path, tiny_model_dir, sst2_dir):
    """The benchmark extends finished runs when a preset asks for more rounds (simulations.benchmark.benchmark.can_extend)."""
    ref, ext = tmp_path / "ref", tmp_path / "ext"
    _run(_config(tiny_model_dir, sst2_dir, ref))
    _run(_config(tiny_model_dir, sst2_dir, ext, **{"num-server-rounds": 2}))
    assert json.loads((ext / "summary.json").read_text())["rounds"] == 2
    _run(_config(tiny_model_dir, sst2_dir, ext, resume=True))  # the same run, now to 3 rounds
    assert torch.equal(_final(ext), _final(ref))
    h_ref, h_ext = (json.loads((d / "history.json").read_text()) for d in (ref, ext))
    assert [r["round"] for r in h_ext] == [0, 1, 2, 3]
    assert [r["accuracy"] for r in h_ext] == [r["accuracy"] for r in h_ref]
    assert json.loads((ext / "summary.json").read_text())["rounds"] == 3


def test_a_run_annealed_from_its_checkpoint_equals_the_scheduled_run_and_the_decay_is_applied(tmp_path, tiny_model_dir,
                                                                                              sst2_dir):
    """Warm-up-stable-decay: 2 constant rounds extended by a 1-round cosine decay are the 3-round scheduled run
    (shared/schedule.py); the decayed round trains at a lower rate than the constant run's third round."""
    decay = {"lr-schedule": "cosine", "lr-decay-rounds": 1, "fail-rate": 0.0}
    ref, ext, const = tmp_path / "ref", tmp_path / "ext", tmp_path / "const"
    _run(_config(tiny_model_dir, sst2_dir, ref, **decay))
    _run(_config(tiny_model_dir, sst2_dir, ext, **{"num-server-rounds": 2, "fail-rate": 0.0}))
    _run(_config(tiny_model_dir, sst2_dir, ext, resume=True, **decay))
    assert torch.equal(_final(ext), _final(ref))
    _run(_config(tiny_model_dir, sst2_dir, const, **{"fail-rate": 0.0}))
    h_ref, h_const = (json.loads((d / "history.json").read_text()) for d in (ref, const))
    assert [r["accuracy"] for r in h_ref[:3]] == [r["accuracy"] for r in h_const[:3]]  # rounds 0-2 alike
    assert not torch.equal(_final(ref), _final(const))  # round 3 at half the rate (cos(pi/2) decay step)


def test_scaffold_resume_hands_each_node_its_variate_back_and_is_bit_identical(tmp_path, tiny_model_dir, sst2_dir):
    """The resumed run's nodes start with empty state: the checkpoint's mirrored c_i go back with each node's
    first train message (``control-own``), so the variates, the model and the history replay exactly."""
    sc = {"drift-correction": "scaffold", "dp-noise-multiplier": 0.0, "aggregator": "fedavg", "server-lr": 1.0}
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    _run(_config(tiny_model_dir, sst2_dir, ref, **sc))
    child = mp.get_context("spawn").Process(target=_run, args=(_config(tiny_model_dir, sst2_dir, crashed, **sc,
                                                                       **{"crash-after-round": 2}),))
    child.start()
    child.join(300)
    assert child.exitcode == CRASH_EXIT_CODE
    saved = load_checkpoint(crashed / CHECKPOINT_NAME).drift
    assert "c" in saved and any(k.startswith("c-i.") for k in saved) and float(saved["c"].abs().max()) > 0
    _run(_config(tiny_model_dir, sst2_dir, crashed, resume=True, **sc))
    assert torch.equal(_final(crashed), _final(ref))
    got, want = (load_checkpoint(d / CHECKPOINT_NAME).drift for d in (crashed, ref))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    h_ref, h_res = (json.loads((d / "history.json").read_text()) for d in (ref, crashed))
    assert [r["accuracy"] for r in h_res] == [r["accuracy"] for r in h_ref]
    assert [r["bytes_up"] for r in h_res[1:3]] == [r["bytes_up"] for r in h_ref[1:3]]
