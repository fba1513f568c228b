"""Selection phases run after the handshake and before round 1 (``sam``), counted in round 0.

``sam``: ask every handshaken node for its accumulated gradients (``query.sam_stats``), validate
each reply, sum them, square, keep the global top-k (:func:`shared.sam.top_by_square`), fingerprint
the mask and broadcast its positions once (``query.sam_mask``, int32 positions in the flat candidate
space); ``refine`` adds a second exchange (``query.sam_refine``) before the top-k. Nodes that cannot confirm the mask are dropped from training. From then on only values travel,
under the new fingerprint. Every checkpoint keeps the selected positions (:func:`selection_state`): a
resumed run broadcasts those again instead of selecting anew from whichever clients are there, and
skips the statistics traffic. A new phase is one function and one line in :data:`SELECTION_PHASES`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
import torch
from flwr.app import Message
from flwr.serverapp import Grid

from server.recovery import saved_selection
from server.strategy import GlobalState, RoundLog, SparseStrategy
from server.wire import message_bytes, message_parts, to_recorddict
from shared.codec import MalformedUpdateError, decode_values
from shared.config import RunConfig
from shared.masks import MaskMismatchError
from shared.runtime import Runtime
from shared.sam import global_statistic, to_flat_index, top_by_square
from shared.topk import decode_sparse



SAM_POSITIONS = "sam.mask-index"  # checkpoint key of sam's selected positions


class SelectionError(RuntimeError):
    """The selection phase could not choose a mask (no valid statistics)."""


def validate_stats(arrays: Mapping[str, Any], config: Mapping[str, Any], recipe: str, n: int, scheme: str,
                   max_bytes: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One ``sam_stats`` reply -> (positions or None for dense, float32 values); raises on any defect."""
    if config.get("fingerprint") != recipe:
        raise MaskMismatchError(f"sam recipe {str(config.get('fingerprint'))[:16]!r} != server's {recipe[:16]!r}")
    if not all(isinstance(a, np.ndarray) for a in arrays.values()):
        raise MalformedUpdateError("every array of a sam_stats reply must be an ndarray")
    if sum(int(a.nbytes) for a in arrays.values()) > max_bytes:
        raise MalformedUpdateError(f"sam_stats reply is over the {max_bytes}-byte limit")
    if scheme == "dense":
        return None, decode_values(arrays, "float32", n, "grad")
    return decode_sparse(arrays, "grad", "float32", n, 256)


def _exchange(grid: Grid, strategy: SparseStrategy, rl: RoundLog, msgs: list[Message],
              timeout: float) -> list[Message]:
    """Send, count bytes both ways into ``rl``, drop (and log) failed replies; replies by partition."""
    rl.bytes_down += sum(message_bytes(m) for m in msgs)
    good = []
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error():
            strategy._reject(reply.metadata.src_node_id, f"selection failed: {reply.error.reason[:200]}", failed=True)
            continue
        rl.bytes_up += message_bytes(reply)
        good.append(reply)
    return sorted(good, key=lambda m: strategy.partitions.get(m.metadata.src_node_id, -1))


def _collect_statistics(grid: Grid, cfg: RunConfig, tuner, strategy: SparseStrategy, rl: RoundLog,
                        nodes: list[int]) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
    """``query.sam_stats`` to every node; the valid contributions, in partition order."""
    _, scheme, _ = tuner.settings
    msgs = [Message(to_recorddict({}, {"fingerprint": tuner.recipe}), n, "query.sam_stats") for n in nodes]
    contributions = []
    for reply in _exchange(grid, strategy, rl, msgs, cfg.round_timeout):
        arrays, _, config = message_parts(reply)
        try:
            contributions.append(validate_stats(arrays, config, tuner.recipe, tuner.num_candidates, scheme,
                                                int(cfg.max_reply_mb * 2**20)))
        except (MalformedUpdateError, MaskMismatchError, KeyError, TypeError, ValueError) as exc:
            strategy._reject(reply.metadata.src_node_id, f"sam_stats {exc.__class__.__name__}: {exc}")
    if not contributions:
        raise SelectionError("no node sent valid sam statistics: " + "; ".join(rl.reasons[:3]))
    return contributions


