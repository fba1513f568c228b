"""Helpers: build client replies as the ServerApp receives them (real ``flwr.app.Message``)."""

from __future__ import annotations

import time

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.app.metadata import Metadata

from server.validation import Expected
from wire.protocol import UP_KEYS, encode_pair

FP = "ab" * 32
K, H = 16, 4


def expected(dtype: str) -> Expected:
    return Expected(fingerprint=FP, value_dtype=dtype, k=K, head_size=H, block=8, max_bytes=4096)


def good_parts(dtype: str, seed: int, n: int = 7) -> tuple[dict, dict, dict]:
    g = torch.Generator().manual_seed(seed)
    arrays = encode_pair(torch.randn(K, generator=g) * 0.01, torch.randn(H, generator=g) * 0.01, UP_KEYS, dtype, 8)
    return arrays, {"num-examples": n, "train-loss": 0.5}, {"fingerprint": FP}


def message(node: int, arrays: dict | None, metrics: dict | None, config: dict | None,
            swap_records: bool = False, error: str | None = None) -> Message:
    """A reply as the ServerApp receives it (explicit Metadata: no running app needed)."""
    md = Metadata(run_id=1, message_id=f"m{node}-{time.monotonic_ns()}", src_node_id=node, dst_node_id=1,
                  reply_to_message_id="q", group_id="1", created_at=time.time(), ttl=3600.0, message_type="train")
    if error is not None:
        return Message(error=Error(code=1, reason=error), metadata=md)
    records: dict = {}
    if arrays is not None:
        records["arrays"] = ArrayRecord({k: v if isinstance(v, Array) else Array(v) for k, v in arrays.items()})
    if metrics is not None:  # swap_records: the metrics arrive as a ConfigRecord (wrong record type)
        records["metrics"] = ConfigRecord(metrics) if swap_records else MetricRecord(metrics)
    if config is not None:
        records["config"] = ConfigRecord(config)
    return Message(content=RecordDict(records), metadata=md)
