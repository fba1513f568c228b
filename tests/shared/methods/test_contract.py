"""The contract test: every registered method through the same checks (PEFT's ``test_custom_models.py`` idea).

Per method and per model family (a tiny BERT, a tiny GPT-2 with Conv1D projections, a tiny Llama without
biases), a real federation in-process: the real ClientApp handlers, the server's
handshake and the method's selection phase (if any), one round of real replies; then the one server path
(``SparseStrategy.aggregate_train``) must treat that method exactly as every other. A new method gets all of
this by being registered, on encoders and decoders alike. Where a method cannot serve a family (bitfit on
a model without biases), the refusal is checked instead (``tests/shared/test_decoders.py``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord
from transformers import AutoModelForSequenceClassification

from client.client_app import app as client_app
from server.aggregation import coordinate_median, weighted_mean
from server.privacy import clip_rows
from server.selection import run_selection
from server.server_app import _strategy
from server.strategy import GlobalState, RoundLog, SparseStrategy
from server.validation import validate_reply
from shared.masks import MaskMismatchError
from shared.methods import methods
from shared.model import load_base_model
from shared.runtime import Runtime, get_runtime
from shared.settings import parse_run_config
from tests.conftest import TINY_MODELS
from tests.server.replies import message
from tests.support.local_grid import LocalGrid
from wire.protocol import unflatten_head
from wire.records import message_bytes, message_parts

NODES = 3
CHECKS = 10  # test cases per method below (the closing note reports methods x checks)


@dataclass
class Fed:
    rt: Runtime
    grid: LocalGrid
    strategy: SparseStrategy  # after the handshake and the selection phase, before round 1
    replies: list  # round 1's real replies, as (node, arrays, metrics, config)


# What a family needs of a method's knobs: DSEE removes heads of BERT-style encoders only; HiWi adapts
# Llama's FFN weight rows (it has no biases). Methods that cannot serve a family are refused at build.
FAMILY_OPTIONS = {"bert": {"dsee-prune-heads": 1}, "gpt2": {"dsee-prune-heads": 0},
                  "llama": {"dsee-prune-heads": 0, "hiwi-target": "weight"}}
REFUSED = {("bitfit", "llama")}  # no biases: refused in one line (tests/shared/test_decoders.py)
CASES = [(m, f) for f in TINY_MODELS for m in methods() if (m, f) not in REFUSED]


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{f}" for m, f in CASES])
def fed(request, repo_root, sst2_dir) -> Fed:
    method, family = request.param
    model_dir = request.getfixturevalue(TINY_MODELS[family])
    rc = dict(tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])
    rc.update({"method": method, "model": str(model_dir), "data-dir": str(sst2_dir), "mask-density": 0.05,
               "local-steps": 1, "batch-size": 4, "max-length": 32, "max-eval-examples": 16, "sam-batches": 1,
               "fraction-train": 1.0, "min-available-nodes": NODES, **FAMILY_OPTIONS[family]})
    cfg = parse_run_config(rc)
    rt = get_runtime(cfg)
    rt.tuner.reset()
    grid = LocalGrid(client_app, rc, NODES)
    strategy = _strategy(cfg, rt)
    run_selection(grid, cfg, rt, strategy, strategy.handshake(grid, NODES, 10), {})
    arrays = ArrayRecord({k: Array(a) for k, a in strategy.encoded_global().items()})
    msgs = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    replies = [(r.metadata.src_node_id, *message_parts(r)) for r in grid.send_and_receive(msgs)]
    assert len(replies) == NODES
    return Fed(rt, grid, strategy, replies)


def _fresh(fed: Fed, **changes) -> SparseStrategy:
    """A strategy at the same round-0 state as ``fed``'s, with some settings changed."""
    s = SparseStrategy(fed.strategy.cfg.replace(**changes), GlobalState(fed.strategy.state.values.clone(),
                       fed.strategy.state.head.clone()), fed.strategy.expected)
    s.partitions, s.current = dict(fed.strategy.partitions), RoundLog(1)
    return s


def _messages(parts) -> list:
    return [message(node, arrays, metrics, config) for node, arrays, metrics, config in parts]


def _stack(fed: Fed) -> torch.Tensor:
    updates = [validate_reply(a, m, c, fed.strategy.expected) for _, a, m, c in fed.replies]
    return torch.stack([torch.cat([u.delta, u.head_delta]) for u in updates])


def test_an_all_bad_round_leaves_the_state_bit_identical(fed):
    s, k = _fresh(fed), fed.strategy.expected.k
    node, arrays, metrics, config = fed.replies[0]
    first = sorted(arrays)[0]
    nan = {**arrays, first: np.full_like(arrays[first], np.nan) if arrays[first].dtype.kind == "f" else arrays[first]}
    bad = [(node, arrays, metrics, {**config, "fingerprint": "0" * 64}),
           (node + 1, nan if nan[first].dtype.kind == "f" else {**arrays, first: arrays[first][:-1]}, metrics, config),
           (node + 2, {**arrays, "extra": np.zeros(3, np.float32)}, metrics, config),
           (node + 3, {key: a[:-1] for key, a in arrays.items()}, metrics, config)]
    s.partitions.update({node + 1: 1, node + 2: 2, node + 3: 3})
    before = (s.state.values.clone(), s.state.head.clone())
    assert s.aggregate_train(1, _messages(bad)) == (None, None)
    assert torch.equal(s.state.values, before[0]) and torch.equal(s.state.head, before[1]) and k == before[0].numel()
    assert s.current.rejected == 4 and not s.current.aggregated
    assert not any("duplicate" in r or "outside" in r for r in s.current.reasons)  # each refused for its defect


