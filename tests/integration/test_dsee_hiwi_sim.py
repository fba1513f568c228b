"""DSEE and HiWi end to end in Flower's Simulation Engine (tiny model, 3 supernodes, 2 rounds)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from simulations.engines import run_simulation
from shared.methods.dsee.prune import remove_heads

pytestmark = pytest.mark.integration

METHODS = {
    "dsee": {"dsee-rank": 4, "dsee-sparse-per-matrix": 16, "dsee-prune-heads": 1, "lr": 0.01},
    "hiwi": {"hiwi-bottleneck": 8, "lr": 0.01},
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_runs_in_the_simulation_engine(method, tiny_model_dir, sst2_dir, tmp_path):
    out = tmp_path / "out"
    run_config = {"method": method, "model": str(tiny_model_dir), "data-dir": str(sst2_dir),
                  "num-server-rounds": 2, "local-steps": 2, "batch-size": 8, "max-length": 32,
                  "max-eval-examples": 64, "fraction-train": 1.0, "output-dir": str(out), **METHODS[method]}
    code = run_simulation(run_config, num_supernodes=3, flwr_home=tmp_path / "flwr", timeout=600, quiet=True)
    assert code == 0
    history = json.loads((out / "history.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in history] == [0, 1, 2]
    assert all(r["replied"] == 3 and r["rejected"] == 0 and r["aggregated"] for r in history[1:])
    assert summary["method"] == method and summary["rounds"] == 2
    # values only on the wire: a reply carries the k + head floats plus framing, nothing like N floats
    assert summary["value_bytes_per_client_round"] <= summary["bytes_up_per_client_round"]
    assert summary["bytes_up_per_client_round"] < summary["value_bytes_per_client_round"] + 16384
    assert summary["bytes_up_per_client_round"] < summary["dense_bytes_per_client_round"] / 20
    assert (out / "delta.safetensors").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    if method == "dsee":
        report = summary["dsee"]
        assert report["encoder_matrix_sparsity"] >= 0.2
        assert 0.0 <= report["accuracy_after_pruning"] <= 1.0
        assert report["after"]["flops_dense"] < report["before"]["flops_dense"]
        pruned = remove_heads(AutoModelForSequenceClassification.from_pretrained(out / "model-pruned"))
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    else:
        report = summary["hiwi"]
        assert report["same_architecture_as_base"] and report["num_params_merged"] == summary["num_params"]
        assert report["accuracy_merged"] == pytest.approx(summary["final_accuracy"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
