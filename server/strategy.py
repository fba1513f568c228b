"""The one strategy of every method: sample, send, validate, decode, aggregate, guard, update.

It follows Flower's ``Strategy`` contract (``configure_*`` / ``aggregate_*``) and runs its own
``start`` loop so it can do what FedAvg cannot: a handshake that learns each node's partition id
(seeding by partition, never by random node id), per-reply validation with logged reasons, the
method's update codec (``Expected.codec``: values-only, or topk's positions) decoding every reply
into a dense aligned vector, ``server_step`` (every aggregator, DP, server optimizer) on the
stack, the non-finite guard, and byte accounting per round. No method name is tested here.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.server_opt import OptState, ServerSettings, server_step
from server.validation import Expected, validate_reply
from shared.config import RunConfig
from wire.codec import MalformedUpdateError, relative_error
from wire.protocol import HANDSHAKE, TRAIN, Update
from wire.records import message_bytes, message_parts, to_recorddict

log = logging.getLogger("fedsparse.server")


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


class SparseStrategy(Strategy):
    """Federated averaging (or any ``aggregator``) of aligned value vectors, for every method."""

    def __init__(self, cfg: RunConfig, state: GlobalState, expected: Expected):
        self.cfg, self.state, self.expected = cfg, state, expected
        self.partitions: dict[int, int] = {}  # node id -> partition id (from the handshake)
        self.current = RoundLog(0)
        self.server = ServerSettings.from_config(cfg)
        self.opt_state: OptState = {}  # server-optimizer state (checkpointed)
        self.sent: dict[str, int] = {}  # this round's message ids -> the node each was sent to

    # ---- Strategy contract -----------------------------------------------------------------
    def summary(self) -> None:
        log.info("SparseStrategy: k=%d head=%d dtype=%s aggregator=%s fraction-train=%.2f",
                 self.expected.k, self.expected.head_size, self.cfg.value_dtype, self.cfg.aggregator,
                 self.cfg.fraction_train)

    def encoded_global(self) -> dict:
        return self.expected.codec.encode_down(self.state.values, self.state.head, self.cfg.value_dtype,
                                               self.cfg.int8_block_size)

    def sample(self, server_round: int) -> list[int]:
        """Seeded choice of ``ceil(fraction-train * nodes)`` nodes, by partition id order."""
        nodes = sorted(self.partitions, key=lambda n: (self.partitions[n], n))
        count = max(1, min(len(nodes), math.ceil(self.cfg.fraction_train * len(nodes))))
        rng = random.Random(self.cfg.seed * 1_000_003 + server_round)
        return sorted(rng.sample(nodes, count), key=lambda n: self.partitions[n])

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        conf = dict(config)
        conf.update(fingerprint=self.expected.fingerprint, **{"value-dtype": self.cfg.value_dtype,
                                                              "server-round": server_round})
        return [Message(to_recorddict({k: a.numpy() for k, a in arrays.items()}, conf), node, TRAIN)
                for node in self.sample(server_round)]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates, seen = [], set()
        for msg in sorted(replies, key=lambda m: self.partitions.get(self._sender(m), -1)):
            node = self._sender(msg)
            if msg.has_error():
                self._reject(node, f"client error: {str(msg.error.reason)[:200]}", failed=True)
            elif node in seen or node not in self.partitions:
                self._reject(node, "duplicate reply" if node in seen else "reply from a node outside the handshake")
            else:
                seen.add(node)
                update = self._validated(node, msg)
                if update is not None:
                    updates.append(update)
        self.current.replied = len(updates)
        if len(updates) < self.cfg.min_train_replies:
            self._skip(server_round, f"{len(updates)} valid replies < min-train-replies {self.cfg.min_train_replies}")
            return None, None
        weights = torch.tensor([u.num_examples for u in updates], dtype=torch.float64)
        stack = torch.stack([torch.cat([u.delta, u.head_delta]) for u in updates])
        step, opt_state = server_step(stack, weights, self.opt_state, self.server, server_round)
        k = self.expected.k
        new = GlobalState(self.state.values + step[:k], self.state.head + step[k:])
        if not (torch.isfinite(new.values).all() and torch.isfinite(new.head).all()):
            self._skip(server_round, "the aggregated update overflows to non-finite values")
            return None, None
        self.state, self.opt_state = new, opt_state
        loss = float(sum(u.train_loss * u.num_examples for u in updates) / weights.sum())
        self.current.train_loss, self.current.aggregated = loss, True
        return ArrayRecord(), MetricRecord({"train-loss": loss, "replies": len(updates)})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []  # evaluation is server-side on the held-out split

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    # ---- the loop ------------------------------------------------------------------------------
    def _validated(self, node: int, msg: Message) -> Update | None:
        """The decoded update, or None after logging why the reply is rejected (never raises)."""
        try:
            size = message_bytes(msg)
            self.current.bytes_up += size
            if size > self.expected.max_bytes + 2**20:  # refuse before decoding anything big
                raise MalformedUpdateError(f"reply is {size} bytes, over max-reply-mb ({self.expected.max_bytes} B)")
            parts = message_parts(msg)
            update = validate_reply(*parts, self.expected)
            seconds = parts[1].get("train-seconds", 0.0)  # diagnostic only: ignored unless a finite number
            if isinstance(seconds, (int, float)) and math.isfinite(seconds):
                self.current.train_seconds += float(seconds)
            return update
        except Exception as exc:  # the wall: any malformed reply is a rejection, never a crash
            self._reject(node, f"{exc.__class__.__name__}: {str(exc)[:200]}")
            return None

    def _sender(self, msg: Message) -> int:
        """The node a reply is from. An error reply may come from the SuperLink (a lost node: "node
        unavailable") under its own id: it is counted for the node its message was sent to."""
        if msg.has_error():
            return self.sent.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
        return msg.metadata.src_node_id

    def _skip(self, server_round: int, why: str) -> None:
        log.warning("round %d: %s; global state unchanged", server_round, why)
        self.current.reasons.append(f"round skipped: {why}; global state unchanged")

    def _reject(self, node: int, reason: str, failed: bool = False) -> None:
        log.warning("round %d: %s reply from node %s (partition %s): %s", self.current.round,
                    "failed" if failed else "rejected", node, self.partitions.get(node, "?"), reason)
        self.current.reasons.append(f"partition {self.partitions.get(node, '?')}: {reason}")
        if failed:
            self.current.failed += 1
        else:
            self.current.rejected += 1

    def handshake(self, grid: Grid, min_nodes: int, wait_s: float) -> RoundLog:
        """Ask every node for its partition id (and check its fingerprint): round 0's traffic."""
        self.current = RoundLog(0)
        deadline = time.monotonic() + wait_s
        while len(list(grid.get_node_ids())) < min_nodes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(list(grid.get_node_ids()))} nodes connected after {wait_s:.0f}s; "
                                   f"min-available-nodes is {min_nodes}")
            time.sleep(1.0)
        conf = {"fingerprint": self.expected.fingerprint}
        msgs = [Message(to_recorddict({}, conf), node, HANDSHAKE) for node in sorted(grid.get_node_ids())]
        self.current.sampled = len(msgs)
        self.current.bytes_down = sum(message_bytes(m) for m in msgs)
        for reply in grid.send_and_receive(msgs, timeout=max(self.cfg.round_timeout, wait_s)):  # cold starts
            node = reply.metadata.src_node_id
            if reply.has_error():
                self._reject(node, f"handshake failed: {reply.error.reason[:200]}", failed=True)
                continue
            self.current.bytes_up += message_bytes(reply)
            _, metrics, config = message_parts(reply)
            if config.get("fingerprint") != self.expected.fingerprint:
                self._reject(node, "mask fingerprint differs from the server's; node excluded")
                continue
            self.partitions[node] = int(metrics["partition-id"])
        self.current.replied = len(self.partitions)
        if not self.partitions:
            raise RuntimeError("no node passed the handshake: " + "; ".join(self.current.reasons[:3]))
        return self.current

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              on_round: Callable[[RoundLog, float], None] | None = None, first_round: int = 1) -> GlobalState:
        """Run rounds ``first_round..num_rounds``; ``on_round(log, seconds)`` after each."""
        self.summary()
        for rnd in range(first_round, num_rounds + 1):
            t0 = time.perf_counter()
            self.current = RoundLog(rnd)
            arrays = ArrayRecord({k: Array(a) for k, a in self.encoded_global().items()})
            msgs = list(self.configure_train(rnd, arrays, train_config or ConfigRecord(), grid))
            self.current.sampled = len(msgs)
            self.current.bytes_down = sum(message_bytes(m) for m in msgs)
            self.sent = {}
            replies = send_and_receive(grid, msgs, timeout, sent=self.sent)
            replied_nodes = set()
            replies = [r for r in replies if not (self._sender(r) in replied_nodes
                                                 or replied_nodes.add(self._sender(r)))]
            for node in {m.metadata.dst_node_id for m in msgs} - replied_nodes:
                self._reject(node, f"no reply within {timeout:.0f}s", failed=True)
            before = self.state.values
            self.aggregate_train(rnd, replies)
            if self.current.aggregated:  # what the run's codec loses on this round's applied update (reported)
                self.current.codec_rel_error = relative_error(self.state.values - before, self.cfg.value_dtype,
                                                              self.cfg.int8_block_size)
            if on_round is not None:
                on_round(self.current, time.perf_counter() - t0)
        return self.state
