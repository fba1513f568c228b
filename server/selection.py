"""Run a method's selection phase (``Method.select``) after the handshake, before round 1, in round 0.

The phase itself is plain torch (``shared/methods/<name>/``); :class:`GridPhase` is the Flower edge
it talks through: ``exchange`` sends ``query.<route>`` messages, counts their measured bytes into
round 0's log and drops (and logs) failed replies. Afterwards the strategy expects the tuner's new
fingerprint and k, and the global values restart from the tuner's initial values.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import torch
from flwr.app import Message
from flwr.serverapp import Grid

from server.strategy import GlobalState, RoundLog, SparseStrategy
from shared.config import RunConfig
from shared.runtime import Runtime
from wire.protocol import Parts, route_type
from wire.records import message_bytes, message_parts, to_recorddict


class GridPhase:
    """A :class:`shared.methods.base.PhaseContext` over Flower's Grid and the strategy's round-0 log."""

    def __init__(self, grid: Grid, cfg: RunConfig, rt: Runtime, strategy: SparseStrategy, rl: RoundLog,
                 saved: Mapping[str, torch.Tensor]):
        self.grid, self.cfg, self.tuner, self.strategy, self.rl = grid, cfg, rt.tuner, strategy, rl
        self.saved = dict(saved)
        self.nodes = sorted(strategy.partitions, key=lambda n: strategy.partitions[n])

    def exchange(self, route: str, payloads: Mapping[int, Parts]) -> list[tuple[int, Parts]]:
        msgs = [Message(to_recorddict(p.arrays, p.config, p.metrics), node, route_type(route))
                for node, p in payloads.items()]
        self.rl.bytes_down += sum(message_bytes(m) for m in msgs)
        good = []
        for reply in self.grid.send_and_receive(msgs, timeout=self.cfg.round_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.strategy.reject(node, f"selection failed: {reply.error.reason[:200]}", failed=True)
                continue
            self.rl.bytes_up += message_bytes(reply)
            arrays, metrics, config = message_parts(reply)
            good.append((node, Parts(arrays, config, metrics)))
        return sorted(good, key=lambda item: self.strategy.partitions.get(item[0], -1))

    def reject(self, node: int, reason: str) -> None:
        self.strategy.reject(node, reason)

    def exclude(self, node: int) -> None:
        self.strategy.partitions.pop(node, None)

    def traffic(self) -> tuple[int, int]:
        return self.rl.bytes_up, self.rl.bytes_down


def run_selection(grid: Grid, cfg: RunConfig, rt: Runtime, strategy: SparseStrategy, rl: RoundLog,
                  saved: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The method's phase, if it has one; returns what every checkpoint keeps of it ({} without a phase)."""
    if rt.method.select is None:
        return {}
    kept = rt.method.select(GridPhase(grid, cfg, rt, strategy, rl, saved))
    if not strategy.partitions:
        raise RuntimeError("no node is left for training after the selection phase")
    strategy.state = GlobalState(rt.tuner.initial_values(), strategy.state.head)
    strategy.expected = dataclasses.replace(strategy.expected, fingerprint=rt.tuner.fingerprint, k=rt.tuner.k)
    return kept
