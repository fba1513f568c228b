"""The strategy on real Messages: minimum replies, overflow guard, attackers under each aggregator."""

from __future__ import annotations

import numpy as np
import torch

from server.strategy import GlobalState, SparseStrategy
from server.validation import Expected
from shared.config import RunConfig
from wire.protocol import UP_KEYS, encode_pair
from tests.server.replies import FP, H, K, good_parts, message


def _strategy(nodes: int, **cfg) -> SparseStrategy:
    s = SparseStrategy(RunConfig(**cfg), GlobalState(torch.zeros(K), torch.zeros(H)),
                       Expected(FP, "float32", K, H, block=8, max_bytes=4096))
    s.partitions = {100 + i: i for i in range(nodes)}
    return s


def test_fewer_valid_replies_than_minimum_leaves_state_unchanged_and_says_so():
    s = _strategy(3, min_train_replies=3)
    replies = [message(100 + i, *good_parts("float32", i)) for i in range(2)]
    assert s.aggregate_train(1, replies) == (None, None)
    assert torch.equal(s.state.values, torch.zeros(K)) and not s.current.aggregated and s.current.replied == 2
    assert any("min-train-replies 3" in r and "unchanged" in r for r in s.current.reasons)


def test_update_that_would_overflow_float32_is_refused():
    s = _strategy(2)
    s.state = GlobalState(torch.full((K,), 3e38), torch.zeros(H))
    arrays = encode_pair(torch.full((K,), 3e38), torch.zeros(H), UP_KEYS, "float32", 8)
    assert s.aggregate_train(1, [message(100, arrays, {"num-examples": 5}, {"fingerprint": FP})]) == (None, None)
    assert torch.equal(s.state.values, torch.full((K,), 3e38)) and "non-finite" in s.current.reasons[-1]


def test_attackers_through_the_strategy_median_resists_mean_does_not():
    g = torch.Generator().manual_seed(5)
    true = torch.randn(K, generator=g) * 0.01
    errors = {}
    for name in ("fedavg", "median", "trimmed-mean"):
        s = _strategy(10, aggregator=name, trim_fraction=0.3)
        replies = []
        for i in range(10):
            d = true + 0.001 * torch.randn(K, generator=g)
            d = d * -20 if i < 3 else d  # 3 of 10 send boosted, sign-flipped updates
            arrays = encode_pair(d, torch.zeros(H), UP_KEYS, "float32", 8)
            replies.append(message(100 + i, arrays, {"num-examples": 50, "train-loss": 0.1}, {"fingerprint": FP}))
        s.aggregate_train(1, replies)
        errors[name] = float((s.state.values - true).norm() / true.norm())
    print("\nthrough SparseStrategy, 3/10 attackers (x-20):", {k: round(v, 3) for k, v in errors.items()})
    assert errors["fedavg"] > 3 and errors["median"] < 0.3 and errors["trimmed-mean"] < 0.3
    assert np.isfinite(list(errors.values())).all()


class _LostNodeGrid:
    """Nodes 100 and 101 reply; node 102 is lost: the SuperLink answers for it with an Error under its own id."""

    def __init__(self):
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0  # as the ServerApp runtime sets
        self.pushed: list = []

    def get_node_ids(self):
        return [100, 101, 102]

    def push_messages(self, msgs):
        self.pushed = list(msgs)
        return [f"id{m.metadata.dst_node_id}" for m in self.pushed]

    def pull_messages(self, ids):
        out = []
        for m in self.pushed:
            node = m.metadata.dst_node_id
            if node == 102:
                reply = message(0, None, None, None, error="node unavailable")  # src: the SuperLink
            else:
                reply = message(node, *good_parts("float32", node))
            reply.metadata.__dict__["_reply_to_message_id"] = f"id{node}"
            out.append(reply)
        self.pushed = []
        return out


def test_a_lost_node_is_counted_once_for_itself_not_for_the_superlink():
    s = _strategy(3, fraction_train=1.0)
    s.start(_LostNodeGrid(), num_rounds=1, timeout=5)
    assert (s.current.failed, s.current.rejected, s.current.replied) == (1, 0, 2)
    assert any(r.startswith("partition 2: client error: node unavailable") for r in s.current.reasons)
    assert not any("no reply" in r for r in s.current.reasons)


def test_trust_weighting_gives_updates_against_the_servers_reference_no_weight():
    """FLTrust's cosine weights through the strategy, with the defaults' adaptive bound off: sign-flipped (x-20),
    zero and inner-product-manipulating (-0.5 x mean) replies get weight 0, the honest ones theirs x their cosine."""
    from server.guards import trust_scores

    g = torch.Generator().manual_seed(7)
    true = torch.randn(K, generator=g) * 0.01
    honest = [true + 0.002 * torch.randn(K, generator=g) for _ in range(6)]
    attacks = [true * -20, torch.zeros(K), -0.5 * torch.stack(honest).mean(0)]
    rows = honest + attacks
    s = _strategy(len(rows), trust_weighting="cosine", update_bound="none")
    reference = torch.cat([true, torch.zeros(H)]).double()
    s.trust = lambda state, rnd: reference
    replies = [message(100 + i, encode_pair(d, torch.zeros(H), UP_KEYS, "float32", 8),
                       {"num-examples": 50, "train-loss": 0.1}, {"fingerprint": FP}) for i, d in enumerate(rows)]
    s.aggregate_train(1, replies)
    scores = trust_scores(torch.stack([torch.cat([d, torch.zeros(H)]) for d in rows]), reference)
    assert scores[6:].tolist() == [0.0, 0.0, 0.0] and bool((scores[:6] > 0.9).all())
    want = torch.mv(torch.stack(honest).double().t(), scores[:6] / scores[:6].sum()).float()
    assert torch.allclose(s.state.values, want, atol=1e-7)
    assert s.current.trust_scores[6:] == [0.0, 0.0, 0.0]
    assert sum("server's reference update: weight 0" in r for r in s.current.reasons) == 3
    every = _strategy(2, trust_weighting="cosine", update_bound="none")
    every.trust = lambda state, rnd: reference
    against = [message(100 + i, encode_pair(d, torch.zeros(H), UP_KEYS, "float32", 8),
                       {"num-examples": 50, "train-loss": 0.1}, {"fingerprint": FP}) for i, d in enumerate(attacks[:2])]
    assert every.aggregate_train(1, against) == (None, None)  # only opposing / empty updates: the round skips
    assert "no update points the way" in every.current.reasons[-1] and not every.state.values.any()
