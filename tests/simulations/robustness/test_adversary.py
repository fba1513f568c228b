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


def test_a_handshake_declaration_of_1e9_is_capped(rc, tmp_path):
    """declare-1e9: the attacker declares a billion examples at the handshake and claims them every round; the
    default examples-cap-multiple caps its weight at 10x the median declaration, every round it is sampled."""
    from simulations.robustness.lib.attacks import DECLARED_CLAIM

    cell = run_cell("declare-1e9", "fedavg", rc, NODES, ATTACKERS, tmp_path / "declared", population=NODES)
    assert cell["rewritten"] == rc["num-server-rounds"]
    capped = [r["capped"] for r in cell["rounds"]]
    assert capped == [1] * rc["num-server-rounds"]
    history = json.loads((tmp_path / "declared" / "history.json").read_text())
    note = next(n for n in history[1]["rejected_reasons"] if "capped" in n)
    assert f"num-examples {DECLARED_CLAIM} above" in note


def test_alie_zmax_with_a_population_uses_the_federation_z():
    """With the federation's size, ALIE's z is Baruch et al.'s for (n, f), not the round's (infinite at 3 of 5)."""
    from simulations.robustness.lib.attacks import alie_z_max

    grid = AttackingGrid(None, "alie-zmax", [1, 2, 3], population=10)
    assert float(grid.rows_attack[5:]) == pytest.approx(alie_z_max(10, 3)) and alie_z_max(10, 3) > 0.5
    assert AttackingGrid(None, "alie-zmax", [1, 2, 3]).rows_attack == "alie-zmax"


def test_default_cells_resume_and_tabulate(rc, tmp_path):
    """The default-settings matrix: FedAvg at the defaults, resumable per cell, one summary row per cell."""
    from simulations.robustness.lib.adversary import default_rows, default_table, run_default_cells, write_default_rows

    cells = (("none", 0), ("huge", 1))
    first = run_default_cells(cells, rc, NODES, tmp_path)
    stamp = (tmp_path / "federated_defaults.json").stat().st_mtime_ns
    assert run_default_cells(cells, rc, NODES, tmp_path) == first
    assert (tmp_path / "federated_defaults.json").stat().st_mtime_ns == stamp
    assert list(first) == ["none|0", "huge|1"]
    # --tabulate: the finished cells only, nothing run (a cell not run yet is left out)
    assert run_default_cells(cells + (("zeros", 1),), rc, NODES, tmp_path, run=False) == first
    rows = default_rows(first, rc, NODES)
    huge = rows[1]
    assert huge["replies_clipped"] == rc["num-server-rounds"] and huge["rounds_skipped"] == 0  # 1e30: clipped
    assert rows[0]["delta_pts"] == 0.0 and "| huge | 1 |" in default_table(rows)
    write_default_rows(rows, tmp_path / "out" / "m.csv")
    assert (tmp_path / "out" / "m.csv").read_text().startswith("attack,attackers,")
    with pytest.raises(ValueError, match="minority"):
        run_default_cells((("zeros", 3),), rc, NODES, tmp_path)