def _refine(grid: Grid, cfg: RunConfig, tuner, strategy: SparseStrategy, rl: RoundLog, nodes: list[int],
            first: list[tuple[torch.Tensor | None, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Second pass of ``refine``: every node's exact sum at the union U of the first pass's positions."""
    union = torch.unique(torch.cat([idx for idx, _ in first]))
    conf = {"fingerprint": tuner.recipe}
    msgs = [Message(to_recorddict({"union-index": union.to(torch.int32).numpy()}, conf), n, "query.sam_refine")
            for n in nodes]
    contributions = []
    for reply in _exchange(grid, strategy, rl, msgs, cfg.round_timeout):
        arrays, _, config = message_parts(reply)
        try:
            _, vals = validate_stats(arrays, config, tuner.recipe, union.numel(), "dense",
                                     int(cfg.max_reply_mb * 2**20))
            contributions.append((union, vals))
        except (MalformedUpdateError, MaskMismatchError, KeyError, TypeError, ValueError) as exc:
            strategy._reject(reply.metadata.src_node_id, f"sam_refine {exc.__class__.__name__}: {exc}")
    if not contributions:
        raise SelectionError("no node sent valid sam refine values: " + "; ".join(rl.reasons[:3]))
    return contributions


def _broadcast_mask(grid: Grid, cfg: RunConfig, tuner, strategy: SparseStrategy, rl: RoundLog, nodes: list[int],
                    mask) -> set[int]:
    """``query.sam_mask`` (int32 flat candidate positions) to every node; drop nodes that do not confirm."""
    flat = to_flat_index(dict(zip(mask.names, mask.indices)), tuner.shapes).to(torch.int32).numpy()
    conf = {"fingerprint": tuner.recipe, "mask-fingerprint": mask.fingerprint}
    msgs = [Message(to_recorddict({"mask-index": flat}, conf), n, "query.sam_mask") for n in nodes]
    confirmed = {r.metadata.src_node_id for r in _exchange(grid, strategy, rl, msgs, cfg.round_timeout)
                 if message_parts(r)[2].get("fingerprint") == mask.fingerprint}
    for node in set(nodes) - confirmed:
        strategy._reject(node, "did not confirm the sam mask; node excluded from training")
        strategy.partitions.pop(node, None)
    if not strategy.partitions:
        raise SelectionError("no node confirmed the sam mask")
    return confirmed


def sam_selection(grid: Grid, cfg: RunConfig, rt: Runtime, strategy: SparseStrategy, rl: RoundLog) -> None:
    """Federated SAM: statistics up, global top-k on the server, positions down once, then values only."""
    tuner, nodes = rt.tuner, sorted(strategy.partitions, key=lambda n: strategy.partitions[n])
    up0, down0 = rl.bytes_up, rl.bytes_down
    saved = saved_selection(cfg).get(SAM_POSITIONS)
    if saved is not None:  # resume: the checkpointed mask, not a new selection from today's clients
        mask, contributions = tuner.mask_from_flat_index(saved.long()), []
    else:
        contributions = _collect_statistics(grid, cfg, tuner, strategy, rl, nodes)
        if tuner.settings[1] == "refine":
            contributions = _refine(grid, cfg, tuner, strategy, rl, nodes, contributions)
        stat = global_statistic(contributions, tuner.num_candidates)  # sum of raw sums, then squared below
        mask = tuner.mask_from_selection(top_by_square(stat, tuner.shapes, cfg.mask_density, cfg.mask_scope))
    confirmed = _broadcast_mask(grid, cfg, tuner, strategy, rl, nodes, mask)
    tuner.install(mask)
    strategy.state = GlobalState(tuner.initial_values(), strategy.state.head)
    strategy.expected = dataclasses.replace(strategy.expected, fingerprint=mask.fingerprint, k=mask.k)
    tuner.selection_report = {"selection_bytes_up": rl.bytes_up - up0, "selection_bytes_down": rl.bytes_down - down0,
                              "selection_clients": len(contributions), "selection_confirmed": len(confirmed),
                              "selection_resumed": saved is not None}
    how = "from the checkpoint" if saved is not None else f"from {len(contributions)} clients ({tuner.settings[1]})"
    print(f"fedsparse: sam selected k={mask.k} {how}; mask {mask.fingerprint[:12]}; selection up "
          f"{rl.bytes_up - up0:,} B, down {rl.bytes_down - down0:,} B", flush=True)


def selection_state(cfg: RunConfig, rt: Runtime) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the selection phase: sam's mask as int32 flat candidate positions."""
    if cfg.method != "sam":
        return {}
    mask = rt.tuner.mask
    return {SAM_POSITIONS: to_flat_index(dict(zip(mask.names, mask.indices)), rt.tuner.shapes).to(torch.int32)}


SelectionPhase = Callable[[Grid, RunConfig, Runtime, SparseStrategy, RoundLog], None]
SELECTION_PHASES: dict[str, SelectionPhase] = {
    "sam": sam_selection,
}


def run_selection(grid: Grid, cfg: RunConfig, rt: Runtime, strategy: SparseStrategy, rl: RoundLog) -> None:
    """Run ``cfg.method``'s selection phase, if it has one, adding its traffic to round 0's log ``rl``."""
    phase = SELECTION_PHASES.get(cfg.method)
    if phase is not None:
        phase(grid, cfg, rt, strategy, rl)
