"""gather/scatter/merge: exact, and a bad vector never touches the model."""

from __future__ import annotations

import pytest
import torch

from shared.config import RunConfig
from shared.methods.mask import select_mask
from shared.model import base_weights_digest, load_base_model
from shared.sparse import MergeError, gather_values, merge_into, scatter_values


@pytest.fixture()
def setup(tiny_model_dir):
    base = load_base_model(str(tiny_model_dir), 2, seed=0)
    mask = select_mask(base.model, RunConfig(mask_density=0.05), base_weights_digest(base.model, base.head_names))
    return base, mask


def test_gather_scatter_round_trip(setup):
    base, mask = setup
    params = dict(base.model.named_parameters())
    v = torch.randn(mask.k)
    scatter_values(params, mask, v)
    assert torch.equal(gather_values(params, mask), v)


def test_merge_changes_exactly_the_masked_entries(setup):
    base, mask = setup
    before = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    params = dict(base.model.named_parameters())
    b0 = gather_values(params, mask)
    delta = torch.linspace(-1, 1, mask.k)
    head = {n: torch.full_like(p, 0.5) for n, p in base.head_state().items()}
    merge_into(base.model, mask, b0, delta, head)
    positions = dict((n, i) for n, i, _, _ in mask.items())
    for name, p in base.model.named_parameters():
        diff = (p.detach() - before[name]).reshape(-1)
        if name in head:
            assert torch.equal(p.detach(), head[name])
        elif name in positions:
            changed = torch.zeros_like(diff, dtype=torch.bool)
            changed[positions[name]] = True
            assert torch.all(diff[~changed] == 0)
        else:
            assert torch.all(diff == 0), name
    assert torch.equal(gather_values(params, mask), b0 + delta)


@pytest.mark.parametrize("bad", ["nan", "short", "int"])
def test_merge_rejects_bad_vectors_without_touching_weights(setup, bad):
    base, mask = setup
    before = {n: p.detach().clone() for n, p in base.model.named_parameters()}
    delta = {"nan": torch.full((mask.k,), float("nan")), "short": torch.zeros(mask.k - 1),
             "int": torch.zeros(mask.k, dtype=torch.int32)}[bad]
    b0 = gather_values(dict(base.model.named_parameters()), mask)
    with pytest.raises(MergeError):
        merge_into(base.model, mask, b0, delta)
    assert all(torch.equal(p, before[n]) for n, p in base.model.named_parameters())
