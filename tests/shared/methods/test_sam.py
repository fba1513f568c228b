"""SAM selection: hand-checkable gradients, the sum-then-square rule, local-top vs dense, the tuner."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from shared.data import Encoded
from shared.masks import block_matrix_names
from shared.model import base_weights_digest, load_base_model
from shared.methods.sam.statistic import (accumulate_gradients, global_statistic, local_top, overlap, to_flat_index,
                        top_by_square)
from shared.methods.sam.tuner import SamTuner, SelectionPendingError


class Dot(nn.Module):
    """loss = sum_b sum_j w_j * x_bj, so dloss/dw_j summed over batches = column sums of the rows seen."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3), requires_grad=False)
        self.other = nn.Parameter(torch.ones(1), requires_grad=False)

    def forward(self, input_ids, attention_mask, labels):
        return SimpleNamespace(loss=(self.w * input_ids.float()).sum() * self.other.sum())


def test_accumulated_gradient_is_the_raw_sum_over_batches_by_hand():
    x = torch.tensor([[1, 0, 2], [0, 3, 0]])
    data = Encoded(x, torch.ones_like(x), torch.zeros(2, dtype=torch.long))
    model = Dot()
    grad = accumulate_gradients(model, ["w"], data, batches=2, batch_size=1, seed=0)  # one pass over both rows
    assert grad.tolist() == [1.0, 3.0, 2.0]
    assert not model.w.requires_grad and model.w.grad is None  # restored, nothing updated
    assert torch.equal(model.w, torch.zeros(3))
    shapes = {"w": (3,)}
    assert top_by_square(grad, shapes, 1 / 3, "global")["w"].tolist() == [1]
    assert top_by_square(grad, shapes, 2 / 3, "global")["w"].tolist() == [1, 2]


def test_clients_sums_are_added_before_squaring():
    # Client gradients that cancel on entry 0: sum-then-square drops it, a sum of squares would keep it.
    g1, g2 = torch.tensor([1.0, -0.5, 0.1]), torch.tensor([-1.0, -0.5, 0.0])
    stat = global_statistic([(None, g1), (None, g2)], 3)
    assert stat.tolist() == [0.0, -1.0, pytest.approx(0.1)]
    assert top_by_square(stat.float(), {"w": (3,)}, 1 / 3, "global")["w"].tolist() == [1]
    squares = g1 ** 2 + g2 ** 2
    assert int(squares.argmax()) == 0


def test_local_top_with_everything_reported_equals_the_dense_statistic():
    torch.manual_seed(0)
    shapes = {"a": (20, 10), "b": (10, 30)}
    grads = [torch.randn(500) for _ in range(3)]
    dense = to_flat_index(top_by_square(global_statistic([(None, g) for g in grads], 500).float(), shapes,
                                        0.05, "global"), shapes)
    sparse = [local_top(g, shapes, 0.05, factor=20.0, scope="global") for g in grads]  # m = all 500
    cheap = to_flat_index(top_by_square(global_statistic(sparse, 500).float(), shapes, 0.05, "global"), shapes)
    assert overlap(dense, cheap) == 1.0
    one = local_top(grads[0], shapes, 0.05, factor=1.0, scope="global")[0]  # a single client: its own top-k
    alone = to_flat_index(top_by_square(grads[0], shapes, 0.05, "global"), shapes)
    assert torch.equal(one, alone)


@pytest.fixture()
def sam_base(tiny_model_dir):
    base = load_base_model(str(tiny_model_dir), 2, 42)
    return base, base_weights_digest(base.model, base.head_names)


def test_sam_tuner_is_pending_until_installed_then_values_only(sam_base, tiny_cfg):
    base, digest = sam_base
    cfg = tiny_cfg.replace(method="sam")
    tuner = SamTuner(base, cfg, digest)
    assert tuner.fingerprint == tuner.recipe and tuner.k == 0
    with pytest.raises(SelectionPendingError):
        tuner.trainable()
    grad = torch.randn(tuner.num_candidates)
    mask = tuner.mask_from_selection(top_by_square(grad, tuner.shapes, cfg.mask_density, cfg.mask_scope))
    flat = to_flat_index(dict(zip(mask.names, mask.indices)), tuner.shapes)
    assert tuner.mask_from_flat_index(flat).fingerprint == mask.fingerprint  # what a client rebuilds
    assert mask.k == int(cfg.mask_density * tuner.num_candidates)
    tuner.install(mask)
    assert tuner.fingerprint == mask.fingerprint != tuner.recipe
    assert tuner.trainable()[0].shape == (mask.k,)
    other = tuner.mask_from_flat_index(flat[1:])
    tuner.install(other)  # a different mask: a fresh base is wired
    assert tuner.fingerprint == other.fingerprint and tuner.k == mask.k - 1
    tuner.reset()
    assert tuner.fingerprint == tuner.recipe


def test_gradients_on_the_tiny_bert_are_deterministic_and_cover_every_candidate(sam_base, tiny_cfg):
    from shared.runtime import client_partition

    base, _ = sam_base
    data = client_partition(tiny_cfg, base.tokenizer, 0, 4)
    names = block_matrix_names(base.model)
    a = accumulate_gradients(base.model, names, data, 2, 4, seed=1)
    b = accumulate_gradients(base.model, names, data, 2, 4, seed=1)
    assert torch.equal(a, b) and a.numel() == sum(p.numel() for n, p in base.model.named_parameters() if n in names)
    assert float(a.abs().sum()) > 0
    assert all(not p.requires_grad and p.grad is None for p in base.model.parameters())
