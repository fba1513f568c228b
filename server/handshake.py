"""The handshake's wall: every round-0 reply is checked before its node may take part.

A valid reply carries the server's mask fingerprint and integer metrics ``partition-id`` in
[0, ``num-partitions``), ``num-partitions`` >= 1 and ``num-examples`` (the node's declared partition
size, the cap on what its train replies may claim). Partition ids claimed by more than one node are
refused for all of them: which one is genuine cannot be told, and sampling is by partition id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from server.validation import MAX_NUM_EXAMPLES
from shared.masks import MaskMismatchError
from wire.codec import MalformedUpdateError

MAX_PARTITIONS = 10**7


@dataclass(frozen=True)
class Admission:
    """What a node declared at the handshake."""

    partition_id: int
    num_partitions: int
    num_examples: int


def _integer(metrics: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedUpdateError(f"handshake metric '{key}' must be an integer, got {type(value).__name__}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise MalformedUpdateError(f"handshake metric '{key}' must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise MalformedUpdateError(f"handshake metric '{key}' must be in {low}..{high}, got {int(value)}")
    return int(value)


def admit(metrics: Mapping[str, Any], config: Mapping[str, Any], fingerprint: str) -> Admission:
    """Check one handshake reply's plain parts; raises with the reason (never returns a partial admission)."""
    if config.get("fingerprint") != fingerprint:
        raise MaskMismatchError("mask fingerprint differs from the server's; node excluded")
    nparts = _integer(metrics, "num-partitions", 1, MAX_PARTITIONS)
    pid = _integer(metrics, "partition-id", 0, nparts - 1)
    return Admission(pid, nparts, _integer(metrics, "num-examples", 0, MAX_NUM_EXAMPLES))


def duplicates(admitted: Mapping[int, Admission]) -> set[int]:
    """Nodes whose partition id another admitted node claims too."""
    claims: dict[int, list[int]] = {}
    for node, adm in admitted.items():
        claims.setdefault(adm.partition_id, []).append(node)
    return {node for nodes in claims.values() if len(nodes) > 1 for node in nodes}
