"""PaFi mask: exact k, smallest-magnitude property, determinism across processes, fingerprint."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from shared.config import ConfigError, RunConfig
from shared.masks import MaskError, block_matrix_names
from shared.methods.mask import select_mask
from shared.model import base_weights_digest, load_base_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    base = load_base_model(str(tiny_model_dir), 2, seed=0)
    return base, base_weights_digest(base.model, base.head_names)


def _cands(model):
    params = dict(model.named_parameters())
    return {n: params[n].detach() for n in block_matrix_names(model)}


def test_candidates_are_encoder_attention_and_ffn_matrices(tiny):
    names = block_matrix_names(tiny[0].model)
    assert names and all(".encoder.layer." in n and n.endswith("weight") for n in names)
    assert not any("embeddings" in n or "LayerNorm" in n or "classifier" in n or "pooler" in n for n in names)
    assert len(names) == 6 * 2  # q, k, v, attn-out, intermediate, output per layer; 2 layers


def test_k_is_exact_and_entries_are_the_smallest(tiny):
    base, digest = tiny
    cfg = RunConfig(mask_density=0.01)
    mask = select_mask(base.model, cfg, digest)
    cands = _cands(base.model)
    total = sum(t.numel() for t in cands.values())
    assert mask.k == int(0.01 * total)
    params = dict(base.model.named_parameters())
    chosen = torch.cat([params[n].detach().reshape(-1)[i].abs() for n, i, _, _ in mask.items()])
    chosen_set = {(n, int(j)) for n, i, _, _ in mask.items() for j in i}
    others = torch.cat([t.reshape(-1).abs()[[j for j in range(t.numel()) if (n, j) not in chosen_set]]
                        for n, t in cands.items()])
    assert float(chosen.max()) <= float(others.min())
    assert set(mask.names) <= set(cands)
    for idx in mask.indices:
        assert torch.equal(idx, torch.unique(idx))


def test_per_matrix_scope_takes_the_same_fraction_everywhere(tiny):
    base, digest = tiny
    mask = select_mask(base.model, RunConfig(mask_density=0.02, mask_scope="per-matrix"), digest)
    cands = _cands(base.model)
    for name, idx, _, _ in mask.items():
        assert idx.numel() == int(0.02 * cands[name].numel())
        w = cands[name].reshape(-1).abs()
        rest = torch.ones_like(w, dtype=torch.bool)
        rest[idx] = False
        assert float(w[idx].max()) <= float(w[rest].min())


def test_fingerprint_depends_on_method_density_and_weights(tiny, tiny_model_dir):
    base, digest = tiny
    a = select_mask(base.model, RunConfig(mask_density=0.01), digest)
    b = select_mask(base.model, RunConfig(mask_density=0.02), digest)
    c = select_mask(base.model, RunConfig(mask_density=0.01, method="magnitude"), digest)
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    other = load_base_model(str(tiny_model_dir), 2, seed=0)
    with torch.no_grad():
        dict(other.model.named_parameters())[a.names[0]].view(-1)[0] += 1.0
    d = select_mask(other.model, RunConfig(mask_density=0.01), base_weights_digest(other.model, other.head_names))
    assert d.fingerprint != a.fingerprint


def test_head_init_is_the_same_on_every_node(tiny_model_dir):
    a = load_base_model(str(tiny_model_dir), 3, seed=7).head_state()
    b = load_base_model(str(tiny_model_dir), 3, seed=7).head_state()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_method_and_empty_mask_fail_clearly(tiny):
    base, digest = tiny
    with pytest.raises(ConfigError, match="'method' must be one of pafi, "):
        select_mask(base.model, RunConfig(method="nope"), digest)
    with pytest.raises(MaskError, match="does not choose its entries with a mask selector"):
        select_mask(base.model, RunConfig(method="lora"), digest)
    with pytest.raises(MaskError, match="raise mask-density"):
        select_mask(base.model, RunConfig(mask_density=1e-9), digest)


_FP_SCRIPT = """
import sys
from shared.config import RunConfig
from shared.methods.mask import select_mask
from shared.model import base_weights_digest, load_base_model
base = load_base_model(sys.argv[1], 2, seed=0)
print(select_mask(base.model, RunConfig(), base_weights_digest(base.model, base.head_names)).fingerprint)
"""


def test_two_fresh_processes_derive_the_same_mask_on_minilm(repo_root):
    """The real default: bundled MiniLM at density 0.005, in two separate interpreters."""
    out = [subprocess.run([sys.executable, "-c", _FP_SCRIPT, ""], cwd=repo_root, capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1] for _ in range(2)]
    assert out[0] == out[1] and len(out[0]) == 64
