"""``topk`` on the server: send the changed entries with indices, validate index-carrying replies,
scatter-add them. A ``SparseStrategy`` that overrides the wire-facing methods (as Flower's FedProx
overrides FedAvg); the wire format is in ``shared/topk.py``. Messages go as ``train.topk``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from server.strategy import GlobalState, SparseStrategy
from server.validation import Expected, validate_reply
from server.wire import message_bytes, message_parts, to_recorddict
from shared.codec import MalformedUpdateError, encode_values
from shared.masks import MaskMismatchError
from shared.protocol import Update
from shared.runtime import get_runtime
from shared.topk import INDEX_SUFFIX, changed_entries, decode_index, encode_sparse, scatter_mean

MESSAGE_TYPE = "train.topk"


def validate_topk_reply(arrays: Mapping[str, Any], metrics: Mapping[str, Any], config: Mapping[str, Any],
                        expected: Expected, topk_k: int) -> tuple[torch.Tensor, Update]:
    """Check one ``topk`` reply: positions (exactly ``topk_k``, int32, increasing, < N), then the values,
    head, fingerprint and metrics through the shared :func:`validate_reply`. Returns (positions, update)."""
    if config.get("fingerprint") != expected.fingerprint:
        raise MaskMismatchError(f"fingerprint {str(config.get('fingerprint'))[:16]!r} != server's "
                                f"{expected.fingerprint[:16]!r}")
    idx = decode_index(arrays, "delta", expected.k, min(topk_k, expected.k))
    rest = {k: v for k, v in arrays.items() if k != "delta" + INDEX_SUFFIX}
    limit = expected.max_bytes - int(np.asarray(arrays["delta" + INDEX_SUFFIX]).nbytes)
    update = validate_reply(rest, metrics, config, dataclasses.replace(expected, k=idx.numel(), max_bytes=limit))
    return idx, update


class TopkStrategy(SparseStrategy):
    """Dense state (N,) on the server; index+value traffic both ways."""

    def __init__(self, cfg, state: GlobalState, expected: Expected):
        super().__init__(cfg, state, expected)
        self.topk_k = int(get_runtime(cfg).tuner.topk_k)

    def encoded_global(self) -> dict:
        idx, vals = changed_entries(self.state.values)
        arrays = encode_sparse(idx, vals, self.cfg.value_dtype, "values", self.cfg.int8_block_size)
        arrays.update(encode_values(self.state.head, self.cfg.value_dtype, "head", self.cfg.int8_block_size))
        return arrays

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        conf = dict(config)
        conf.update(fingerprint=self.expected.fingerprint, **{"value-dtype": self.cfg.value_dtype,
                                                              "server-round": server_round, "topk-k": self.topk_k})
        return [Message(to_recorddict({k: a.numpy() for k, a in arrays.items()}, conf), node, MESSAGE_TYPE)
                for node in self.sample(server_round)]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted: list[tuple[torch.Tensor, Update]] = []
        for msg in sorted(replies, key=lambda m: self.partitions.get(m.metadata.src_node_id, -1)):
            node = msg.metadata.src_node_id
            if msg.has_error():
                self._reject(node, f"client error: {msg.error.reason[:200]}", failed=True)
                continue
            self.current.bytes_up += message_bytes(msg)
            try:
                accepted.append(validate_topk_reply(*message_parts(msg), self.expected, self.topk_k))
            except (MalformedUpdateError, MaskMismatchError, KeyError, TypeError, ValueError) as exc:
                self._reject(node, f"{exc.__class__.__name__}: {exc}")
        self.current.replied = len(accepted)
        if len(accepted) < self.cfg.min_train_replies:
            return None, None
        weights = torch.tensor([u.num_examples for _, u in accepted], dtype=torch.float64)
        delta = scatter_mean([(idx, u.delta) for idx, u in accepted], weights, self.expected.k)
        w = (weights / weights.sum()).float()
        head = (torch.stack([u.head_delta for _, u in accepted]) * w[:, None]).sum(0)
        self.state = GlobalState(self.state.values + self.cfg.server_lr * delta,
                                 self.state.head + self.cfg.server_lr * head)
        loss = float(sum(u.train_loss * u.num_examples for _, u in accepted) / weights.sum())
        self.current.train_loss, self.current.aggregated = loss, True
        return ArrayRecord(), MetricRecord({"train-loss": loss, "replies": len(accepted)})
