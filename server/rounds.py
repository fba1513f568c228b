"""What a round is on the server: the global state, the round's log (a history.json record), the send loop."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from flwr.app import Message
from flwr.serverapp import Grid


@dataclass
class GlobalState:
    """The global model as the server keeps it: values (k,) and head (h,), float32."""

    values: torch.Tensor
    head: torch.Tensor


@dataclass
class RoundLog:
    """What one round did; becomes one record of history.json."""

    round: int
    sampled: int = 0
    replied: int = 0
    rejected: int = 0
    failed: int = 0
    reasons: list[str] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    train_loss: float | None = None
    aggregated: bool = False
    codec_rel_error: float | None = None  # |dec(enc(agg)) - agg| / |agg| of the aggregated values update
    train_seconds: float = 0.0  # sum of the replies' local-training seconds (client compute)
    secagg: dict | None = None  # secure rounds: measured bytes per SecAgg+ stage, survivors, dropouts
    worker_nodes: dict[str, int] = field(default_factory=dict)  # replies per reported worker node (Ray node id)
    norm_bound: float | None = None  # the round's bound on an update's L2 norm (None = unbounded)
    norm_median: float | None = None  # median L2 norm of the round's valid updates, before bounding
    trust_scores: list[float] | None = None  # trust-weighting='cosine': each aggregated reply's score, partition order


def send_and_receive(grid: Grid, msgs: list[Message], timeout: float, poll_s: float = 0.05,
                     sent: dict[str, int] | None = None) -> list[Message]:
    """Push ``msgs`` and pull replies until all arrived or ``timeout`` passed.

    Like ``Grid.send_and_receive``, but polls every ``poll_s`` seconds: the gRPC grid sleeps 3 s
    between pulls, which idles the whole federation up to 3 s after the last reply of every round.
    ``sent``, if given, is filled with message id -> the node it was sent to.
    """
    ids = list(grid.push_messages(msgs))
    if sent is not None:
        sent.update({mid: m.metadata.dst_node_id for mid, m in zip(ids, msgs)})
    pending = set(ids)
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        replies += got
        pending -= {m.metadata.reply_to_message_id for m in got}
        if pending and not got:
            time.sleep(poll_s)
    return replies
