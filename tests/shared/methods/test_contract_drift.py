"""Drift correction through the one server path, for every aligned method (a registered aligned method is covered).

Per method, on the tiny BERT, three in-process federations of one round each — plain, SCAFFOLD, FedProx —
through the real ClientApp handlers and ``SparseStrategy`` (handshake, the method's selection phase, the wall,
aggregation). SCAFFOLD's variates must travel in the measured messages (2x the vector each way), every node
must keep exactly the c_i the server mirrors, and the proximal term must change what a client sends.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from client.client_app import app as client_app
from client.drift_state import load_variate
from server.selection import run_selection
from server.server_app import _strategy
from server.strategy import RoundLog, SparseStrategy
from shared.methods import methods
from shared.runtime import Runtime, get_runtime
from shared.settings import parse_run_config
from tests.support.local_grid import LocalGrid
from wire.codec import wire_bytes
from wire.drift import CONTROL, CONTROL_DELTA, split_control
from wire.records import message_bytes, message_parts

NODES = 3
ALIGNED = [name for name, m in methods().items() if m.aligned]
SETTINGS = {"plain": {}, "scaffold": {"drift-correction": "scaffold"}, "prox": {"prox-mu": 1000.0}}


@dataclass
class Round:
    rt: Runtime
    grid: LocalGrid
    strategy: SparseStrategy  # after round 1
    start: torch.Tensor  # the global (k + h,) vector round 1 began from
    down: list  # round 1's train messages
    up: list  # round 1's replies


def _round(rc: dict) -> Round:
    cfg = parse_run_config(rc)
    rt = get_runtime(cfg)
    rt.reset()  # every setting starts from the same base head and tuner state
    grid = LocalGrid(client_app, rc, NODES)
    strategy = _strategy(cfg, rt)
    run_selection(grid, cfg, rt, strategy, strategy.handshake(grid, NODES, 10), {})
    start = torch.cat([strategy.state.values, strategy.state.head])
    arrays = ArrayRecord({k: Array(a) for k, a in strategy.encoded_global().items()})
    strategy.current = RoundLog(1)
    down = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    sizes = [message_bytes(m) for m in down]  # before delivery
    up = list(grid.send_and_receive(down))
    strategy.aggregate_train(1, up)
    return Round(rt, grid, strategy, start, sizes, up)


@pytest.fixture(scope="module", params=ALIGNED)
def rounds(request, repo_root, tiny_model_dir, sst2_dir) -> dict[str, Round]:
    rc = dict(tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    rc.update({"method": request.param, "model": str(tiny_model_dir), "data-dir": str(sst2_dir), "mask-density": 0.05,
               "local-steps": 2, "batch-size": 4, "max-length": 32, "max-eval-examples": 16, "sam-batches": 1,
               "dsee-prune-heads": 1, "fraction-train": 1.0, "min-available-nodes": NODES})
    return {name: _round({**rc, **extra}) for name, extra in SETTINGS.items()}


def test_every_setting_aggregates_every_reply(rounds):
    for name, r in rounds.items():
        assert r.strategy.current.aggregated and r.strategy.current.replied == NODES, (name, r.strategy.current.reasons)
        assert r.strategy.current.rejected == 0


def test_scaffold_sends_c_and_receives_delta_c_at_twice_the_array_bytes(rounds):
    plain, sc = rounds["plain"], rounds["scaffold"]
    size = sc.strategy.expected.k + sc.strategy.expected.head_size
    for reply in sc.up:
        update, control = split_control(message_parts(reply)[0])
        assert control[CONTROL_DELTA].shape == (size,) and wire_bytes(control) == wire_bytes(update)  # 2x the vector
    added = sum(wire_bytes(split_control(message_parts(m)[0])[1]) for m in sc.up)
    up_plain, up_sc = (sum(message_bytes(m) for m in r.up) for r in (plain, sc))
    assert up_sc - up_plain > 0.8 * added, (up_plain, up_sc, added)  # measured: the variates are in the messages
    assert sum(sc.down) > sum(plain.down)  # c travels down (all zeros in round 1: it deflates to little)
    assert float(sc.strategy.drift.c.abs().max()) > 0


def test_each_node_keeps_exactly_the_variate_the_server_mirrors(rounds):
    sc = rounds["scaffold"]
    size = sc.strategy.expected.k + sc.strategy.expected.head_size
    for node, ctx in sc.grid.contexts.items():
        pid = sc.strategy.partitions[node]
        assert torch.equal(load_variate(ctx, sc.rt.tuner.fingerprint, size), sc.strategy.drift.mirror[pid])
    mirrored = torch.stack([sc.strategy.drift.mirror[p] for p in sorted(sc.strategy.drift.mirror)])
    assert torch.equal(sc.strategy.drift.c, (mirrored.double().sum(0) / NODES).float())  # c = mean c_i (all sampled)


def test_the_proximal_term_holds_the_clients_near_the_global_vector(rounds):
    plain, prox = rounds["plain"], rounds["prox"]
    assert torch.equal(plain.start, prox.start)
    moved = {name: torch.cat([r.strategy.state.values, r.strategy.state.head]) - r.start for name, r in rounds.items()}
    assert float(moved["prox"].norm()) < float(moved["plain"].norm())
    assert CONTROL not in message_parts(prox.up[0])[0]
