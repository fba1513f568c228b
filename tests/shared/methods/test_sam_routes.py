"""Client side of sam's selection phase: the mask is verified, kept in the node state and survives a
fresh worker process (as in the Simulation Engine, where a node's next message may run elsewhere)."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Message

import shared.runtime as runtime
from client.client_app import STATE_ARRAYS, _node, app
from wire.records import message_parts, to_recorddict
from wire.codec import MalformedUpdateError
from shared.settings import parse_run_config
from shared.methods.sam.statistic import to_flat_index, top_by_square
from tests.support.local_grid import LocalGrid


@pytest.fixture()
def setup(tiny_model_dir, sst2_dir):
    rc = {"model": str(tiny_model_dir), "data-dir": str(sst2_dir), "method": "sam", "mask-density": 0.05,
          "max-length": 32, "batch-size": 8, "sam-batches": 1}
    grid = LocalGrid(app, rc, 1)
    cfg = parse_run_config(rc)
    tuner = runtime.get_runtime(cfg).tuner
    mask = tuner.mask_from_selection(top_by_square(torch.randn(tuner.num_candidates), tuner.shapes, 0.05, "global"))
    flat = to_flat_index(dict(zip(mask.names, mask.indices)), tuner.shapes).to(torch.int32).numpy()
    return grid, cfg, tuner, mask, flat


def _mask_message(tuner, flat, announced: str) -> Message:
    conf = {"fingerprint": tuner.recipe, "mask-fingerprint": announced}
    return Message(to_recorddict({"mask-index": flat}, conf), 1001, "query.sam_mask")


def test_broadcast_mask_is_kept_in_node_state_and_reinstalled_in_a_fresh_process(setup):
    grid, cfg, tuner, mask, flat = setup
    reply = grid.send_and_receive([_mask_message(tuner, flat, mask.fingerprint)])[0]
    assert message_parts(reply)[2]["fingerprint"] == mask.fingerprint
    context = grid.contexts[1001]
    assert STATE_ARRAYS in context.state
    runtime._RUNTIMES.clear()  # another worker process: nothing cached, only the node state
    rt = _node(context).rt
    assert rt.tuner.fingerprint == mask.fingerprint and rt.tuner.k == mask.k


def test_a_mask_that_does_not_match_its_announced_fingerprint_is_refused(setup):
    grid, cfg, tuner, mask, flat = setup
    with pytest.raises(MalformedUpdateError):
        grid.send_and_receive([_mask_message(tuner, flat[1:], mask.fingerprint)])
    assert STATE_ARRAYS not in grid.contexts[1001].state
