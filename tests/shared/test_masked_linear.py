"""The sparse weight-gradient path equals the dense-gradient reference path (float32 tolerance)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from shared.config import RunConfig
from shared.data import encode, load_splits
from shared.masks import build_mask
from shared.model import load_base_model
from shared.runtime import build_runtime
from shared.training import train_local
from shared.tuner import SparseTuner


def _grads(rt, batch, sparse: bool) -> list[torch.Tensor]:
    """Gradients of every trainable tensor for one forward/backward in train mode (fixed dropout)."""
    rt.tuner.sparse_grad = sparse
    params = rt.tuner.trainable()
    for p in params:
        p.grad = None
    rt.base.model.train()
    torch.manual_seed(0)
    rt.base.model(**batch).loss.backward()
    out = [p.grad.detach().clone() for p in params]
    for p in params:
        p.grad = None
    rt.base.model.eval()
    return out


def _padded_batch(cfg: RunConfig, tokenizer, n: int = 8) -> dict[str, torch.Tensor]:
    data = encode(load_splits(cfg.dataset, cfg.data_dir)["train"], tokenizer, cfg.max_length, limit=n)
    batch = data.batch(torch.arange(n))
    assert (batch["attention_mask"] == 0).any(), "the test needs padding to exercise zero-row skipping"
    return batch


def test_tiny_model_gradients_match_dense_path(tiny_cfg):
    rt = build_runtime(tiny_cfg)
    with torch.no_grad():
        rt.tuner.values.normal_(0, 0.05)  # away from zero so the effective weight matters
    batch = _padded_batch(tiny_cfg, rt.base.tokenizer)
    dense, sparse = _grads(rt, batch, False), _grads(rt, batch, True)
    assert dense[0].shape == (rt.tuner.k,) and dense[0].abs().sum() > 0
    for d, s in zip(dense, sparse):
        torch.testing.assert_close(s, d, rtol=1e-4, atol=1e-6)


def _minilm_layer_case(name: str, density: float = 0.005):
    """One MiniLM linear, its PaFi mask (smallest |w|) and a SparseTuner around just that layer."""
    base = load_base_model("", 2, 0)
    linear = dict(base.model.named_modules())[name]
    lin = nn.Linear(linear.in_features, linear.out_features)
    lin.load_state_dict(linear.state_dict())
    lin.requires_grad_(False)
    holder = nn.Sequential(lin)
    w = lin.weight.detach().abs().flatten()
    idx = torch.topk(w, int(density * w.numel()), largest=False).indices
    mask = build_mask(holder, {"0.weight": idx}, "pafi", density, "test")
    tuner = SparseTuner(holder, mask, ())
    with torch.no_grad():
        tuner.values.normal_(0, 0.01)
    return holder, tuner


@pytest.mark.parametrize("name", ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.3.output.dense"])
def test_minilm_layer_value_and_input_gradients_match_dense_path(name):
    holder, tuner = _minilm_layer_case(name)
    d_in = holder[0].in_features
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 24, d_in, generator=gen)
    g = torch.randn(4, 24, holder[0].out_features, generator=gen)
    g[:, 10:] = 0.0  # pad tokens: exactly-zero output-gradient rows are skipped on the sparse path
    results = []
    for sparse in (False, True):
        tuner.sparse_grad = sparse
        x = x0.clone().requires_grad_(True)
        tuner.values.grad = None
        holder(x).backward(g)
        results.append((tuner.values.grad.clone(), x.grad.clone()))
    (gv_d, gx_d), (gv_s, gx_s) = results
    assert gv_d.abs().sum() > 0
    torch.testing.assert_close(gv_s, gv_d, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx_s, gx_d, rtol=1e-5, atol=1e-6)
    assert torch.equal(gx_s[:, 10:], torch.zeros_like(gx_s[:, 10:]))


def _train_twice(cfg: RunConfig, steps: int) -> list[torch.Tensor]:
    rt = build_runtime(cfg)
    data = encode(load_splits(cfg.dataset, cfg.data_dir)["train"], rt.base.tokenizer, cfg.max_length, limit=64)
    head0 = rt.tuner.head_state()
    results = []
    for sparse in (False, True):
        rt.tuner.sparse_grad = sparse
        rt.tuner.load(torch.zeros(rt.tuner.k), copy.deepcopy(head0))
        params = rt.tuner.trainable()
        lr, head_lr = rt.method.learning_rates(cfg)
        groups = [{"params": params[:1], "lr": lr}, {"params": params[1:], "lr": head_lr}]
        train_local(rt.base.model, groups, data, steps, cfg.batch_size, seed=3)
        results.append(rt.tuner.values.detach().clone())
    return results


def test_tiny_model_training_steps_match_dense_path(tiny_cfg):
    dense, sparse = _train_twice(tiny_cfg, steps=3)
    assert dense.abs().sum() > 0
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-6)


def test_minilm_one_step_matches_dense_path(sst2_dir):
    cfg = RunConfig(data_dir=str(sst2_dir), batch_size=8, max_length=32, lr=5e-3)
    dense, sparse = _train_twice(cfg, steps=1)
    assert dense.abs().sum() > 0
    # Adam's first step is lr * sign-like(g); entries whose gradient is ~0 can differ in the
    # normalised update, so compare with an absolute tolerance of a small fraction of lr.
    torch.testing.assert_close(sparse, dense, rtol=1e-3, atol=1e-5)


def test_frozen_embeddings_get_no_gradient_and_lowest_layer_skips_input_grad(tiny_cfg):
    rt = build_runtime(tiny_cfg)
    seen: dict[str, bool] = {}
    first = dict(rt.base.model.named_modules())["bert.encoder.layer.0.attention.self.query"]

    def record(module, args):
        seen.setdefault("x", args[0].requires_grad)

    handle = first.register_forward_pre_hook(record)
    try:
        batch = _padded_batch(tiny_cfg, rt.base.tokenizer)
        _grads(rt, batch, True)
    finally:
        handle.remove()
    # Nothing below the lowest masked layer requires grad, so autograd computes no input
    # gradient there and no gradient at all for the frozen embeddings.
    assert seen["x"] is False
    head = set(rt.base.head_names)
    assert all(p.grad is None for n, p in rt.base.model.named_parameters() if n not in head)
