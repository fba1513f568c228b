"""Decoders as base models: candidates per family, Conv1D's masked gradient, kind-independent masks, merged causal
LMs that generate what the wired model generates, and the one-line refusals."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from shared.architectures import block_matrix_names, ffn_kind, query_value_targets
from shared.config import RunConfig
from shared.knobs import ConfigError
from shared.masks import MaskError
from shared.methods import get_method
from shared.methods.mask import select_mask
from shared.model import PadTokenError, base_weights_digest, load_base_model
from shared.tuner import SparseTuner, _dense_masked_linear, _MaskedLinearFn, csr_pattern


def _pafi(base, density: float = 0.05) -> SparseTuner:
    cfg = RunConfig(method="pafi", mask_density=density)
    mask = select_mask(base.model, cfg, base_weights_digest(base.model, base.head_names))
    return SparseTuner(base.model, mask, base.head_names)


def test_the_candidates_are_the_blocks_projections(tiny_gpt2_dir, tiny_llama_dir):
    gpt2 = block_matrix_names(load_base_model(str(tiny_gpt2_dir), 2, 0).model)
    llama = block_matrix_names(load_base_model(str(tiny_llama_dir), 2, 0).model)
    assert {n.split(".h.0.")[1] for n in gpt2 if ".h.0." in n} == {
        "attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"}
    assert {n.split(".layers.0.")[1] for n in llama if ".layers.0." in n} == {
        f"self_attn.{p}_proj.weight" for p in "qkvo"} | {f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    assert len(gpt2) == 8 and len(llama) == 14  # 2 layers; no embeddings, norms, LM head or score head


def test_family_roles():
    assert ffn_kind("transformer.h.3.mlp.c_proj") == "output" and ffn_kind("transformer.h.3.attn.c_proj") is None
    assert ffn_kind("bert.encoder.layer.0.output.dense") == "output"
    assert ffn_kind("bert.encoder.layer.0.attention.output.dense") is None
    assert ffn_kind("model.layers.0.mlp.gate_proj") == "gate"


def test_lora_targets_per_family(tiny_model_dir, tiny_gpt2_dir, tiny_llama_dir):
    targets = [query_value_targets(load_base_model(str(d), 2, 0).model)
               for d in (tiny_model_dir, tiny_gpt2_dir, tiny_llama_dir)]
    assert targets == [["query", "value"], ["c_attn"], ["q_proj", "v_proj"]]


def test_the_masked_conv1d_gradient_equals_the_dense_gradient_at_the_mask():
    torch.manual_seed(0)
    conv = Conv1D(12, 8)  # nf=12 outputs, nx=8 inputs: weight (8, 12)
    idx = torch.sort(torch.randperm(96)[:17]).values
    x = torch.randn(3, 5, 8)
    x[0, 3:] = 0  # rows whose output gradient is zero are skipped: still exact
    vals = torch.randn(17, requires_grad=True)
    ref_vals = vals.detach().clone().requires_grad_(True)
    xs, xd = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    pattern = csr_pattern(tuple(conv.weight.shape), idx)
    y = _MaskedLinearFn.apply(xs, conv.weight, conv.bias, idx, pattern, vals, True)
    y_ref = _dense_masked_linear(xd, conv.weight, conv.bias, idx, ref_vals, True)
    weight = conv.weight.detach().clone()
    weight.view(-1)[idx] += ref_vals.detach()
    torch.testing.assert_close(y, x @ weight + conv.bias.detach())  # Conv1D's own formula on base + scatter
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    torch.testing.assert_close(vals.grad, ref_vals.grad)
    torch.testing.assert_close(xs.grad, xd.grad)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_merged_decoder_is_base_plus_scatter_and_predicts_as_wired(family, request, tmp_path):
    folder = str(request.getfixturevalue(f"tiny_{family}_dir"))
    base = load_base_model(folder, 2, 0)
    tuner = _pafi(base)
    values = torch.randn(tuner.k) * 0.1
    tuner.load(values)
    merged = tuner.merge(load_base_model(folder, 2, 0).model, values, tuner.head_state())
    fresh = dict(load_base_model(folder, 2, 0).model.named_parameters())
    params = dict(merged.named_parameters())
    for name, idx, start, stop in tuner.mask.items():
        expect = fresh[name].detach().clone().view(-1)
        expect[idx] += values[start:stop]
        assert torch.equal(params[name].detach().view(-1), expect), name
    batch = base.tokenizer(["a fine film", "dull and long, and long"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, base.model(**batch).logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_mask_does_not_depend_on_the_head_class(family, request):
    folder = str(request.getfixturevalue(f"tiny_{family}_dir"))
    classifier, lm = load_base_model(folder, 2, 0), load_base_model(folder, 2, 0, kind="causal-lm")
    assert lm.head_names == () and classifier.head_names == ("score.weight",)
    assert _pafi(classifier).fingerprint == _pafi(lm).fingerprint


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_merged_causal_lm_loads_in_transformers_and_generates_as_wired(family, request, tmp_path):
    folder = str(request.getfixturevalue(f"tiny_{family}_dir"))
    base = load_base_model(folder, 0, 0, kind="causal-lm")
    tuner = _pafi(base, density=0.2)
    values = torch.randn(tuner.k) * 0.5
    tuner.load(values)
    tuner.merge(load_base_model(folder, 0, 0, kind="causal-lm").model, values, {}).save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    prompt = base.tokenizer(["the film was"], return_tensors="pt")
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=base.tokenizer.pad_token_id)
    with torch.no_grad():
        wired = base.model.generate(**prompt, **kwargs)
        again = plain.generate(**prompt, **kwargs)
        untouched = load_base_model(folder, 0, 0, kind="causal-lm").model.generate(**prompt, **kwargs)
        torch.testing.assert_close(plain(**prompt).logits, base.model(**prompt).logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(wired, again)
    assert not torch.equal(plain(**prompt).logits, AutoModelForCausalLM.from_pretrained(folder)(**prompt).logits)
    assert untouched.shape == wired.shape


def test_bitfit_and_hiwi_on_biases_refuse_a_model_without_biases_in_one_line(tiny_llama_dir):
    base = load_base_model(str(tiny_llama_dir), 2, 0)
    digest = base_weights_digest(base.model, base.head_names)
    with pytest.raises(MaskError, match="use method='pafi'") as bitfit:
        get_method("bitfit").build(base, RunConfig(method="bitfit"), digest)
    with pytest.raises(ConfigError, match="hiwi-target='weight'") as hiwi:
        get_method("hiwi").build(base, RunConfig(method="hiwi"), digest)
    assert "\n" not in str(bitfit.value) and "\n" not in str(hiwi.value)


def test_dsee_head_removal_is_refused_on_a_decoder(tiny_gpt2_dir):
    base = load_base_model(str(tiny_gpt2_dir), 2, 0)
    cfg = RunConfig(method="dsee", options={"dsee-prune-heads": 1})
    with pytest.raises(ConfigError, match="dsee-prune-heads=0"):
        get_method("dsee").build(base, cfg, base_weights_digest(base.model, base.head_names))


def test_the_pad_token_comes_from_eos_and_a_tokenizer_with_neither_is_refused(tiny_gpt2_dir, tmp_path):
    base = load_base_model(str(tiny_gpt2_dir), 2, 0)
    assert base.tokenizer.pad_token == base.tokenizer.eos_token
    assert base.model.config.pad_token_id == base.tokenizer.eos_token_id
    folder = tmp_path / "no-eos"
    shutil.copytree(tiny_gpt2_dir, folder)
    base.tokenizer.pad_token, base.tokenizer.eos_token = None, None
    base.tokenizer.save_pretrained(folder)
    (folder / "model.safetensors").unlink()  # refused before the weights are read
    with pytest.raises(PadTokenError, match="neither a pad token nor an eos token") as err:
        load_base_model(str(folder), 2, 0)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_tuners_sparse_gradient_equals_its_dense_reference_on_a_decoder(family, request):
    base = load_base_model(str(request.getfixturevalue(f"tiny_{family}_dir")), 2, 0)
    tuner = _pafi(base)
    tuner.load(torch.randn(tuner.k) * 0.1)
    batch = base.tokenizer(["a fine film", "dull and long, and long"], return_tensors="pt", padding=True)
    grads = []
    for sparse in (True, False):
        tuner.sparse_grad, tuner.values.grad = sparse, None
        base.model(**batch, labels=torch.tensor([0, 1])).loss.backward()
        grads.append(tuner.values.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