def test_duplicates_and_nodes_outside_the_handshake_are_rejected(fed):
    honest, attacked = _fresh(fed), _fresh(fed)
    honest.aggregate_train(1, _messages(fed.replies))
    node, arrays, metrics, config = fed.replies[0]
    extra = [(node, arrays, metrics, config), (999_999, arrays, metrics, config)]
    attacked.aggregate_train(1, _messages(fed.replies + extra))
    assert attacked.current.rejected == 2 and attacked.current.replied == NODES
    assert torch.equal(attacked.state.values, honest.state.values) and torch.equal(attacked.state.head, honest.state.head)


@pytest.mark.parametrize("rule", ["median", "dp-clip"])
def test_median_and_dp_clipping_change_the_aggregate_exactly_as_for_every_method(fed, rule):
    stack, k = _stack(fed), fed.strategy.expected.k
    if rule == "median":
        s, want = _fresh(fed, aggregator="median"), coordinate_median(stack, torch.ones(NODES))
    else:
        clip = 0.5 * float(stack.norm(dim=1).min())  # binding for every client
        s, want = _fresh(fed, dp_clip_norm=clip), weighted_mean(clip_rows(stack, clip), torch.ones(NODES))
    s.aggregate_train(1, _messages(fed.replies))
    assert s.current.aggregated
    assert torch.equal(s.state.values, fed.strategy.state.values + want[:k])
    assert torch.equal(s.state.head, fed.strategy.state.head + want[k:])


def test_the_non_finite_guard_holds(fed):
    s, exp = _fresh(fed), fed.strategy.expected
    s.state = GlobalState(torch.full((exp.k,), 3e38), s.state.head.clone())
    huge = fed.rt.tuner.codec.encode_up(torch.full((exp.k,), 3e38), torch.zeros(exp.head_size), "float32", exp.block)
    node, _, metrics, config = fed.replies[0]
    assert s.aggregate_train(1, _messages([(node, huge, metrics, config)])) == (None, None)
    assert torch.equal(s.state.values, torch.full((exp.k,), 3e38)) and "non-finite" in s.current.reasons[-1]


def test_a_wrong_fingerprint_is_refused_by_the_client(fed):
    s = _fresh(fed)
    s.expected = replace(s.expected, fingerprint="f" * 64)
    arrays = ArrayRecord({k: Array(a) for k, a in s.encoded_global().items()})
    with pytest.raises(MaskMismatchError):
        fed.grid.send_and_receive(list(s.configure_train(1, arrays, ConfigRecord(), fed.grid))[:1])


def _trained(fed: Fed) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    s = _fresh(fed)
    s.aggregate_train(1, _messages(fed.replies))
    assert s.current.aggregated
    return s.state.values, unflatten_head(s.state.head, fed.rt.tuner.head_state(), fed.rt.base.head_names)


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["a fine film", "dull and long"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_the_merged_model_loads_in_plain_transformers_and_computes_the_trained_model(fed, tmp_path):
    values, head = _trained(fed)
    rt = fed.rt
    fresh = load_base_model(rt.base.source, rt.num_labels, fed.strategy.cfg.seed)
    rt.tuner.merge(fresh.model, values, head).save_pretrained(tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert not any("lora" in n or "parametrizations" in n for n, _ in plain.named_parameters())
    rt.tuner.load(values, head)
    torch.testing.assert_close(_logits(plain, rt.base.tokenizer), _logits(rt.base.model, rt.base.tokenizer),
                               rtol=1e-4, atol=1e-5)


def test_the_artifact_round_trips(fed, tmp_path):
    values, head = _trained(fed)
    rt, seed = fed.rt, fed.strategy.cfg.seed
    merged = rt.tuner.merge(load_base_model(rt.base.source, rt.num_labels, seed).model, values, head)
    rt.tuner.save_artifact(tmp_path, values, head, fed.strategy.cfg, rt.base.source)
    rebuilt = rt.tuner.apply_artifact(tmp_path, load_base_model(rt.base.source, rt.num_labels, seed).model)
    torch.testing.assert_close(_logits(rebuilt, rt.base.tokenizer), _logits(merged, rt.base.tokenizer),
                               rtol=1e-5, atol=1e-6)


def test_bytes_are_measured_from_the_messages(fed):
    s = _fresh(fed)
    msgs = _messages(fed.replies)
    s.aggregate_train(1, msgs)
    sizes = [message_bytes(m) for m in msgs]
    assert s.current.bytes_up == sum(sizes)
    payload = fed.rt.tuner.payload_bytes(4)
    assert all(payload <= size <= payload + 16_384 for size in sizes), (payload, sizes)


def test_the_method_declares_the_alignment_of_its_codec(fed):
    """``Method.aligned`` (read at start, before any model loads, to refuse secure aggregation) is the codec's."""
    method = methods()[fed.strategy.cfg.method]
    assert method.aligned == fed.rt.tuner.codec.aligned
