"""End to end through Flower's Simulation Engine (`flwr run`), on a tiny BERT and on the bundled MiniLM."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from shared.artifacts import read_delta
from shared.methods.mask import apply_delta
from shared.data import encode, load_splits
from shared.model import load_base_model
from simulations.engines import run_simulation

pytestmark = pytest.mark.integration


def _run(tmp_path, **conf):
    out = tmp_path / "out"
    nodes, ray_cpus = conf.pop("_nodes", 2), conf.pop("_ray_cpus", 0)
    rc = run_simulation({**conf, "output-dir": str(out)}, num_supernodes=nodes, cpus_per_client=1 if ray_cpus else 2,
                        flwr_home=tmp_path / "flwr", timeout=900, ray_cpus=ray_cpus)
    assert rc == 0, f"flwr run exited with {rc}"
    return out, json.loads((out / "history.json").read_text()), json.loads((out / "summary.json").read_text())


def test_tiny_two_clients_two_rounds(tmp_path, tiny_model_dir, sst2_dir):
    # _ray_cpus: Ray told of 3 CPUs, one per client (the paper preset's setting on 2 cores), end to end
    out, history, summary = _run(
        tmp_path, model=str(tiny_model_dir), _ray_cpus=3, **{"data-dir": str(sst2_dir), "num-server-rounds": 2,
                                                "fraction-train": 1.0, "local-steps": 3, "mask-density": 0.05,
                                                "max-eval-examples": 64, "value-dtype": "float16"})
    assert [r["round"] for r in history] == [0, 1, 2]
    for rec in history[1:]:
        assert rec["replied"] == 2 and rec["rejected"] == 0 and rec["bytes_up"] > 0 and rec["bytes_down"] > 0
    k, h = summary["k"], summary["head_size"]
    assert summary["num_trainable"] == k + h and summary["rounds"] == 2
    # measured bytes: values (2 bytes each) plus a small framing overhead, never less than the values
    assert 2 * (k + h) < summary["bytes_up_per_client_round"] < 2 * (k + h) + 4096
    assert summary["dense_bytes_per_client_round"] == 4 * summary["num_params"]

    # The saved model is a plain transformers checkpoint with the same logits as base ⊕ delta.
    tensors, meta = read_delta(out / "delta.safetensors")
    assert tensors["values"].shape == (k,) and meta["fingerprint"] == summary["mask_fingerprint"]
    assert torch.any(tensors["values"] != 0)
    plain = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    base = load_base_model(str(tiny_model_dir), 2, seed=42)
    merged = apply_delta(out / "delta.safetensors", base).eval()
    batch = encode(load_splits("sst2", str(sst2_dir))["test"], base.tokenizer, 32, limit=16).batch(torch.arange(16))
    with torch.no_grad():
        assert torch.allclose(plain(**batch).logits, merged(**batch).logits, atol=1e-6)


def test_bundled_minilm_short_run(tmp_path, sst2_dir):
    out, history, summary = _run(
        tmp_path, **{"data-dir": str(sst2_dir), "num-server-rounds": 1, "fraction-train": 1.0, "local-steps": 2,
                     "batch-size": 8, "max-eval-examples": 64})
    assert summary["k"] == 53_084 and summary["num_params"] == 22_713_986
    assert history[-1]["replied"] == 2 and 0.0 <= summary["final_accuracy"] <= 1.0
    assert (out / "model" / "config.json").is_file()


def test_offline_without_data_dir_fails_with_one_clear_line(tmp_path, tiny_model_dir, capfd):
    rc = run_simulation({"model": str(tiny_model_dir), "output-dir": str(tmp_path / "out")}, num_supernodes=2,
                        flwr_home=tmp_path / "flwr", timeout=600)
    err = capfd.readouterr()
    assert rc != 0
    lines = [ln for ln in (err.out + err.err).splitlines() if ln.startswith("fedsparse: error:")]
    assert len(set(lines)) == 1 and "data-dir=" in lines[0]  # the app's one line (streamed, then repeated last)
    assert err.err.strip().splitlines()[-1] == lines[0]  # the last line the user sees is the app's own


def test_tiny_secure_aggregation_three_clients(tmp_path, tiny_model_dir, sst2_dir):
    """SecAgg+ in the Simulation Engine: Flower's secaggplus_mod in the Ray actors, our stages on the server."""
    out, history, summary = _run(
        tmp_path, model=str(tiny_model_dir), _nodes=3,
        **{"data-dir": str(sst2_dir), "num-server-rounds": 2, "fraction-train": 1.0, "local-steps": 2,
           "mask-density": 0.05, "max-eval-examples": 64, "secure-aggregation": True})
    for rec in history[1:]:
        assert rec["aggregated"] and rec["replied"] == 3 and rec["secagg"]["survivors"] == 3
        assert sum(rec["worker_nodes"].values()) == 3  # the clear diagnostic of a masked reply: its Ray node
        assert all(b["down"] > 0 and b["up"] > 0 for b in rec["secagg"]["bytes"].values())
    stages = summary["secagg_bytes_per_client_round"]
    k, h = summary["k"], summary["head_size"]
    assert stages["collect_masked_vectors"]["up"] > 8 * (k + h)  # int64 masked values, measured
    assert summary["secagg_total_bytes_per_client_round"] == pytest.approx(
        sum(b["down"] + b["up"] for b in stages.values()))
    assert torch.any(read_delta(out / "delta.safetensors")[0]["values"] != 0)
