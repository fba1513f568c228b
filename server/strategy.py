"""The one strategy of every method: sample, send, validate, decode, aggregate, guard, update.

It follows Flower's ``Strategy`` contract (``configure_*`` / ``aggregate_*``) and runs its own
``start`` loop so it can do what FedAvg cannot: a handshake that learns each node's partition id
(seeding by partition, never by random node id), per-reply validation with logged reasons, the
method's update codec (``Expected.codec``: values-only, or topk's positions) decoding every reply
into a dense aligned vector, ``server_step`` (every aggregator, DP, server optimizer) on the
stack, the non-finite guard, and byte accounting per round. No method name is tested here. Under
``secure-aggregation`` a round's sending and collecting is ``server.secure_round.secure_train``, which hands
the survivors' mean back to the same ``apply_update``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from typing import Any, Callable, Iterable

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from server.rounds import GlobalState, RoundLog, send_and_receive  # noqa: F401 (re-exported)
from server.aggregation import AggregationError
from server.drift import ServerDrift
from server.guards import AdaptiveBound, bound_updates, capped_weights, example_caps, norm_bound, trust_scores
from server.handshake import run_handshake
from server.multitask import HeadLayout, multitask_step
from server.secagg import SecAggParams, check_capacity
from server.secure_round import secure_train
from server.server_opt import OptState, ServerSettings, server_step
from server.validation import Expected, validate_reply
from shared.config import RunConfig
from shared.multitask import parse_tasks
from wire.codec import MalformedUpdateError, relative_error, representable
from wire.drift import split_control
from wire.protocol import TRAIN, Update
from wire.records import message_bytes, message_parts, to_recorddict

log = logging.getLogger("fedsparse.server")


def seeded_sample(items: list, fraction: float, seed: int, server_round: int) -> list:
    """The ``ceil(fraction * len(items))`` items (at least one) a round trains, drawn under ``seed`` and the round
    alone: every method run with the same seed trains the same partitions in the same rounds (``items`` in
    partition-id order), which is what lets ``simulations.benchmark.lib.seeds.paired`` set methods against each other seed by
    seed and ``simulations.benchmark.round_mix`` replay a run's rounds."""
    count = max(1, min(len(items), math.ceil(fraction * len(items))))
    return random.Random(seed * 1_000_003 + server_round).sample(list(items), count)


