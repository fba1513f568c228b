"""Safe by default: under the settings a user does not touch, one hostile client cannot poison the federation.

Whole runs through the real ServerApp ``main`` and ClientApp over the in-process grid (tiny BERT, real SST-2 rows),
the attacker's replies rewritten in flight (simulations.robustness's ``AttackingGrid``); and the strategy's
adoption rule on real messages.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from server.strategy import GlobalState, SparseStrategy
from server.validation import Expected
from shared.config import RunConfig
from simulations.robustness.lib.adversary import run_cell
from tests.server.replies import message
from wire.protocol import UP_KEYS, encode_pair

NODES = 4


@pytest.fixture()
def rc(tiny_model_dir, sst2_dir) -> dict:
    return {"method": "pafi", "model": str(tiny_model_dir), "data-dir": str(sst2_dir), "mask-density": 0.05,
            "local-steps": 2, "batch-size": 8, "max-length": 32, "max-eval-examples": 64, "fraction-train": 1.0,
            "num-server-rounds": 2, "lr": 0.05}


def _reasons(out) -> list[str]:
    return [r for rec in json.loads((out / "history.json").read_text()) for r in rec["rejected_reasons"]]


def test_a_huge_finite_update_never_becomes_the_global_state(rc, tmp_path):
    """1e30 per value (finite in float32) from one node of four, every round: before, the global values became
    ~2.5e29 and every later round diverged. Now no such state is adopted and delta.safetensors stays finite."""
    cell = run_cell("huge", "fedavg", rc, NODES, 1, tmp_path / "run")
    assert cell["rewritten"] == 2
    delta = load_file(str(tmp_path / "run" / "delta.safetensors"))
    assert all(torch.isfinite(t).all() for t in delta.values())
    assert float(delta["values"].abs().max()) < 1.0
    assert all(math.isfinite(a) for a in cell["accuracy"])
    assert sum("not adopted" in r for r in _reasons(tmp_path / "run")) == 2  # both rounds skipped, state kept


def _strategy(ratio: float, vet) -> SparseStrategy:
    s = SparseStrategy(RunConfig(state_loss_ratio=ratio), GlobalState(torch.zeros(4), torch.zeros(2)),
                       Expected("f" * 64, "float32", 4, 2))
    s.partitions = {100: 0}
    s.vet = vet
    return s


def _reply(delta: torch.Tensor):
    arrays = encode_pair(delta, torch.zeros(2), UP_KEYS, "float32", 8)
    return message(100, arrays, {"num-examples": 5, "train-loss": 0.1}, {"fingerprint": "f" * 64})


def test_a_state_whose_loss_explodes_is_not_adopted_and_a_loss_that_rises_within_the_ratio_is():
    loss = lambda state: 0.5 + float(state.values.abs().sum())  # noqa: E731 - a deterministic loss of the state
    s = _strategy(10.0, loss)
    assert s.aggregate_train(1, [_reply(torch.full((4,), 1.0))]) != (None, None)  # 4.5 <= 10 x 0.5: adopted
    assert torch.equal(s.state.values, torch.ones(4)) and s.adopted_loss == 4.5
    kept = s.state
    assert s.aggregate_train(2, [_reply(torch.full((4,), 20.0))]) == (None, None)  # 84.5 > 10 x 4.5
    assert s.state is kept and "evaluation loss 84.5 is over state-loss-ratio 10" in s.current.reasons[-1]
    assert s.aggregate_train(3, [_reply(torch.full((4,), 0.0))]) != (None, None)
    nan = _strategy(10.0, lambda state: float("nan") if state.values.abs().sum() > 0 else 0.7)
    assert nan.aggregate_train(1, [_reply(torch.ones(4))]) == (None, None) and torch.equal(nan.state.values,
                                                                                            torch.zeros(4))
    off = _strategy(0.0, loss)  # state-loss-ratio = 0: every finite state is adopted, the loss never computed
    off.vet = lambda state: pytest.fail("vetted with the check off")
    assert off.aggregate_train(1, [_reply(torch.full((4,), 20.0))]) != (None, None)
