"""The bundled decoder, ``model = "smollm2-135m"``: loads offline, its mask fingerprint is the same across loads and
head classes, and one masked training step runs (real 134.5 M-parameter model: ~1 min cold, seconds cached)."""

from __future__ import annotations

import torch

import pytest

from shared.config import RunConfig
from shared.methods.mask import select_mask
from shared.model import base_weights_digest, load_base_model
from shared.training import adamw
from shared.tuner import SparseTuner

pytestmark = pytest.mark.integration


def _mask(base):
    return select_mask(base.model, RunConfig(method="pafi", mask_density=0.005),
                       base_weights_digest(base.model, base.head_names))


def test_bundled_smollm2_loads_with_a_stable_fingerprint_and_takes_a_masked_step():
    classifier = load_base_model("smollm2-135m", 2, 0)
    assert type(classifier.model).__name__ == "LlamaForSequenceClassification"
    assert classifier.head_names == ("score.weight",) and classifier.tokenizer.pad_token is not None
    mask = _mask(classifier)
    lm = load_base_model("smollm2-135m", 0, 0, kind="causal-lm")  # a second load, from the cache
    assert lm.head_names == () and _mask(lm).fingerprint == mask.fingerprint
    del lm
    tuner = SparseTuner(classifier.model, mask, classifier.head_names)
    opt = adamw([{"params": tuner.trainable(), "lr": 5e-3}])
    batch = classifier.tokenizer(["a fine film", "dull and long"], return_tensors="pt", padding=True)
    classifier.model.train()
    loss = classifier.model(**batch, labels=torch.tensor([1, 0])).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and tuner.values.abs().sum() > 0
    assert int((tuner.values != 0).sum()) > 0.5 * tuner.k  # Adam moved most masked entries
