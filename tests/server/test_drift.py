"""The server's SCAFFOLD state (server/drift.py): c's update, the mirrored c_i, the checkpoint, the wall."""

from __future__ import annotations

import numpy as np
import torch

from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.drift import ServerDrift
from shared.config import RunConfig
from wire.codec import decode_values
from wire.drift import CONTROL, CONTROL_DELTA, CONTROL_OWN, encode_control

SIZE = 5


def _scaffold(**changes) -> ServerDrift:
    return ServerDrift(RunConfig(drift_correction="scaffold", **changes))


def _reply(vec: torch.Tensor, dtype: str = "float32") -> dict[str, np.ndarray]:
    return encode_control(vec, CONTROL_DELTA, dtype, 256)


def test_c_moves_by_the_accepted_variate_changes_over_all_nodes():
    drift = _scaffold()
    drift.start_round(SIZE)
    a, b = torch.arange(SIZE, dtype=torch.float32), torch.full((SIZE,), -1.0)
    drift.take(11, _reply(a), SIZE)
    drift.take(12, _reply(b), SIZE)
    drift.take(13, _reply(torch.full((SIZE,), 9.0)), SIZE)  # decoded, then refused by a later guard: not absorbed
    drift.absorb([(12, 4), (11, 0)], num_nodes=10)
    assert torch.equal(drift.c, ((a.double() + b.double()) / 10).float())  # (1/N) sum over S, N = all nodes
    assert torch.equal(drift.mirror[0], a) and torch.equal(drift.mirror[4], b) and 13 not in drift.mirror
    drift.start_round(SIZE)
    assert drift.received == {} and drift.c.numel() == SIZE


def test_the_train_message_carries_c_and_after_a_resume_each_nodes_own_variate_once():
    drift = _scaffold(value_dtype="float16")
    drift.start_round(SIZE)
    drift.take(11, _reply(torch.ones(SIZE), "float16"), SIZE)
    drift.absorb([(11, 3)], num_nodes=4)
    arrays = drift.down(3)
    assert set(arrays) == {CONTROL} and arrays[CONTROL].dtype == np.float16  # c in value-dtype, no control-own
    resumed = _scaffold(value_dtype="float16")
    resumed.load(drift.state())
    assert torch.equal(resumed.c, drift.c) and resumed.restore == {3}
    first = resumed.down(3)
    assert set(first) == {CONTROL, CONTROL_OWN} and first[CONTROL_OWN].dtype == np.float32  # exact
    assert torch.equal(decode_values(first, "float32", SIZE, CONTROL_OWN), torch.ones(SIZE))
    assert set(resumed.down(5)) == {CONTROL}  # a partition the server never heard from starts at 0 on its node
    resumed.start_round(SIZE)
    resumed.take(21, _reply(torch.ones(SIZE), "float16"), SIZE)
    resumed.absorb([(21, 3)], num_nodes=4)
    assert set(resumed.down(3)) == {CONTROL} and torch.equal(resumed.mirror[3], torch.full((SIZE,), 2.0))


def test_drift_off_adds_nothing_and_keeps_nothing():
    drift = ServerDrift(RunConfig())
    drift.start_round(SIZE)
    assert drift.down(0) == {} and drift.state() == {} and drift.c is None
    drift.take(1, {}, SIZE)
    drift.absorb([(1, 0)], 2)
    assert drift.c is None


def test_the_checkpoint_carries_the_variates_bit_for_bit(tmp_path):
    drift = _scaffold()
    drift.start_round(SIZE)
    drift.take(11, _reply(torch.randn(SIZE, generator=torch.Generator().manual_seed(1))), SIZE)
    drift.absorb([(11, 2)], num_nodes=3)
    save_checkpoint(tmp_path, Checkpoint(1, torch.zeros(3), torch.zeros(2), drift=drift.state()))
    back = _scaffold()
    back.load(load_checkpoint(tmp_path / "checkpoint.safetensors").drift)
    assert torch.equal(back.c, drift.c) and set(back.mirror) == {2} and torch.equal(back.mirror[2], drift.mirror[2])


def test_a_node_whose_reply_was_not_counted_gets_the_servers_view_of_its_variate_next_time():
    """It may have moved its c_i while the server did not count the change: the mirror re-bases it (0 if never
    counted), so c stays the mean of the nodes' c_i."""
    drift = _scaffold()
    drift.start_round(SIZE)
    drift.down(0), drift.down(1), drift.down(2)
    drift.take(11, _reply(torch.ones(SIZE)), SIZE)
    drift.take(12, _reply(torch.ones(SIZE)), SIZE)  # then refused by the norm bound: not in ``accepted``
    drift.absorb([(11, 0)], num_nodes=3)  # partition 2 failed, partition 1 was refused
    assert drift.restore == {1, 2}
    drift.start_round(SIZE)
    back = drift.down(1)
    assert torch.equal(decode_values(back, "float32", SIZE, CONTROL_OWN), torch.zeros(SIZE))
    assert set(drift.down(0)) == {CONTROL}
    drift.take(21, _reply(torch.ones(SIZE)), SIZE)
    drift.absorb([(21, 1)], num_nodes=3)  # partition 0 was sent a message this time and did not answer
    assert drift.restore == {0, 2} and torch.equal(drift.mirror[1], torch.ones(SIZE))
