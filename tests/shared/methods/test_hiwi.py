"""HiWi tuner on the tiny BERT: the merged model equals the adapter model and is the base architecture."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from shared.config import ConfigError
from shared.model import base_weights_digest, load_base_model
from shared.runtime import build_runtime
from shared.methods.dsee.tuner import DseeTuner
from shared.methods.hiwi.tuner import TRUST, Adapter, HiwiTuner, make_hiwi_tuner
from shared.methods.hiwi.final import apply_hiwi_artifact


def _cfg(tiny_cfg, target: str = "bias", width: int = 4):
    return tiny_cfg.replace(method="hiwi", options={"hiwi-target": target, "hiwi-bottleneck": width})


def _tuner(cfg) -> HiwiTuner:
    base = load_base_model(cfg.model, 2, cfg.seed)
    return make_hiwi_tuner(base, cfg, base_weights_digest(base.model, base.head_names))


def _ids() -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 5000, (3, 12), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _values(tuner: HiwiTuner) -> torch.Tensor:
    return tuner.initial_values() + torch.randn(tuner.k, generator=torch.Generator().manual_seed(5))


def _fresh(cfg):
    return load_base_model(cfg.model, 2, cfg.seed).model


@pytest.mark.parametrize("target", ["bias", "weight"])
def test_merged_model_equals_adapter_model_with_base_architecture(tiny_cfg, target):
    cfg = _cfg(tiny_cfg, target)
    tuner = _tuner(cfg)
    values = _values(tuner)
    tuner.load(values)
    with torch.no_grad():
        adapted = tuner.base.model(**_ids()).logits
    base = _fresh(cfg)
    merged = tuner.merge(_fresh(cfg), values, tuner.head_state())
    with torch.no_grad():
        assert torch.allclose(merged(**_ids()).logits, adapted, atol=1e-6)
        assert not torch.allclose(merged(**_ids()).logits, base(**_ids()).logits, atol=1e-4)
    assert type(merged) is type(base)
    assert {n: p.shape for n, p in merged.named_parameters()} == {n: p.shape for n, p in base.named_parameters()}
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in base.parameters())
    changed = {n for (n, p), q in zip(merged.named_parameters(), base.parameters()) if not torch.equal(p, q)}
    assert changed <= set(tuner.targets) | set(tuner.base.head_names)
    assert set(tuner.targets) <= changed


def test_adapter_is_shared_and_starts_at_zero(tiny_cfg):
    cfg = _cfg(tiny_cfg, width=4)
    tuner = _tuner(cfg)
    # one adapter per FFN kind (intermediate d=64, output d=32), shared by both layers
    assert {k: a.dim for k, a in tuner.adapters.items()} == {"intermediate": 64, "output": 32}
    assert tuner.k == sum(2 * d * 4 + 4 + d for d in (64, 32))
    assert len(tuner.targets) == 4 and all(n.endswith(".bias") for n in tuner.targets)
    tuner.load(tuner.initial_values())
    with torch.no_grad():
        assert torch.equal(tuner.base.model(**_ids()).logits, _fresh(cfg)(**_ids()).logits)


def test_gradient_reaches_the_adapter_only(tiny_cfg):
    tuner = _tuner(_cfg(tiny_cfg))
    tuner.load(_values(tuner))
    params = tuner.trainable()
    tuner.base.model(**_ids(), labels=torch.tensor([0, 1, 0])).loss.backward()
    assert params[0].grad is not None and params[0].grad.abs().sum() > 0
    assert all(p.grad is None for n, p in tuner.base.model.named_parameters()
               if p is not params[0] and n not in tuner.base.head_names)
    for p in params:
        p.grad = None


def test_artifact_holds_new_biases_only_and_rebuilds_the_model(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg)
    tuner = _tuner(cfg)
    values = _values(tuner)
    merged = tuner.merge(_fresh(cfg), values, tuner.head_state())
    tuner.save_artifact(tmp_path, values, tuner.head_state(), cfg, tuner.base.source)
    with safe_open(str(tmp_path / "delta.safetensors"), framework="pt") as fh:
        keys = set(fh.keys())
    assert keys == set(tuner.targets) | {f"head.{n}" for n in tuner.base.head_names}
    rebuilt = apply_hiwi_artifact(tmp_path / "delta.safetensors", _fresh(cfg))
    with torch.no_grad():
        assert torch.equal(rebuilt(**_ids()).logits, merged(**_ids()).logits)


def test_finalize_reports_size_and_speed(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg)
    tuner = _tuner(cfg)
    values = _values(tuner)
    merged = tuner.merge(_fresh(cfg), values, tuner.head_state())
    tuner.save_artifact(tmp_path, values, tuner.head_state(), cfg, tuner.base.source)
    report = tuner.finalize(merged, values, lambda m: 0.75, tmp_path)["hiwi"]
    assert report["same_architecture_as_base"] is True
    assert report["num_params_merged"] == report["num_params_base"]
    assert report["stored_entries"] == 2 * (64 + 32)
    assert report["stored_fraction_of_model"] == pytest.approx(192 / report["num_params_base"])
    assert report["artifact_bytes"] > 192 * 4
    assert set(report["forward_seconds"]) == {"base", "merged", "adapter_applied"}
    assert report["accuracy_merged"] == 0.75


def test_bad_target_is_a_config_error(tiny_cfg):
    with pytest.raises(ConfigError, match="hiwi-target"):
        _tuner(_cfg(tiny_cfg, target="gamma"))


def test_runtime_registry_builds_both_methods(tiny_cfg):
    assert isinstance(build_runtime(_cfg(tiny_cfg)).tuner, HiwiTuner)
    dsee = tiny_cfg.replace(method="dsee", options={"dsee-prune-heads": 1, "dsee-rank": 2})
    assert isinstance(build_runtime(dsee).tuner, DseeTuner)


def _push(adapter: Adapter, b: torch.Tensor, init: torch.Tensor, steps: int = 10, lr: float = 5e-3) -> float:
    """|f(b)| / |b| after ``steps`` fresh-Adam steps that reward growth along a fixed direction.

    A stand-in for a skewed client: every step pushes the same fixed inputs the same way.
    """
    v = init.clone().requires_grad_(True)
    direction = torch.randn(b.shape, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW([v], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss = -(adapter.apply(v, b) * direction).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(adapter.apply(v, b).norm() / b.norm())


def test_normalised_adapter_bounds_the_drift_that_collapsed_the_federation():
    # MiniLM-sized intermediate biases: 6 layers x 1536, rms about 0.16
    d, m = 1536, 16
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(6, d, generator=gen) * 0.16
    unit = torch.rand(m * d, generator=gen) * 2 - 1
    plain, normed = Adapter("intermediate", d, m, 0), Adapter("intermediate", d, m, 0, float(b.pow(2).mean().sqrt()))
    init_plain, init_normed = torch.zeros(plain.size), torch.zeros(normed.size)
    init_plain[:m * d], init_normed[:m * d] = unit / math.sqrt(d), unit
    # same function at the start (f = 0) and the same effective W_down
    assert torch.equal(plain.apply(init_plain, b), normed.apply(init_normed, b))
    grown_plain, grown_normed = _push(plain, b, init_plain), _push(normed, b, init_normed)
    assert grown_normed < 1.0
    assert grown_plain > 10 * grown_normed


def test_normalised_adapter_scales_with_the_tensors_it_adapts(tiny_cfg):
    tuner = _tuner(_cfg(tiny_cfg))
    values = _values(tuner)
    a = tuner.adapters["intermediate"]
    x = torch.randn(2, a.dim, generator=torch.Generator().manual_seed(3))
    scaled = Adapter(a.kind, a.dim, a.width, a.start, 4.0 * a.scale)
    assert torch.allclose(scaled.apply(values, 4.0 * x), 4.0 * a.apply(values, x), atol=1e-5)
    # a trust region: whatever the values, no entry moves by more than TRUST · s
    huge = 1e3 * torch.randn(tuner.k, generator=torch.Generator().manual_seed(4))
    assert float(a.apply(huge, x).abs().max()) <= TRUST * a.scale * (1 + 1e-6)
    plain = _tuner(tiny_cfg.replace(method="hiwi", options={"hiwi-bottleneck": 4, "hiwi-normalize": False}))
    assert plain.fingerprint != tuner.fingerprint and plain.adapters["intermediate"].scale == 0.0
    with pytest.raises(ConfigError, match="hiwi-normalize"):
        _tuner(tiny_cfg.replace(method="hiwi", options={"hiwi-normalize": "yes"}))
