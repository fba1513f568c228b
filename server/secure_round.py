"""One train round through SecAgg+: setup, share keys, collect masked vectors, unmask (over the Grid).

The four stages of Flower's ``SecAggPlusWorkflow``, run from our strategy so the round keeps the
strategy's sampling, wall and ``server_step``: every stage is a ``train`` message that the clients'
``secaggplus_mod`` answers (stage 2 also runs the train handler). A node whose reply is missing, an
error or malformed is dropped from that stage on: before the key exchange it simply takes no part;
after it (stage 2 on) its pairwise masks are removed with its secret key rebuilt from its neighbours'
shares, so the round completes with the survivors' sum while every secret keeps ``threshold`` shares.

Bytes of every stage are measured from the real messages (``wire.records.message_bytes``).
:func:`secure_train` is the strategy's train round under SecAgg+: the four stages, then the survivors' mean
into the strategy's one update step; the strategy calls it where it would send plain train messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.serverapp import Grid

from server.rounds import RoundLog, send_and_receive
from server.secagg import (SecAggParams, SecureAggregationError, neighbour_graph, parse_key_shares,
                           parse_masked_vector, parse_public_keys, parse_unmask_shares, protocol_sizes,
                           short_of_threshold, unmask_mean)
from server.validation import Expected
from shared.config import RunConfig
from shared.masks import MaskMismatchError
from wire.protocol import split_secure
from wire.records import message_bytes, metrics_of_secure_reply

STAGES = (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK)
Reject = Callable[[int, str, bool], None]  # (node, reason, failed): the strategy logs and counts it


@dataclass
class SecureOutcome:
    """What a secure round gives the strategy: the survivors' mean (d,) float64 and who survived."""

    mean: np.ndarray
    survivors: list[int]
    dropped: list[int]  # dropped after the key exchange (their masks removed from the sum)
    metrics: dict[int, dict] = field(default_factory=dict)  # survivor -> its reply's clear metrics


@dataclass
class StageBytes:
    """Measured bytes of each stage this round, down and up."""

    down: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    up: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    plain_down: int = 0  # the stage-2 messages' bytes without the SecAgg+ record (= a plain train message)

    def as_dict(self) -> dict:
        return {s: {"down": self.down[s], "up": self.up[s]} for s in STAGES}


