"""Every method end to end on the tiny model: in-process (LocalGrid: real ServerApp main, strategy,
selection phase and ClientApp handlers, no network), and sam + lora + topk through the real Simulation
Engine (``simulations/engines/launcher.py``)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification

pytestmark = pytest.mark.integration

METHODS = ["pafi", "magnitude", "random", "bitfit", "sam", "topk", "full", "lora"]


def _run_config(repo_root: Path, tiny_model_dir: Path, sst2_dir: Path, out: Path, method: str, **extra) -> dict:
    defaults = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    rc = dict(defaults)
    rc.update({"model": str(tiny_model_dir), "data-dir": str(sst2_dir), "num-server-rounds": 2, "local-steps": 2,
               "batch-size": 8, "max-eval-examples": 32, "output-dir": str(out), "mask-density": 0.05,
               "method": method, "fraction-train": 1.0, "sam-batches": 2})
    rc.update(extra)
    return rc


def _check_outputs(out: Path, method: str) -> dict:
    history = json.loads((out / "history.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in history] == [0, 1, 2]
    assert all(r["replied"] == r["sampled"] and r["rejected"] == 0 for r in history[1:])
    assert summary["method"] == method and summary["k"] > 0 and summary["bytes_up_per_client_round"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")  # a plain transformers model
    assert not any("lora" in n or "parametrizations" in n for n, _ in model.named_parameters())
    return {"history": history, "summary": summary}


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_end_to_end_in_process(method, repo_root, tiny_model_dir, sst2_dir, tmp_path):
    from client.client_app import app as client_app
    from server.server_app import main
    from tests.support.local_grid import LocalGrid

    out = tmp_path / method
    rc = _run_config(repo_root, tiny_model_dir, sst2_dir, out, method)
    grid = LocalGrid(client_app, rc, 2)
    main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    res = _check_outputs(out, method)
    s, hist = res["summary"], res["history"]
    if method == "sam":  # selection traffic shows in round 0; then values only under the mask's fingerprint
        assert {"query.sam_stats", "query.sam_mask"} <= set(grid.sent_types)
        assert s["selection_bytes_up"] >= 2 * 4 * (s["k"] / 0.05) and hist[0]["bytes_up"] > s["selection_bytes_up"]
        with safe_open(str(out / "delta.safetensors"), "pt") as fh:
            assert fh.metadata()["fingerprint"] == s["mask_fingerprint"]
    if method == "topk":  # k values plus k int32 indices per upload: more than a shared mask's k values
        assert s["topk_k"] > 0 and s["bytes_up_per_client_round"] > 8 * s["topk_k"]
        # the payload figure counts the k' values, their int32 positions and the head, and framing stays small
        assert s["value_bytes_per_client_round"] == 8 * s["topk_k"] + 4 * s["head_size"]
        assert s["value_bytes_per_client_round"] <= s["bytes_up_per_client_round"] < s["value_bytes_per_client_round"] + 16384
    if method == "full":
        assert s["bytes_up_per_client_round"] >= 4 * s["k"]
    if method == "lora":
        assert s["adapter_params"] == s["k"] and (out / "adapter" / "adapter_model.safetensors").is_file()


def test_sam_and_lora_and_topk_in_the_simulation_engine(repo_root, tiny_model_dir, sst2_dir, tmp_path):
    from simulations.engines import run_simulation

    for method in ("sam", "lora", "topk"):
        out = tmp_path / method
        rc = {k: v for k, v in _run_config(repo_root, tiny_model_dir, sst2_dir, out, method).items()
              if k in ("model", "data-dir", "num-server-rounds", "local-steps", "batch-size", "max-eval-examples",
                       "output-dir", "mask-density", "method", "fraction-train", "sam-batches")}
        code = run_simulation(rc, num_supernodes=2, cpus_per_client=1, flwr_home=tmp_path / f"flwr-{method}",
                              timeout=600, quiet=True)
        assert code == 0, f"{method}: flwr run exited with {code}"
        res = _check_outputs(out, method)
        if method == "sam":  # the mask reached the clients through their node state, in Ray workers
            assert res["summary"]["selection_confirmed"] == 2 and res["history"][2]["replied"] == 2


def test_cheap_sam_schemes_reporting_everything_select_exactly_the_dense_mask(repo_root, tiny_model_dir, sst2_dir,
                                                                               tmp_path):
    """With sam-local-factor * mask-density >= 1 a client's "top" is every entry, so local-top and refine
    must rebuild the dense statistic exactly: the same mask fingerprint, through the whole protocol."""
    from client.client_app import app as client_app
    from server.server_app import main
    from tests.support.local_grid import LocalGrid

    fingerprints = {}
    for scheme in ("dense", "local-top", "refine"):
        out = tmp_path / scheme
        rc = _run_config(repo_root, tiny_model_dir, sst2_dir, out, "sam", **{
            "sam-scheme": scheme, "sam-local-factor": 20.0, "num-server-rounds": 1})
        main(LocalGrid(client_app, rc, 2), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                   run_config=rc))
        fingerprints[scheme] = json.loads((out / "summary.json").read_text())["mask_fingerprint"]
    assert fingerprints["local-top"] == fingerprints["dense"] == fingerprints["refine"]
