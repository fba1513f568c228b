"""Each mask selector's defining property, on the tiny BERT (magnitude, random, bitfit)."""

from __future__ import annotations

import pytest
import torch

from shared.config import RunConfig
from shared.masks import block_matrix_names
from shared.methods.mask import select_mask
from shared.model import base_weights_digest, load_base_model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    base = load_base_model(str(tiny_model_dir), 2, 0)
    return base, base_weights_digest(base.model, base.head_names)


def _selected_and_rest(model, mask):
    """|w| of the selected candidate entries and of the unselected ones."""
    params = dict(model.named_parameters())
    chosen, rest = [], []
    by_name = dict(zip(mask.names, mask.indices))
    for name in block_matrix_names(model):
        flat = params[name].detach().abs().reshape(-1)
        keep = torch.zeros(flat.numel(), dtype=torch.bool)
        if name in by_name:
            keep[by_name[name]] = True
        chosen.append(flat[keep])
        rest.append(flat[~keep])
    return torch.cat(chosen), torch.cat(rest)


def test_magnitude_keeps_the_largest_entries(tiny):
    base, digest = tiny
    mask = select_mask(base.model, RunConfig(method="magnitude", mask_density=0.05), digest)
    chosen, rest = _selected_and_rest(base.model, mask)
    total = chosen.numel() + rest.numel()
    assert mask.k == int(0.05 * total)
    assert float(chosen.min()) >= float(rest.max())


def test_magnitude_and_pafi_are_opposite_ends(tiny):
    base, digest = tiny
    pafi = select_mask(base.model, RunConfig(method="pafi", mask_density=0.05), digest)
    chosen, rest = _selected_and_rest(base.model, pafi)
    assert float(chosen.max()) <= float(rest.min())


def test_random_is_reproducible_from_its_seed_and_differs_between_seeds(tiny):
    base, digest = tiny
    cfg = RunConfig(method="random", mask_density=0.05, options={"mask-seed": 3})
    a, b = select_mask(base.model, cfg, digest), select_mask(base.model, cfg, digest)
    c = select_mask(base.model, cfg.replace(options={"mask-seed": 4}), digest)
    assert a.fingerprint == b.fingerprint
    assert all(torch.equal(x, y) for x, y in zip(a.indices, b.indices))
    assert a.fingerprint != c.fingerprint
    pos = lambda m: {(n, int(i)) for n, idx in zip(m.names, m.indices) for i in idx}  # noqa: E731
    assert pos(a) != pos(c)
    pafi = select_mask(base.model, RunConfig(method="pafi", mask_density=0.05), digest)
    assert a.k == c.k == pafi.k  # same budget as PaFi


def test_random_default_seed_is_zero_and_part_of_the_fingerprint(tiny):
    base, digest = tiny
    implicit = select_mask(base.model, RunConfig(method="random", mask_density=0.05), digest)
    explicit = select_mask(base.model, RunConfig(method="random", mask_density=0.05, options={"mask-seed": 0}), digest)
    assert implicit.fingerprint == explicit.fingerprint


def test_random_per_matrix_takes_the_same_fraction_of_each_matrix(tiny):
    base, digest = tiny
    mask = select_mask(base.model, RunConfig(method="random", mask_density=0.1, mask_scope="per-matrix"), digest)
    params = dict(base.model.named_parameters())
    assert set(mask.names) == set(block_matrix_names(base.model))
    for name, idx in zip(mask.names, mask.indices):
        assert idx.numel() == int(0.1 * params[name].numel())


def test_bitfit_selects_exactly_the_bias_terms(tiny):
    base, digest = tiny
    mask = select_mask(base.model, RunConfig(method="bitfit", mask_density=0.005), digest)
    params = dict(base.model.named_parameters())
    biases = [n for n in params if n.endswith("bias") and n not in base.head_names]
    assert list(mask.names) == biases
    assert mask.k == sum(params[n].numel() for n in biases)
    for name, idx in zip(mask.names, mask.indices):
        assert torch.equal(idx, torch.arange(params[name].numel()))
    assert not set(mask.names) & set(base.head_names)


def test_random_delta_artifact_rebuilds_its_mask_from_the_recorded_seed(tiny_model_dir, tmp_path):
    from shared.artifacts import save_delta
    from shared.methods.mask import apply_delta
    from shared.sparse import gather_values

    base = load_base_model(str(tiny_model_dir), 2, 0)
    digest = base_weights_digest(base.model, base.head_names)
    cfg = RunConfig(method="random", mask_density=0.05, seed=0, options={"mask-seed": 3})
    mask = select_mask(base.model, cfg, digest)
    values = torch.randn(mask.k) * 0.1
    path = save_delta(tmp_path / "delta.safetensors", mask, values, {}, cfg, str(tiny_model_dir))
    target = load_base_model(str(tiny_model_dir), 2, 0)
    merged = apply_delta(path, target)  # options come back as text; the seed must still rebuild the mask
    got = gather_values(dict(merged.named_parameters()), mask)
    want = gather_values(dict(load_base_model(str(tiny_model_dir), 2, 0).model.named_parameters()), mask) + values
    assert torch.allclose(got, want)
