"""The federated attack runs: the attackers' replies are rewritten in flight, and only theirs."""

from __future__ import annotations

import json

import pytest
import torch

from simulations.robustness.lib.adversary import AttackingGrid, run_cell, run_cells

NODES, ATTACKERS = 5, 1


@pytest.fixture()
def rc(tiny_model_dir, sst2_dir) -> dict:
    return {"method": "pafi", "model": str(tiny_model_dir), "data-dir": str(sst2_dir), "mask-density": 0.05,
            "local-steps": 1, "batch-size": 4, "max-length": 32, "max-eval-examples": 16, "fraction-train": 1.0,
            "num-server-rounds": 2, "lr": 0.05}


def _final_values(out) -> torch.Tensor:
    from safetensors.torch import load_file
    return torch.cat([t.flatten() for _, t in sorted(load_file(out / "delta.safetensors").items())])


def test_no_attack_is_transparent(rc, tmp_path):
    """With attack 'none' the wrapper changes nothing: the same bits as a plain run."""
    from client.client_app import app as client_app
    from flwr.app import Context, RecordDict
    from server.server_app import main
    from shared.settings import declared_defaults
    from simulations.engines.lib.inprocess import LocalGrid

    cell = run_cell("none", "fedavg", rc, NODES, ATTACKERS, tmp_path / "wrapped")
    assert cell["rewritten"] == 0
    plain = {**declared_defaults(), **rc, "output-dir": str(tmp_path / "plain"), "value-dtype": "float32",
             "min-available-nodes": NODES}
    main(LocalGrid(client_app, plain, NODES), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                      run_config=plain))
    history = json.loads((tmp_path / "plain" / "history.json").read_text())
    assert cell["accuracy"] == [r["accuracy"] for r in history]
    assert torch.equal(_final_values(tmp_path / "wrapped"), _final_values(tmp_path / "plain"))


def test_scale_attack_rewrites_only_the_attackers(rc, tmp_path):
    """Every round, exactly the attacker's reply is replaced, and the server aggregates what it received."""
    sent = {}

    class Spy(AttackingGrid):
        def pull_messages(self, ids):
            got = super().pull_messages(ids)
            for m in got:
                if m.metadata.message_type == "train":
                    sent.setdefault(m.metadata.src_node_id, []).append(
                        float(torch.from_numpy(m.content["arrays"]["delta"].numpy()).norm()))
            return got

    import simulations.robustness.lib.adversary as adv
    real = adv.AttackingGrid
    adv.AttackingGrid = Spy
    try:
        cell = run_cell("scale-20", "fedavg", rc, NODES, ATTACKERS, tmp_path / "scaled")
    finally:
        adv.AttackingGrid = real
    assert cell["rewritten"] == ATTACKERS * rc["num-server-rounds"]
    attacker, *honest = sorted(sent)
    for r in range(rc["num-server-rounds"]):  # the attacker's norm is 20x its own honest delta: far above the rest
        assert sent[attacker][r] > 5 * max(sent[h][r] for h in honest)


def test_weight_claim_is_capped_by_the_wall(rc, tmp_path):
    """The liar claims a million examples; the server caps it at the size its node declared."""
    cell = run_cell("weight-claim", "fedavg", rc, NODES, ATTACKERS, tmp_path / "liar")
    assert cell["rewritten"] == rc["num-server-rounds"]
    history = json.loads((tmp_path / "liar" / "history.json").read_text())
    capped = [n for r in history for n in r["rejected_reasons"] if "capped" in n]
    assert len(capped) == rc["num-server-rounds"], capped


def test_cells_resume(rc, tmp_path):
    """A finished cell is not run again; other settings start a fresh store."""
    cells = (("none", "fedavg"),)
    first = run_cells(cells, rc, NODES, ATTACKERS, tmp_path)
    stamp = (tmp_path / "federated.json").stat().st_mtime_ns
    assert run_cells(cells, rc, NODES, ATTACKERS, tmp_path) == first
    assert (tmp_path / "federated.json").stat().st_mtime_ns == stamp


def test_other_dtypes_are_refused(rc, tmp_path):
    """The attack is written in float32 wire values; a float16 run says so instead of sending garbage."""
    with pytest.raises(ValueError, match="float32"):
        run_cell("sign-flip", "fedavg", {**rc, "value-dtype": "float16"}, NODES, ATTACKERS, tmp_path / "f16")
