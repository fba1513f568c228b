"""Dense (full/topk) and LoRA tuners on the tiny BERT: wiring, merge, PEFT equivalence."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from shared.config import RunConfig
from shared.model import base_weights_digest, load_base_model
from shared.sparse import MergeError
from shared.methods.full import build_full as full_tuner
from shared.methods.topk import build_topk as topk_tuner
from shared.methods.lora import build_lora as lora_tuner
from shared.methods.lora.tuner import adapter_parameters, wrap_with_lora


def _batch(base, n=4):
    enc = base.tokenizer(["a fine movie", "dull and long", "great", "bad"][:n], padding=True, return_tensors="pt")
    return dict(enc)


def _fresh(tiny_model_dir):
    return load_base_model(str(tiny_model_dir), 2, 42)


def test_full_tuner_trains_every_non_head_parameter_and_merges_exactly(tiny_model_dir):
    base = _fresh(tiny_model_dir)
    n_all = sum(p.numel() for p in base.model.parameters())
    head = sum(p.numel() for n, p in base.model.named_parameters() if n in base.head_names)
    tuner = full_tuner(base, RunConfig(), base_weights_digest(base.model, base.head_names))
    assert tuner.k == n_all - head
    values = torch.randn(tuner.k) * 1e-2
    tuner.load(values)
    batch = _batch(base)
    with torch.no_grad():
        wired = base.model(**batch).logits
    merged = tuner.merge(_fresh(tiny_model_dir).model, values, tuner.head_state())
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, wired, atol=1e-5)
    out = base.model(**batch, labels=torch.tensor([1, 0, 1, 0])).loss
    out.backward()
    grad = tuner.values.grad
    for i, name in enumerate(tuner.names):  # every encoder tensor gets a gradient (embeddings: used rows only)
        if ".encoder." in name:
            assert float(grad[tuner.offsets[i]:tuner.offsets[i + 1]].abs().sum()) > 0, name


def test_full_merge_rejects_a_bad_vector_and_leaves_the_model_unchanged(tiny_model_dir):
    base = _fresh(tiny_model_dir)
    tuner = full_tuner(base, RunConfig(), "d")
    fresh = _fresh(tiny_model_dir).model
    before = {n: p.clone() for n, p in fresh.named_parameters()}
    bad = torch.zeros(tuner.k)
    bad[3] = float("nan")
    with pytest.raises(MergeError):
        tuner.merge(fresh, bad, {})
    assert all(torch.equal(before[n], p) for n, p in fresh.named_parameters())


def test_topk_budget_is_pafis_k_and_fingerprints_differ(tiny_model_dir):
    base = _fresh(tiny_model_dir)
    full_fp = full_tuner(_fresh(tiny_model_dir), RunConfig(), "d").fingerprint
    tuner = topk_tuner(base, RunConfig(mask_density=0.05), "d")
    from shared.methods.mask import select_mask
    pafi = select_mask(_fresh(tiny_model_dir).model, RunConfig(mask_density=0.05), "d")
    assert tuner.upload_k == pafi.k
    assert tuner.fingerprint != full_fp


@pytest.mark.parametrize("bpv", [4, 2, 1])
def test_payload_bytes_count_what_one_upload_carries(tiny_model_dir, bpv):
    """summary.json's value_bytes_per_client_round: values + head; topk adds an int32 position per value."""
    full = full_tuner(_fresh(tiny_model_dir), RunConfig(), "d")
    topk = topk_tuner(_fresh(tiny_model_dir), RunConfig(mask_density=0.05), "d")
    assert full.payload_bytes(bpv) == (full.k + full.head_size) * bpv
    assert topk.payload_bytes(bpv) == topk.upload_k * (bpv + 4) + topk.head_size * bpv
    assert topk.payload_bytes(bpv) < full.payload_bytes(bpv)


@pytest.fixture()
def lora_setup(tiny_model_dir):
    base = _fresh(tiny_model_dir)
    cfg = RunConfig(options={"lora-rank": 4, "lora-alpha": 8, "lora-target-modules": "query,value"})
    tuner = lora_tuner(base, cfg, base_weights_digest(base.model, base.head_names))
    return base, cfg, tuner


