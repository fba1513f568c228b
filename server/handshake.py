"""The handshake's wall: every round-0 reply is checked before its node may take part.

A valid reply carries the server's mask fingerprint and integer metrics ``partition-id`` in
[0, ``num-partitions``), ``num-partitions`` >= 1 and ``num-examples`` (the node's declared partition
size, the cap on what its train replies may claim). A partition id stays with the node whose valid reply
claimed it first (replies are read in the order they arrive); a later claimant is refused, so a node that copies
another's id cannot evict it. A handshake that admits no node ends the run with one line
(:class:`HandshakeError`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from flwr.app import Message
from flwr.serverapp import Grid

from server.rounds import RoundLog
from server.validation import MAX_NUM_EXAMPLES
from shared.masks import MaskMismatchError
from wire.codec import MalformedUpdateError
from wire.protocol import HANDSHAKE
from wire.records import message_bytes, message_parts, to_recorddict

MAX_PARTITIONS = 10**7


class HandshakeError(RuntimeError):
    """No node passed the handshake: the run cannot start (the message says why, for the first nodes)."""


@dataclass(frozen=True)
class Admission:
    """What a node declared at the handshake."""

    partition_id: int
    num_partitions: int
    num_examples: int
    task: str = ""  # a multi-task run: the task the node trains (its partition's, checked)


def _integer(metrics: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedUpdateError(f"handshake metric '{key}' must be an integer, got {type(value).__name__}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise MalformedUpdateError(f"handshake metric '{key}' must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise MalformedUpdateError(f"handshake metric '{key}' must be in {low}..{high}, got {int(value)}")
    return int(value)


def admit(metrics: Mapping[str, Any], config: Mapping[str, Any], fingerprint: str,
          tasks: Sequence[tuple[str, int]] | None = None) -> Admission:
    """Check one handshake reply's plain parts; raises with the reason (never returns a partial admission).

    ``tasks``: a multi-task run's assignment, (task, its head's size) per global partition id; the node must count
    that many partitions and report its partition's task and head size (config ``task``, metric ``head-size``)."""
    if config.get("fingerprint") != fingerprint:
        raise MaskMismatchError("mask fingerprint differs from the server's; node excluded")
    nparts = _integer(metrics, "num-partitions", 1, MAX_PARTITIONS)
    pid = _integer(metrics, "partition-id", 0, nparts - 1)
    examples = _integer(metrics, "num-examples", 0, MAX_NUM_EXAMPLES)
    if tasks is None:
        return Admission(pid, nparts, examples)
    if nparts != len(tasks):
        raise MalformedUpdateError(f"num-partitions {nparts} differs from the {len(tasks)} nodes the run's tasks "
                                   f"assign")
    task, size = tasks[pid]
    if config.get("task") != task:
        raise MalformedUpdateError(f"node reports task {str(config.get('task'))[:40]!r}, the run assigns partition "
                                   f"{pid} to {task!r}")
    head = _integer(metrics, "head-size", 0, MAX_NUM_EXAMPLES)
    if head != size:
        raise MalformedUpdateError(f"node reports a {head}-value head for task {task!r}, the server's has {size}")
    return Admission(pid, nparts, examples, task)


def later_claimants(admitted: Mapping[int, Admission]) -> dict[int, int]:
    """Node -> the node that claimed its partition id first, for every node whose id an earlier node holds.

    ``admitted`` in arrival order (a dict keeps insertion order): the first valid claim of an id keeps it.
    """
    holder: dict[int, int] = {}
    later: dict[int, int] = {}
    for node, adm in admitted.items():
        if adm.partition_id in holder:
            later[node] = holder[adm.partition_id]
        else:
            holder[adm.partition_id] = node
    return later


def run_handshake(host, grid: Grid, min_nodes: int, wait_s: float) -> RoundLog:
    """Ask every node of ``grid`` for its partition id (and check its fingerprint, and in a multi-task run its task):
    round 0's traffic, logged in ``host.current``. ``host``: the strategy, whose ``partitions``, ``declared`` and
    ``node_tasks`` are set from the admitted replies; a node refused is named through ``host.reject``."""
    host.current = RoundLog(0)
    deadline = time.monotonic() + wait_s
    while len(list(grid.get_node_ids())) < min_nodes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(list(grid.get_node_ids()))} nodes connected after {wait_s:.0f}s; "
                               f"min-available-nodes is {min_nodes}")
        time.sleep(1.0)
    conf = {"fingerprint": host.expected.fingerprint}
    msgs = [Message(to_recorddict({}, conf), node, HANDSHAKE) for node in sorted(grid.get_node_ids())]
    host.current.sampled = len(msgs)
    host.current.bytes_down = sum(message_bytes(m) for m in msgs)
    admitted = {}
    for reply in grid.send_and_receive(msgs, timeout=max(host.cfg.round_timeout, wait_s)):  # cold starts
        node = reply.metadata.src_node_id
        if reply.has_error():
            host.reject(node, f"handshake failed: {reply.error.reason[:200]}", failed=True)
            continue
        try:  # the handshake's wall: any malformed reply excludes its node, never crashes the server
            host.current.bytes_up += message_bytes(reply)
            if node in admitted:
                raise MalformedUpdateError("second handshake reply from the same node")
            _, metrics, config = message_parts(reply)
            admitted[node] = admit(metrics, config, host.expected.fingerprint, host.assignment)
        except Exception as exc:  # noqa: BLE001
            admitted.pop(node, None)
            host.reject(node, f"handshake {exc.__class__.__name__}: {str(exc)[:200]}")
    clash = later_claimants(admitted)
    for node, holder in clash.items():
        host.reject(node, f"partition id {admitted[node].partition_id} is held by node {holder}, which claimed it "
                          f"first")
    host.partitions = {n: a.partition_id for n, a in admitted.items() if n not in clash}
    host.declared = {n: a.num_examples for n, a in admitted.items() if n not in clash}
    host.node_tasks = {n: a.task for n, a in admitted.items() if n not in clash}
    host.current.replied = len(host.partitions)
    if not host.partitions:
        raise HandshakeError(f"no node passed the handshake ({len(host.current.reasons)} refused; first: "
                             + "; ".join(host.current.reasons[:3]) + "); check that the nodes run this app "
                             "with the same model and settings")
    return host.current
