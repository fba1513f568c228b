"""Local masked training: only masked entries and the head change; optimizer state is O(k)."""

from __future__ import annotations

import pytest
import torch

from shared.data import encode, load_splits, partition
from shared.methods.mask import select_mask
from shared.model import base_weights_digest, load_base_model
from shared.sparse import merge_into
from shared.training import train_local
from shared.tuner import SparseTuner


@pytest.fixture()
def setup(tiny_cfg):
    base = load_base_model(tiny_cfg.model, 2, seed=0)
    mask = select_mask(base.model, tiny_cfg, base_weights_digest(base.model, base.head_names))
    train = load_splits(tiny_cfg.dataset, tiny_cfg.data_dir)["train"]
    data = encode(partition(train, 10, 0, "iid", 0.5, 0), base.tokenizer, 32, limit=64)
    return base, mask, data


def _train(base, mask, data, steps=3):
    tuner = SparseTuner(base.model, mask, base.head_names)
    params = tuner.trainable()
    opt_groups = [{"params": params[:1], "lr": 1e-2}, {"params": params[1:], "lr": 1e-2}]
    before = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    res = train_local(base.model, opt_groups, data, steps, 8, seed=1)
    return tuner, before, res


def test_training_changes_only_masked_entries_and_head(setup, tiny_cfg):
    base, mask, data = setup
    tuner, before, res = _train(base, mask, data)
    assert res.num_examples == 3 * 8 and res.loss > 0
    # The base weights are never written during training ...
    for name, p in base.model.named_parameters():
        if name not in base.head_names:
            assert torch.equal(p.detach(), before[name]), name
    # ... and the merged model differs from the base exactly at the mask (and the head).
    fresh = load_base_model(tiny_cfg.model, 2, seed=0)
    merged = tuner.merge(fresh.model, tuner.values.detach(), tuner.head_state())
    positions = {n: i for n, i, _, _ in mask.items()}
    changed_total = 0
    for name, p in merged.named_parameters():
        diff = (p.detach() - before[name]).reshape(-1) != 0
        if name in base.head_names:
            assert diff.any(), name
        elif name in positions:
            outside = diff.clone()
            outside[positions[name]] = False
            assert not outside.any(), name
            changed_total += int(diff.sum())
        else:
            assert not diff.any(), name
    assert 0.9 * mask.k <= changed_total <= mask.k  # (an entry may receive a zero update)


def test_wrapped_forward_equals_merged_model(setup, tiny_cfg):
    base, mask, data = setup
    tuner, _, _ = _train(base, mask, data)
    fresh = load_base_model(tiny_cfg.model, 2, seed=0)
    merged = tuner.merge(fresh.model, tuner.values.detach(), tuner.head_state())
    batch = data.batch(torch.arange(8))
    base.model.eval()
    with torch.no_grad():
        a, b = base.model(**batch).logits, merged(**batch).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_optimizer_state_is_order_k(setup):
    base, mask, data = setup
    tuner = SparseTuner(base.model, mask, base.head_names)
    params = tuner.trainable()
    opt = torch.optim.AdamW([{"params": params, "lr": 1e-3}])
    batch = data.batch(torch.arange(8))
    base.model.train()
    base.model(**batch).loss.backward()
    opt.step()
    state_numel = sum(t.numel() for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim())
    total = sum(p.numel() for p in base.model.parameters())
    assert state_numel == 2 * tuner.num_trainable  # Adam's two moments over k values + head
    assert tuner.num_trainable < 0.1 * total
    assert all(p.grad is None for n, p in base.model.named_parameters() if n not in base.head_names)


def test_sparse_and_dense_gradient_paths_agree(setup):
    base, mask, data = setup
    tuner = SparseTuner(base.model, mask, base.head_names)
    tuner.load(torch.randn(mask.k) * 0.01)
    batch = data.batch(torch.arange(8))
    base.model.eval()
    grads = []
    for sparse in (True, False):
        tuner.sparse_grad = sparse
        tuner.values.grad = None
        base.model(**batch).loss.backward()
        grads.append(tuner.values.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