def test_lora_values_are_peft_init_and_only_adapters(lora_setup, tiny_model_dir):
    base, cfg, tuner = lora_setup
    hidden, layers = 32, 2
    assert tuner.k == layers * 2 * (4 * hidden + hidden * 4)  # query+value: A (r, d) and B (d, r)
    again = lora_tuner(_fresh(tiny_model_dir), cfg, "x")
    assert torch.equal(tuner.initial_values(), again.initial_values())  # seeded: every node agrees
    b_parts = [n for n in tuner.names if "lora_B" in n]
    assert b_parts and float(tuner.initial_values().abs().sum()) > 0


def test_lora_merged_model_equals_peft_own_merge_and_the_wired_forward(lora_setup, tiny_model_dir):
    base, cfg, tuner = lora_setup
    values = tuner.initial_values() + torch.randn(tuner.k) * 0.05
    head = {n: torch.randn_like(t) * 0.1 for n, t in tuner.head_state().items()}
    tuner.load(values, head)
    batch = _batch(base)
    with torch.no_grad():
        wired = base.model(**batch).logits
    ours = tuner.merge(_fresh(tiny_model_dir).model, values, head)
    # PEFT by hand: wrap a fresh base, set the adapter weights by name, merge with PEFT's own merge.
    reference = wrap_with_lora(_fresh(tiny_model_dir).model, tuner.config, cfg.seed)
    start = 0
    with torch.no_grad():
        for _, p in adapter_parameters(reference):
            p.copy_(values[start:start + p.numel()].view_as(p))
            start += p.numel()
    reference = reference.merge_and_unload()
    ref_params = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        if name in head:
            assert torch.equal(p, head[name])
        else:
            assert torch.allclose(p, ref_params[name], atol=1e-6), name
    assert not any("lora" in n for n, _ in ours.named_parameters())
    with torch.no_grad():
        assert torch.allclose(ours(**batch).logits, wired, atol=1e-5)


def test_lora_artifact_loads_with_peft_and_matches_the_merge(lora_setup, tiny_model_dir, tmp_path):
    base, cfg, tuner = lora_setup
    values = tuner.initial_values() + torch.randn(tuner.k) * 0.05
    head = tuner.head_state()
    folder = tuner.save_artifact(tmp_path, values, head, cfg, str(tiny_model_dir))
    loaded = PeftModel.from_pretrained(_fresh(tiny_model_dir).model, str(folder)).merge_and_unload()
    ours = dict(tuner.merge(_fresh(tiny_model_dir).model, values, head).named_parameters())
    for name, p in loaded.named_parameters():
        assert torch.allclose(p, ours[name], atol=1e-6), name


def test_lora_gradient_reaches_only_the_value_vector(lora_setup):
    base, cfg, tuner = lora_setup
    params = tuner.trainable()
    loss = base.model(**_batch(base), labels=torch.tensor([1, 0, 1, 0])).loss
    loss.backward()
    assert params[0] is tuner.values and tuner.values.grad is not None
    assert float(tuner.values.grad.abs().sum()) > 0
    assert all(p.grad is None for n, p in base.model.named_parameters() if n not in base.head_names)


def test_full_gradient_through_one_split_equals_the_per_parameter_slices(tiny_model_dir):
    """A forward pass splits the value vector once (its backward is one concatenation); the gradient is exactly
    the one the per-parameter slices give, and outside a forward pass a weight reads its own, current slice."""
    base = _fresh(tiny_model_dir)
    tuner = full_tuner(base, RunConfig(), base_weights_digest(base.model, base.head_names))
    tuner.load(torch.randn(tuner.k) * 1e-2)
    batch, labels = _batch(base), torch.tensor([1, 0, 1, 0])
    base.model.eval()
    base.model(**batch, labels=labels).loss.backward()
    split_grad = tuner.values.grad.clone()
    assert tuner._pieces is None  # dropped after the pass
    tuner.values.grad = None
    original, tuner.piece = tuner.piece, lambda i, a, b: tuner.values[a:b]  # the per-parameter slices
    try:
        base.model(**batch, labels=labels).loss.backward()
    finally:
        tuner.piece = original
    assert torch.equal(tuner.values.grad, split_grad) and float(split_grad.abs().sum()) > 0
    with torch.no_grad():  # outside a pass, after an in-place change of the values: the weight follows it
        tuner.values.add_(1.0)
    name = tuner.names[-1]
    module = dict(base.model.named_modules())[name.rpartition(".")[0]]
    weight = getattr(module, name.rpartition(".")[2])
    pristine = dict(_fresh(tiny_model_dir).model.named_parameters())[name]
    want = pristine + tuner.values.detach()[tuner.offsets[-2]:tuner.offsets[-1]].view_as(pristine)
    assert torch.allclose(weight, want)