class SecureRound:
    """Runs the four stages for ``train`` (node -> its plain train message) and unmasks the mean."""

    def __init__(self, grid: Grid, params: SecAggParams, timeout: float, seed: int, reject: Reject,
                 expect: Callable[[dict], None], length: int):
        self.grid, self.params, self.timeout, self.seed = grid, params, timeout, seed
        self.reject, self.expect, self.length = reject, expect, length  # expect: checks a reply's clear metrics
        self.bytes = StageBytes()

    def _exchange(self, stage: str, contents: dict[int, RecordDict]) -> dict[int, dict]:
        """Send each node its content as a ``train`` message; node -> the SecAgg+ configs of its valid reply."""
        msgs = [Message(content, node, MessageType.TRAIN) for node, content in sorted(contents.items())]
        self.bytes.down[stage] += sum(message_bytes(m) for m in msgs)
        sent: dict[str, int] = {}
        replies = send_and_receive(self.grid, msgs, self.timeout, sent=sent)
        out: dict[int, dict] = {}
        answered: set[int] = set()
        for reply in replies:
            node = sent.get(reply.metadata.reply_to_message_id)
            if node is None or node in answered:
                continue  # not an answer to this stage's messages, or a second one
            answered.add(node)
            if reply.has_error():
                self.reject(node, f"secagg {stage}: client error: {str(reply.error.reason)[:200]}", True)
                continue
            self.bytes.up[stage] += message_bytes(reply)
            if reply.metadata.src_node_id != node or RECORD_KEY_CONFIGS not in reply.content.config_records:
                self.reject(node, f"secagg {stage}: reply without the SecAgg+ record", False)
                continue
            out[node] = {"configs": dict(reply.content.config_records[RECORD_KEY_CONFIGS]), "msg": reply}
        for node in sorted(set(contents) - answered):
            self.reject(node, f"secagg {stage}: no reply within {self.timeout:.0f}s", True)
        return out

    def _parsed(self, stage: str, replies: dict[int, dict], parse: Callable[[int, dict], object]) -> dict[int, object]:
        out = {}
        for node, reply in sorted(replies.items()):
            try:
                out[node] = parse(node, reply)
            except Exception as exc:  # noqa: BLE001 - the wall: a malformed reply drops its node, never the server
                self.reject(node, f"secagg {stage}: {exc.__class__.__name__}: {str(exc)[:200]}", False)
        return out

    def run(self, msgs: list[Message], server_round: int) -> SecureOutcome:
        """The survivors' mean from this round's plain train ``msgs``; :class:`SecureAggregationError` if the
        round cannot finish."""
        train = {m.metadata.dst_node_id: m.content for m in msgs}
        self.bytes.plain_down = sum(message_bytes(m) for m in msgs)
        sampled = sorted(train)
        shares, threshold = protocol_sizes(len(sampled), self.params)
        graph = neighbour_graph(sampled, shares, self.seed * 1_000_003 + server_round)
        setup = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: len(sampled), Key.SHARE_NUMBER: shares,
                 Key.THRESHOLD: threshold, Key.CLIPPING_RANGE: float(self.params.clipping_range),
                 Key.TARGET_RANGE: int(self.params.quantization_range), Key.MOD_RANGE: int(self.params.modulus_range),
                 Key.MAX_WEIGHT: 1.0}  # every client reports num_examples = 1: uniform weights, exact factor Q
        keys = self._parsed(Stage.SETUP, self._exchange(Stage.SETUP, {n: _record(setup) for n in sampled}),
                            lambda n, r: parse_public_keys(r["configs"]))
        self._enough(Stage.SETUP, set(keys), set(keys), graph, threshold)

        def share_keys(node: int) -> RecordDict:
            conf = {str(nb): list(keys[nb]) for nb in sorted(graph[node] & set(keys))}
            return _record({**conf, Key.STAGE: Stage.SHARE_KEYS})

        shared = self._parsed(Stage.SHARE_KEYS, self._exchange(Stage.SHARE_KEYS, {n: share_keys(n) for n in keys}),
                              lambda n, r: parse_key_shares(r["configs"], graph[n] & set(keys)))
        keyed = set(shared)  # these nodes' shares are out: from here on a dropout is unmasked, not ignored
        self._enough(Stage.SHARE_KEYS, keyed, keyed, graph, threshold)
        inbox: dict[int, list[tuple[int, bytes]]] = {n: [] for n in keyed}
        for src in sorted(shared):
            for dst, ctxt in shared[src]:
                if dst in inbox:
                    inbox[dst].append((src, ctxt))
        masked = self._parsed(Stage.COLLECT_MASKED_VECTORS,
                              self._exchange(Stage.COLLECT_MASKED_VECTORS,
                                             {n: self._masked_request(train[n], inbox[n]) for n in sorted(keyed)}),
                              self._parse_masked)
        survivors, dead = set(masked), keyed - set(masked)
        self._enough(Stage.COLLECT_MASKED_VECTORS, keyed, survivors, graph, threshold)

        def unmask(node: int) -> RecordDict:
            return _record({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: sorted(graph[node] & survivors),
                            Key.DEAD_NODE_ID_LIST: sorted(graph[node] & dead)})

        got = self._parsed(Stage.UNMASK, self._exchange(Stage.UNMASK, {n: unmask(n) for n in sorted(survivors)}),
                           lambda n, r: parse_unmask_shares(r["configs"], graph[n] & keyed))
        seed_shares = {n: [] for n in survivors}
        sk1_shares = {n: [] for n in dead}
        for holder in sorted(got):
            for owner, share in got[holder]:
                (seed_shares if owner in survivors else sk1_shares)[owner].append(share)
        try:
            mean = unmask_mean({n: masked[n][0] for n in survivors}, seed_shares, sk1_shares,
                               {n: keys[n][0] for n in keys}, graph, self.params, threshold)
        except SecureAggregationError:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt share: the round is skipped, not the run
            raise SecureAggregationError(f"unmasking failed: {exc.__class__.__name__}: {str(exc)[:200]}") from None
        return SecureOutcome(mean, sorted(survivors), sorted(dead), {n: masked[n][1] for n in survivors})

    def _masked_request(self, content: RecordDict, inbox: list[tuple[int, bytes]]) -> RecordDict:
        """The plain train message plus the key shares addressed to this node."""
        out = RecordDict(dict(content.items()))
        out.config_records[RECORD_KEY_CONFIGS] = ConfigRecord({
            Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: [c for _, c in inbox],
            Key.SOURCE_LIST: [s for s, _ in inbox]})
        return out

    def _parse_masked(self, node: int, reply: dict) -> tuple[list[np.ndarray], dict]:
        metrics = metrics_of_secure_reply(reply["msg"])
        self.expect(metrics)  # fingerprint and the other clear fields (raises on a bad reply)
        return parse_masked_vector(reply["configs"], self.length, self.params.modulus_range), metrics

    def _enough(self, stage: str, owners: set[int], alive: set[int], graph: dict[int, set[int]], threshold: int) -> None:
        if len(alive) < 2:
            raise SecureAggregationError(f"secagg {stage}: {len(alive)} node(s) left; a secure sum needs at least 2")
        short = short_of_threshold(owners, alive, graph, threshold)
        if short:
            raise SecureAggregationError(f"secagg {stage}: nodes {short[:5]} have fewer than {threshold} live "
                                         f"neighbours; their secrets could not be rebuilt")