class SparseStrategy(Strategy):
    """Federated averaging (or any ``aggregator``) of aligned value vectors, for every method."""

    def __init__(self, cfg: RunConfig, state: GlobalState, expected: Expected, layout: HeadLayout | None = None):
        self.cfg, self.state, self.expected = cfg, state, expected
        # a multi-task run (server/multitask.py): where each task's head lies in state.head, each node's task, and
        # (task, head size) per global partition id (what the handshake checks)
        self.layout = layout
        self.node_tasks: dict[int, str] = {}
        self.assignment = None if layout is None else [(slot.name, layout.size(slot.name))
                                                       for slot in parse_tasks(cfg.tasks) for _ in range(slot.count)]
        self.partitions: dict[int, int] = {}  # node id -> partition id (from the handshake)
        self.current = RoundLog(0)
        self.server = ServerSettings.from_config(cfg)
        self.opt_state: OptState = {}  # server-optimizer state (checkpointed)
        self.sent: dict[str, int] = {}  # this round's message ids -> the node each was sent to
        self.round_nodes: set[int] | None = None  # the nodes sampled this round (None before configure_train)
        self.declared: dict[int, int] = {}  # node id -> num-examples it declared at the handshake
        self.secagg = SecAggParams.from_config(cfg) if cfg.secure_aggregation else None
        self.vet: Callable[[GlobalState], float] | None = None  # a state's server-side evaluation loss (the ServerApp's)
        self.adopted_loss: float | None = None  # that loss for the state last adopted (None: not evaluated yet)
        self.adaptive = AdaptiveBound(cfg)  # update-bound='adaptive': the trusted scale and its reference hook
        self.trust: Callable[[GlobalState, int], torch.Tensor] | None = None  # trust-weighting: the round's reference
        self.drift = ServerDrift(cfg)  # SCAFFOLD's c and its arrays (no-op unless drift-correction='scaffold')
        if layout is not None:  # each partition's view of c: the values and its task's head span
            spans = [layout.span(name) for name, _ in self.assignment]
            k = expected.k
            self.drift.views = {pid: torch.cat([torch.arange(k), torch.arange(k + s.start, k + s.stop)])
                                for pid, s in enumerate(spans)}

    # ---- Strategy contract -----------------------------------------------------------------
    def summary(self) -> None:
        log.info("SparseStrategy: k=%d head=%d dtype=%s aggregator=%s fraction-train=%.2f secure=%s",
                 self.expected.k, self.expected.head_size, self.cfg.value_dtype, self.cfg.aggregator,
                 self.cfg.fraction_train, self.secagg is not None)

    def encoded_global(self) -> dict:
        return self.expected.codec.encode_down(self.state.values, self.state.head, self.cfg.value_dtype,
                                               self.cfg.int8_block_size)

    def sample(self, server_round: int) -> list[int]:
        """Seeded choice of ``ceil(fraction-train * nodes)`` nodes, by partition id order; a multi-task run with
        ``task-sampling = "stratified"``: that share of each task's nodes (at least one of every task)."""
        nodes = sorted(self.partitions, key=lambda n: (self.partitions[n], n))
        if self.layout is None or self.cfg.task_sampling == "proportional":
            picked = seeded_sample(nodes, self.cfg.fraction_train, self.cfg.seed, server_round)
        else:
            picked = []  # each task's draw is the one its single-task federation of the same seed makes
            for name in self.layout.names:
                mine = [n for n in nodes if self.node_tasks.get(n) == name]
                picked += seeded_sample(mine, self.cfg.fraction_train, self.cfg.seed, server_round) if mine else []
        return sorted(picked, key=lambda n: self.partitions[n])

    def expected_of(self, node: int) -> Expected:
        """What a valid reply of ``node`` looks like: a multi-task node's head is its task's."""
        if self.layout is None:
            return self.expected
        return dataclasses.replace(self.expected, head_size=self.layout.size(self.node_tasks[node]))

    def global_for(self, tasks: Iterable[str]) -> dict[str, dict]:
        """A multi-task round's encoded global per task: the values and that task's head only."""
        return {t: self.expected.codec.encode_down(self.state.values, self.state.head[self.layout.span(t)],
                                                   self.cfg.value_dtype, self.cfg.int8_block_size) for t in set(tasks)}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        conf = dict(config)
        conf.update(fingerprint=self.expected.fingerprint, **{"value-dtype": self.cfg.value_dtype,
                                                              "server-round": server_round})
        nodes = self.sample(server_round)
        self.round_nodes = set(nodes)
        self.drift.start_round(self.expected.k + self.expected.head_size)
        if self.layout is None:
            plain = {k: a.numpy() for k, a in arrays.items()}
            return [Message(to_recorddict({**plain, **self.drift.down(self.partitions.get(node, -1))}, conf), node,
                            TRAIN) for node in nodes]
        per_task = self.global_for(self.node_tasks[node] for node in nodes)
        # where the node's head lies in every task's heads: its secure vector carries them all (zeros but its own)
        spans = {t: {"head-offset": self.layout.span(t).start, "head-total": self.layout.total} for t in per_task}
        return [Message(to_recorddict({**per_task[self.node_tasks[node]], **self.drift.down(self.partitions[node])},
                                      {**conf, **spans[self.node_tasks[node]]}), node, TRAIN) for node in nodes]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        updates = self._accepted(replies)
        if self.layout is not None:  # each head delta in its task's span, zeros elsewhere (row norms unchanged)
            updates = [(node, dataclasses.replace(u, head_delta=self.layout.widen(self.node_tasks[node], u.head_delta)))
                       for node, u in updates]
        updates = self._bounded(updates)
        self.drift.absorb([(node, self.partitions[node]) for node, _ in updates], len(self.partitions))
        self.current.replied = len(updates)
        if len(updates) < self.cfg.min_train_replies:
            self.skip(server_round, f"{len(updates)} valid replies < min-train-replies {self.cfg.min_train_replies}")
            return None, None
        weights, notes = capped_weights([(node, u.num_examples) for node, u in updates],
                                        example_caps(self.declared, self.cfg.examples_cap_multiple), self.cfg.weighting)
        self._note([node for node, _ in updates], notes)
        stack = torch.stack([torch.cat([u.delta, u.head_delta]) for _, u in updates])
        if self.trust is not None:  # FLTrust: each weight times the update's cosine with the server's reference
            scores = trust_scores(stack, self.trust(self.state, server_round))
            self.current.trust_scores = [round(float(s), 4) for s in scores]
            self._note([node for node, _ in updates], ["direction not positive against the server's reference "
                                                       "update: weight 0" if s <= 0 else "" for s in scores])
            weights = weights * scores
            if float(weights.sum()) <= 0:
                self.skip(server_round, "no update points the way of the server's reference update")
                return None, None
        loss = float(sum(u.train_loss * w for (_, u), w in zip(updates, weights.tolist())) / weights.sum())
        row_tasks = None if self.layout is None else [self.node_tasks[node] for node, _ in updates]
        return self.apply_update(server_round, stack, weights, loss, len(updates), row_tasks)

    def apply_update(self, server_round: int, stack: torch.Tensor, weights: torch.Tensor, loss: float,
                     num_clients: int, row_tasks: list[str] | None = None,
                     survivors: list[int] | None = None) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``server_step`` on (n, k + h) ``stack`` (a secure round: its one mean row, of ``survivors``) and the
        guarded update; a multi-task round (``row_tasks``: each row's task; a secure one: the survivors' tasks) steps
        the values over all rows and each head over its task's (:func:`server.multitask.multitask_step`)."""
        try:
            if self.layout is None:
                step, opt_state = server_step(stack, weights, self.opt_state, self.server, server_round, num_clients)
            else:
                counts = None
                if survivors is not None:
                    counts = {name: sum(self.node_tasks.get(n) == name for n in survivors)
                              for name in self.layout.names}
                step, opt_state, notes = multitask_step(stack, weights, row_tasks or [], self.layout,
                                                        self.expected.k, self.opt_state, self.server, server_round,
                                                        counts)
                for note in notes:
                    log.warning("round %d: %s", server_round, note)
                    self.current.reasons.append(note)
        except AggregationError as exc:  # e.g. too few replies for multi-krum's f: skip, never crash
            self.skip(server_round, str(exc))
            return None, None
        k = self.expected.k
        if self.cfg.freeze_values:  # the head alone trains: no values step (DP noise included)
            step = torch.cat([torch.zeros(k, dtype=step.dtype), step[k:]])
        new = GlobalState(self.state.values + step[:k], self.state.head + step[k:])
        dtype = self.cfg.value_dtype
        if not (representable(new.values, dtype) and representable(new.head, dtype)):
            self.skip(server_round, f"the aggregated update leaves non-finite values or values beyond {dtype}'s range")
            return None, None
        why = self._not_adoptable(new)
        if why:
            self.skip(server_round, why)
            return None, None
        self.state, self.opt_state = new, opt_state
        self.current.train_loss, self.current.aggregated = loss, True
        return ArrayRecord(), MetricRecord({"train-loss": loss, "replies": num_clients})

    def _not_adoptable(self, new: GlobalState) -> str:
        """Why ``new`` may not become the global state ("" if it may): its evaluation loss is not finite, or over
        ``state-loss-ratio`` x the last adopted state's. Both losses come from ``vet`` (deterministic)."""
        ratio = self.cfg.state_loss_ratio
        if self.vet is None or ratio <= 0:
            return ""
        if self.adopted_loss is None:
            self.adopted_loss = self.vet(self.state)
        loss = self.vet(new)
        if math.isfinite(loss) and loss <= ratio * self.adopted_loss:
            self.adopted_loss = loss
            return ""
        return (f"the new state's evaluation loss {loss:.4g} is over state-loss-ratio {ratio:g} x the last adopted "
                f"state's {self.adopted_loss:.4g}: not adopted")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []  # evaluation is server-side on the held-out split

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    # ---- the wall ------------------------------------------------------------------------------
    def _accepted(self, replies: Iterable[Message]) -> list[tuple[int, Update]]:
        """(node, update) of every reply that passes the wall, in partition order; the others logged."""
        out, seen = [], set()
        for msg in sorted(replies, key=lambda m: self.partitions.get(self._sender(m), -1)):
            node = self._sender(msg)
            why = self._misplaced(node, msg, seen)
            if msg.has_error():
                self.reject(node, f"client error: {str(msg.error.reason)[:200]}", failed=True)
            elif why:
                self.reject(node, why)
            else:
                seen.add(node)
                update = self._validated(node, msg)
                if update is not None:
                    out.append((node, update))
        return out

    def _misplaced(self, node: int, msg: Message, seen: set[int]) -> str:
        """Why a reply cannot count this round ("" if it can): a duplicate, an outsider, not sampled, stale."""
        if node in seen:
            return "duplicate reply"
        if node not in self.partitions:
            return "reply from a node outside the handshake"
        if self.round_nodes is not None and node not in self.round_nodes:
            return "reply from a node not sampled this round"
        if self.sent and not msg.has_error() and msg.metadata.reply_to_message_id not in self.sent:
            return "reply does not answer this round's message"
        return ""

    def _bounded(self, updates: list[tuple[int, Update]]) -> list[tuple[int, Update]]:
        """The norm policy: updates over the round's bound are clipped to it or rejected (logged per node)."""
        trusted, factor = self.adaptive.bound(self.state, self.current.round) if updates else (None, 1.0)
        if not updates or (trusted is None and self.cfg.max_update_norm <= 0 and self.cfg.update_norm_multiple <= 0):
            return updates
        k = self.expected.k
        stack = torch.stack([torch.cat([u.delta, u.head_delta]) for _, u in updates])
        norms = stack.double().norm(dim=1)  # the round's record: the median and the bound bound_updates applies
        self.current.norm_median = float(norms.median())
        self.current.norm_bound = norm_bound(norms, self.cfg.max_update_norm, self.cfg.update_norm_multiple, trusted)
        rows, keep, notes = bound_updates(stack, self.cfg.max_update_norm, self.cfg.update_norm_multiple,
                                          self.cfg.norm_policy, trusted)
        self.adaptive.moved(rows.double().norm(dim=1), factor)
        out, r = [], 0
        for (node, u), kept, note in zip(updates, keep, notes):
            if not kept:
                self.reject(node, note)
                continue
            self._note([node], [note])
            out.append((node, dataclasses.replace(u, delta=rows[r, :k], head_delta=rows[r, k:])))
            r += 1
        return out

    def _note(self, nodes: list[int], notes: list[str]) -> None:
        for node, note in zip(nodes, notes):
            if note:
                log.warning("round %d: partition %s: %s", self.current.round, self.partitions.get(node, "?"), note)
                self.current.reasons.append(f"partition {self.partitions.get(node, '?')}: {note}")

    def note_diagnostics(self, seconds: Any, worker: Any) -> None:
        """A reply's diagnostics (train seconds; the Ray node a simulated client ran on): counted when well-formed,
        ignored otherwise; never trusted, never needed."""
        if isinstance(seconds, (int, float)) and math.isfinite(seconds):
            self.current.train_seconds += float(seconds)
        if isinstance(worker, str) and 0 < len(worker) <= 128:
            self.current.worker_nodes[worker] = self.current.worker_nodes.get(worker, 0) + 1

    # ---- the loop ------------------------------------------------------------------------------
    def _validated(self, node: int, msg: Message) -> Update | None:
        """The decoded update, or None after logging why the reply is rejected (never raises)."""
        try:
            size = message_bytes(msg)
            self.current.bytes_up += size
            if size > self.expected.max_bytes + 2**20:  # refuse before decoding anything big
                raise MalformedUpdateError(f"reply is {size} bytes, over max-reply-mb ({self.expected.max_bytes} B)")
            parts = message_parts(msg)
            arrays, control = split_control(parts[0])
            expected = self.expected_of(node)
            update = validate_reply(arrays, parts[1], parts[2], expected)
            self.drift.take(node, control, expected.k + expected.head_size, self.partitions.get(node))
            self.note_diagnostics(parts[1].get("train-seconds"), parts[2].get("worker-node"))
            return update
        except Exception as exc:  # the wall: any malformed reply is a rejection, never a crash
            self.reject(node, f"{exc.__class__.__name__}: {str(exc)[:200]}")
            return None

    def _codec_error(self, change: torch.Tensor) -> float | None:
        """|dec(enc(change)) - change| / |change| in the run's codec (None where the change does not fit it)."""
        if not representable(change, self.cfg.value_dtype):
            return None
        return relative_error(change, self.cfg.value_dtype, self.cfg.int8_block_size)

    def _sender(self, msg: Message) -> int:
        """The node a reply is from. An error reply may come from the SuperLink (a lost node: "node
        unavailable") under its own id: it is counted for the node its message was sent to."""
        if msg.has_error():
            return self.sent.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)
        return msg.metadata.src_node_id

    def skip(self, server_round: int, why: str) -> None:
        log.warning("round %d: %s; global state unchanged", server_round, why)
        self.current.reasons.append(f"round skipped: {why}; global state unchanged")

    def reject(self, node: int, reason: str, failed: bool = False) -> None:
        log.warning("round %d: %s reply from node %s (partition %s): %s", self.current.round,
                    "failed" if failed else "rejected", node, self.partitions.get(node, "?"), reason)
        self.current.reasons.append(f"partition {self.partitions.get(node, '?')}: {reason}")
        if failed:
            self.current.failed += 1
        else:
            self.current.rejected += 1

    def handshake(self, grid: Grid, min_nodes: int, wait_s: float) -> RoundLog:
        """Ask every node for its partition id (and check its fingerprint): round 0's traffic
        (:func:`server.handshake.run_handshake`)."""
        return run_handshake(self, grid, min_nodes, wait_s)

    def plain_train(self, server_round: int, grid: Grid, msgs: list[Message], timeout: float) -> None:
        """A train round in the clear: send, collect, the wall, ``aggregate_train``."""
        self.current.bytes_down = sum(message_bytes(m) for m in msgs)
        self.sent = {}
        replies = send_and_receive(grid, msgs, timeout, sent=self.sent)
        replied_nodes: set[int] = set()
        replies = [r for r in replies if not (self._sender(r) in replied_nodes or replied_nodes.add(self._sender(r)))]
        for node in {m.metadata.dst_node_id for m in msgs} - replied_nodes:
            self.reject(node, f"no reply within {timeout:.0f}s", failed=True)
        self.aggregate_train(server_round, replies)

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              on_round: Callable[[RoundLog, float], None] | None = None, first_round: int = 1) -> GlobalState:
        """Run rounds ``first_round..num_rounds``; ``on_round(log, seconds)`` after each."""
        self.summary()
        if self.secagg is not None:  # n x Q < M for the round size this federation gives (one line if not)
            check_capacity(len(self.sample(first_round)) if self.partitions else 0, self.secagg)
        for rnd in range(first_round, num_rounds + 1):
            t0 = time.perf_counter()
            self.current = RoundLog(rnd)
            arrays = ArrayRecord({k: Array(a) for k, a in self.encoded_global().items()})
            msgs = list(self.configure_train(rnd, arrays, train_config or ConfigRecord(), grid))
            self.current.sampled = len(msgs)
            before = self.state.values
            if self.secagg is not None:
                secure_train(self, rnd, grid, msgs, timeout)
            else:
                self.plain_train(rnd, grid, msgs, timeout)
            if self.current.aggregated:  # what the run's codec loses on this round's applied update (reported)
                self.current.codec_rel_error = self._codec_error(self.state.values - before)
            if on_round is not None:
                on_round(self.current, time.perf_counter() - t0)
        return self.state
