"""DSEE tuner on the tiny BERT: positions from the base weights, exact merge, pruning, artifact."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from shared.config import ConfigError
from shared.masks import block_matrix_names
from shared.model import base_weights_digest, load_base_model
from shared.methods.dsee.tuner import DseeTuner, make_dsee_tuner
from shared.methods.dsee.final import prune_final, read_dsee_values
from shared.methods.dsee.decompose import sparse_positions
from shared.methods.dsee.prune import (PruneError, head_scores, lowest_heads, magnitude_prune, remove_heads,
                                 zero_fraction, zero_heads)

OPTS = {"dsee-rank": 4, "dsee-alpha": 8.0, "dsee-sparse-per-matrix": 16, "dsee-prune-heads": 1}


@pytest.fixture()
def dsee_cfg(tiny_cfg):
    return tiny_cfg.replace(method="dsee", options=dict(OPTS))


def _tuner(cfg) -> DseeTuner:
    base = load_base_model(cfg.model, 2, cfg.seed)
    return make_dsee_tuner(base, cfg, base_weights_digest(base.model, base.head_names))


def _ids() -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 5000, (3, 12), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _random_values(tuner: DseeTuner, seed: int = 1) -> torch.Tensor:
    return tuner.initial_values() + 0.05 * torch.randn(tuner.k, generator=torch.Generator().manual_seed(seed))


def test_positions_are_deterministic_from_the_base_weights(dsee_cfg):
    a, b = _tuner(dsee_cfg), _tuner(dsee_cfg)
    assert a.fingerprint == b.fingerprint and a.k == b.k
    assert all(torch.equal(x.positions, y.positions) for x, y in zip(a.targets, b.targets))
    assert [t.name.split(".")[-2] for t in a.targets] == ["query", "value"] * 2
    w = dict(a.base.model.named_parameters())[a.targets[0].name]
    assert torch.equal(a.targets[0].positions, sparse_positions(w, 4, 16))


def test_fingerprint_follows_base_weights_and_knobs(dsee_cfg):
    ref = _tuner(dsee_cfg)
    assert _tuner(dsee_cfg.replace(options={**OPTS, "dsee-rank": 2})).fingerprint != ref.fingerprint
    base = load_base_model(dsee_cfg.model, 2, dsee_cfg.seed)
    with torch.no_grad():
        base.model.bert.encoder.layer[0].attention.self.query.weight[0, 0] += 1.0
    other = make_dsee_tuner(base, dsee_cfg, base_weights_digest(base.model, base.head_names))
    assert other.fingerprint != ref.fingerprint


def test_layout_and_initial_values_leave_the_base_unchanged(dsee_cfg):
    tuner = _tuner(dsee_cfg)
    expected_k = sum(4 * t.shape[1] + t.shape[0] * 4 + 16 for t in tuner.targets)
    assert tuner.k == expected_k and tuner.num_trainable == expected_k + tuner.head_size
    v0 = tuner.initial_values()
    assert torch.equal(v0, tuner.initial_values())  # seeded: every server starts alike
    fresh = load_base_model(dsee_cfg.model, 2, dsee_cfg.seed).model
    tuner.load(v0)
    with torch.no_grad():
        assert torch.equal(tuner.base.model(**_ids()).logits, fresh(**_ids()).logits)


def test_low_rank_plus_sparse_merges_exactly(dsee_cfg):
    tuner = _tuner(dsee_cfg)
    values = _random_values(tuner)
    tuner.load(values)
    with torch.no_grad():
        wrapped = tuner.base.model(**_ids()).logits
    fresh = load_base_model(dsee_cfg.model, 2, dsee_cfg.seed).model
    base_w = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    merged = tuner.merge(fresh, values, tuner.head_state())
    with torch.no_grad():
        assert torch.allclose(merged(**_ids()).logits, wrapped, atol=1e-5)
    for t in tuner.targets:  # ΔW written = (B·A + S)·α/r, S only at the positions
        a, b, s = t.factors(values)
        expect = b @ a
        expect.view(-1)[t.positions] += s
        got = dict(merged.named_parameters())[t.name] - base_w[t.name]
        assert torch.allclose(got, expect * 2.0, atol=1e-6)  # α/r = 8/4


def test_bad_values_leave_the_model_untouched(dsee_cfg):
    tuner = _tuner(dsee_cfg)
    fresh = load_base_model(dsee_cfg.model, 2, dsee_cfg.seed).model
    before = [p.detach().clone() for p in fresh.parameters()]
    bad = _random_values(tuner)
    bad[-1] = float("nan")
    with pytest.raises(ValueError):
        tuner.merge(fresh, bad, tuner.head_state())
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters()))


def test_training_reaches_only_the_value_vector(dsee_cfg):
    tuner = _tuner(dsee_cfg)
    tuner.load(_random_values(tuner))
    params = tuner.trainable()
    out = tuner.base.model(**_ids(), labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    assert params[0].grad is not None and torch.isfinite(params[0].grad).all()
    s_grad = torch.cat([params[0].grad[t.s_slice] for t in tuner.targets])
    assert s_grad.abs().sum() > 0
    assert all(p.grad is None for n, p in tuner.base.model.named_parameters() if n not in tuner.base.head_names)
    params[0].grad = None


def test_magnitude_pruning_reaches_the_requested_sparsity(tiny_model_dir):
    model = load_base_model(str(tiny_model_dir), 2, 0).model
    names = block_matrix_names(model)
    total = sum(dict(model.named_parameters())[n].numel() for n in names)
    threshold_before = None
    for ratio in (0.2, 0.5):
        got = magnitude_prune(model, names, ratio)
        assert abs(got - ratio) <= 1.0 / total
        assert zero_fraction(model, names) == got
        kept = torch.cat([dict(model.named_parameters())[n].flatten() for n in names])
        smallest_kept = kept[kept != 0].abs().min()
        assert threshold_before is None or smallest_kept >= threshold_before
        threshold_before = smallest_kept
    assert all(not hasattr(m, "weight_orig") for m in model.modules())  # pruning baked in


def test_head_scores_and_choice():
    deltas = {"bert.encoder.layer.0.attention.self.query.weight": torch.tensor([[1.0], [1.0], [5.0], [5.0]]),
              "bert.encoder.layer.0.attention.self.value.weight": torch.tensor([[0.5], [0.0], [0.0], [0.0]]),
              "bert.encoder.layer.1.attention.self.query.weight": torch.tensor([[9.0], [9.0], [0.0], [1.0]])}
    scores = head_scores(deltas, num_heads=2)
    assert scores[0].tolist() == [2.5, 10.0] and scores[1].tolist() == [18.0, 1.0]
    assert lowest_heads(scores, 1) == {0: [0], 1: [1]}
    with pytest.raises(PruneError):
        lowest_heads(scores, 2)


def test_zeroed_heads_equal_removed_heads_and_round_trip(tiny_model_dir, tmp_path):
    model = load_base_model(str(tiny_model_dir), 2, 0).model
    zero_heads(model, {0: [1], 1: [0]})
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dsee_pruned_heads"] == {"0": [1], "1": [0]}
    small = remove_heads(loaded)  # heads from the config
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert small.bert.encoder.layer[0].attention.self.query.out_features == 16
    model.eval(), small.eval()
    with torch.no_grad():
        assert torch.allclose(model(**_ids()).logits, small(**_ids()).logits, atol=1e-6)


def test_prune_final_and_artifact(dsee_cfg, tmp_path):
    tuner = _tuner(dsee_cfg)
    values = _random_values(tuner)
    merged = tuner.merge(load_base_model(dsee_cfg.model, 2, dsee_cfg.seed).model, values, tuner.head_state())
    pruned, heads = prune_final(tuner, merged, values)
    assert set(heads) == {0, 1} and all(len(h) == 1 for h in heads.values())
    assert zero_fraction(pruned, block_matrix_names(pruned)) >= 0.2
    assert zero_fraction(merged, block_matrix_names(merged)) == 0.0  # the merged model is untouched
    tuner.save_artifact(tmp_path, values, tuner.head_state(), dsee_cfg, tuner.base.source)
    got, head = read_dsee_values(tmp_path / "delta.safetensors", _tuner(dsee_cfg))
    assert torch.equal(got, values) and set(head) == set(tuner.base.head_names)


def test_finalize_reports_accuracy_sparsity_and_cost(dsee_cfg, tmp_path):
    tuner = _tuner(dsee_cfg)
    values = _random_values(tuner)
    merged = tuner.merge(load_base_model(dsee_cfg.model, 2, dsee_cfg.seed).model, values, tuner.head_state())
    seen = []
    report = tuner.finalize(merged, values, lambda m: seen.append(m) or 0.5, tmp_path)["dsee"]
    assert len(seen) == 2 and report["accuracy_before_pruning"] == 0.5
    assert report["encoder_matrix_sparsity"] >= 0.2 and report["heads_removed_max_logit_gap"] < 1e-5
    assert report["after"]["flops_dense"] < report["before"]["flops_dense"]
    assert report["flops_saved_sparse_aware"] > report["flops_saved_dense"] > 0
    assert report["before"]["forward_seconds"] > 0 and report["speedup"] > 0
    reloaded = remove_heads(AutoModelForSequenceClassification.from_pretrained(tmp_path / "model-pruned"))
    assert sum(p.numel() for p in reloaded.parameters()) == report["after"]["params"]


def test_too_many_heads_is_a_config_error(dsee_cfg):
    with pytest.raises(ConfigError, match="dsee-prune-heads"):
        _tuner(dsee_cfg.replace(options={**OPTS, "dsee-prune-heads": 2}))