class RoundHost(Protocol):
    """What a secure round needs of the strategy that runs it (``server.strategy.SparseStrategy``)."""

    cfg: RunConfig
    expected: Expected
    secagg: SecAggParams
    current: RoundLog

    def reject(self, node: int, reason: str, failed: bool = False) -> None: ...

    def skip(self, server_round: int, why: str) -> None: ...

    def note_diagnostics(self, seconds: Any, worker: Any) -> None: ...

    def apply_update(self, server_round: int, stack: torch.Tensor, weights: torch.Tensor, loss: float,
                     num_clients: int, row_tasks: list[str] | None = None,
                     survivors: list[int] | None = None) -> Any: ...


def expect_fingerprint(fingerprint: str) -> Callable[[dict], None]:
    """The check of a masked reply's clear part: this run's mask fingerprint (nothing else is trusted or needed)."""
    def check(metrics: dict) -> None:
        fp = metrics.get("fingerprint")
        if not isinstance(fp, str) or fp != fingerprint:
            raise MaskMismatchError(f"mask fingerprint {str(fp)[:16]!r} != server's {fingerprint[:16]!r}")
    return check


def secure_train(host: RoundHost, server_round: int, grid: Grid, msgs: list[Message], timeout: float) -> None:
    """A train round through SecAgg+: the survivors' mean (uniform weights) into ``host.apply_update``; the stages'
    bytes, survivors and dropouts into ``host.current``, each reply's clear diagnostics counted."""
    k, h = host.expected.k, host.expected.head_size
    check = expect_fingerprint(host.expected.fingerprint)
    sa = SecureRound(grid, host.secagg, timeout, host.cfg.seed, host.reject, check, k + h + 1)
    try:
        outcome = sa.run(msgs, server_round)
    except SecureAggregationError as exc:
        outcome = None
        host.skip(server_round, str(exc))
    current = host.current
    current.bytes_down += sum(sa.bytes.down.values())
    current.bytes_up += sum(sa.bytes.up.values())
    current.secagg = {"bytes": sa.bytes.as_dict(), "plain_down": sa.bytes.plain_down, "survivors": 0,
                      "dropped_after_keys": 0}
    if outcome is None:
        return
    current.secagg.update(survivors=len(outcome.survivors), dropped_after_keys=len(outcome.dropped))
    current.replied = len(outcome.survivors)
    for metrics in outcome.metrics.values():
        host.note_diagnostics(metrics.get("train-seconds"), metrics.get("worker-node"))
    if len(outcome.survivors) < host.cfg.min_train_replies:
        host.skip(server_round, f"{len(outcome.survivors)} survivors < min-train-replies {host.cfg.min_train_replies}")
        return
    delta, head, loss = split_secure(outcome.mean, k, h)
    host.apply_update(server_round, torch.cat([delta, head])[None], torch.ones(1, dtype=torch.float64), loss,
                      len(outcome.survivors), survivors=list(outcome.survivors))


def _record(conf: dict) -> RecordDict:
    return RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(conf)})
