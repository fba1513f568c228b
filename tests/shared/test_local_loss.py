"""The class-balanced local loss: weights from a client's own labels, and what it does to a skewed client's update."""

from __future__ import annotations

import pytest
import torch

from shared.data import Encoded, encode, load_splits
from shared.model import load_base_model
from shared.tasks import get_task
from shared.training import balanced_weights, evaluate, train_local


def test_weights_give_every_class_a_client_holds_the_same_mass():
    labels = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0])
    w = balanced_weights(labels, 2)
    assert w.tolist() == pytest.approx([2.0, 2 / 3])
    assert float(w[0] * 2) == pytest.approx(float(w[1] * 6))  # equal total weight per class
    assert balanced_weights(torch.tensor([2, 2, 0]), 4).tolist() == pytest.approx([1.5, 0.0, 0.75, 0.0])
    assert balanced_weights(torch.ones(5, dtype=torch.long), 2).tolist() == [0.0, 1.0]  # one class: plain CE
    assert balanced_weights(torch.tensor([0, 1, 0, 1]), 2).tolist() == [1.0, 1.0]


def _rows(tiny_model_dir, sst2_dir):
    base = load_base_model(str(tiny_model_dir), 2, seed=0)
    train = load_splits("sst2", str(sst2_dir))["train"]
    enc = encode(train, base.tokenizer, 32, limit=600)
    pos, neg = (enc.labels == 1).nonzero().flatten(), (enc.labels == 0).nonzero().flatten()
    skewed = torch.cat([pos[:180], neg[:20]])  # 90 % positive, as a Dirichlet(0.5) client can be
    held = torch.cat([pos[200:264], neg[40:104]])  # balanced held-out rows
    take = lambda idx: Encoded(enc.input_ids[idx], enc.attention_mask[idx], enc.labels[idx])  # noqa: E731
    return take(skewed), take(held)


def _mean_margin_after(tiny_model_dir, data: Encoded, held: Encoded, loss: str) -> float:
    base = load_base_model(str(tiny_model_dir), 2, seed=0)
    head = [p for n, p in base.model.named_parameters() if n.startswith("classifier")]
    for p in base.model.parameters():
        p.requires_grad_(False)
    for p in head:
        p.requires_grad_(True)
    train_local(base.model, [{"params": head, "lr": 1e-2}], data, 15, 16, seed=1, loss=loss)
    base.model.eval()
    with torch.no_grad():
        b = held.batch(torch.arange(len(held)))
        b.pop("labels")
        logits = base.model(**b).logits
        return float((logits[:, 1] - logits[:, 0]).mean())


def test_a_skewed_client_pulls_a_fresh_head_to_its_class_with_ce_and_not_with_the_balanced_loss(tiny_model_dir,
                                                                                                  sst2_dir):
    skewed, held = _rows(tiny_model_dir, sst2_dir)
    base = load_base_model(str(tiny_model_dir), 2, seed=0).model.eval()
    with torch.no_grad():
        b = held.batch(torch.arange(len(held)))
        b.pop("labels")
        start = float((base(**b).logits @ torch.tensor([-1.0, 1.0])).mean())
    ce = _mean_margin_after(tiny_model_dir, skewed, held, "ce") - start
    balanced = _mean_margin_after(tiny_model_dir, skewed, held, "balanced") - start
    print(f"\nmean margin (positive - negative logit) of balanced held-out rows moved by 15 head steps on a "
          f"90 %-positive client: ce {ce:+.3f}, balanced {balanced:+.3f}")
    assert ce > 0.1 and abs(balanced) < ce / 3


def test_on_a_balanced_client_the_balanced_loss_is_the_plain_one(tiny_model_dir, sst2_dir):
    _, held = _rows(tiny_model_dir, sst2_dir)  # 64 + 64 rows: every weight is 1
    results = []
    for loss in ("ce", "balanced"):
        base = load_base_model(str(tiny_model_dir), 2, seed=0)
        params = [p.requires_grad_(True) for p in base.model.parameters()]
        train_local(base.model, [{"params": params, "lr": 1e-3}], held, 4, 32, seed=2, loss=loss)
        results.append(torch.cat([p.detach().flatten() for p in params]))
        assert evaluate(base.model, held, get_task("sst2")).loss > 0
    assert torch.allclose(results[0], results[1], rtol=0, atol=1e-6)


def test_an_unknown_loss_is_refused(tiny_model_dir, sst2_dir):
    skewed, _ = _rows(tiny_model_dir, sst2_dir)
    base = load_base_model(str(tiny_model_dir), 2, seed=0)
    with pytest.raises(ValueError, match="local loss must be one of ce, balanced"):
        train_local(base.model, [{"params": list(base.model.parameters()), "lr": 1e-3}], skewed, 1, 8, seed=0,
                    loss="focal")


def test_the_weights_are_sized_by_the_model_not_by_the_client_s_largest_label(tiny_model_dir, sst2_dir):
    skewed, _ = _rows(tiny_model_dir, sst2_dir)
    neg = (skewed.labels == 0).nonzero().flatten()
    only_neg = Encoded(skewed.input_ids[neg], skewed.attention_mask[neg], skewed.labels[neg])  # never sees class 1
    base = load_base_model(str(tiny_model_dir), 2, seed=0)
    head = [p.requires_grad_(True) for n, p in base.model.named_parameters() if n.startswith("classifier")]
    before = [p.detach().clone() for p in head]
    result = train_local(base.model, [{"params": head, "lr": 1e-2}], only_neg, 2, 8, seed=0, loss="balanced")
    assert result.loss > 0 and any(not torch.equal(a, b.detach()) for a, b in zip(before, head))


def test_a_label_the_model_has_no_logit_for_is_refused_before_a_step(tiny_model_dir, sst2_dir):
    skewed, _ = _rows(tiny_model_dir, sst2_dir)
    bad = Encoded(skewed.input_ids, skewed.attention_mask, skewed.labels.clone())
    bad.labels[0] = 2
    base = load_base_model(str(tiny_model_dir), 2, seed=0)
    params = list(base.model.parameters())
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match="a label is 2 but the model has 2 classes; set the model's num_labels"):
        train_local(base.model, [{"params": params, "lr": 1e-3}], bad, 1, 8, seed=0, loss="balanced")
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    with pytest.raises(ValueError, match="a label is 3 but there are 2 classes"):
        balanced_weights(torch.tensor([0, 3]), 2)


def test_auto_is_the_balanced_loss_for_classification_and_the_models_own_otherwise(sst2_dir):
    from shared.config import RunConfig
    from shared.settings import local_loss

    assert RunConfig().local_loss == "auto"
    assert local_loss(RunConfig(dataset="sst2")) == "balanced"
    assert local_loss(RunConfig(dataset="agnews")) == "balanced"
    assert local_loss(RunConfig(dataset="stsb")) == "ce"  # a regression: its MSE
    assert local_loss(RunConfig(dataset="e2e", partitioner="iid")) == "ce"  # a causal LM: next-token CE
    assert local_loss(RunConfig(dataset="stsb", local_loss="ce")) == "ce"
    assert local_loss(RunConfig(local_loss="ce")) == "ce"
