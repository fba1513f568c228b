"""``sam``'s selection phase on the server: after the handshake, before round 1, counted in round 0.

Ask every handshaken node for its accumulated gradients (``query.sam_stats``), validate each reply,
sum them, square, keep the global top-k (:func:`~shared.methods.sam.statistic.top_by_square`),
fingerprint the mask and broadcast its positions once (``query.sam_mask``, int32 positions in the
flat candidate space); ``refine`` adds a second exchange (``query.sam_refine``) before the top-k.
Nodes that cannot confirm the mask are excluded from training. From then on only values travel,
under the new fingerprint. The phase returns the positions, which every checkpoint keeps: a resumed
run broadcasts those again instead of selecting anew, and skips the statistics traffic.
Plain torch: it talks through a :class:`~shared.methods.base.PhaseContext`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from shared.masks import MaskMismatchError
from shared.methods.base import PhaseContext
from shared.methods.sam.statistic import global_statistic, to_flat_index, top_by_square
from wire.codec import MalformedUpdateError, decode_values
from wire.index import decode_sparse
from wire.protocol import Parts

SAM_POSITIONS = "sam.mask-index"  # checkpoint key of sam's selected positions
Contribution = tuple[torch.Tensor | None, torch.Tensor]  # (positions or None for dense, float32 values)


class SelectionError(RuntimeError):
    """The selection phase could not choose a mask (no valid statistics)."""


def validate_stats(arrays: Mapping[str, Any], config: Mapping[str, Any], recipe: str, n: int, scheme: str,
                   max_bytes: int) -> Contribution:
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


def _gather(ctx: PhaseContext, route: str, arrays: dict[str, np.ndarray], n: int, scheme: str) -> list[Contribution]:
    """``query.<route>`` to every node; the valid contributions, in partition order."""
    recipe = ctx.tuner.recipe
    payloads = {node: Parts(arrays, {"fingerprint": recipe}) for node in ctx.nodes}
    out = []
    for node, reply in ctx.exchange(route, payloads):
        try:
            out.append(validate_stats(reply.arrays, reply.config or {}, recipe, n, scheme, ctx.cfg.max_reply_bytes))
        except (MalformedUpdateError, MaskMismatchError, KeyError, TypeError, ValueError) as exc:
            ctx.reject(node, f"{route} {exc.__class__.__name__}: {exc}")
    if not out:
        raise SelectionError(f"no node sent valid sam {route} replies")
    return out


def _choose(ctx: PhaseContext) -> tuple[Any, int]:
    """The mask from the clients' statistics (sum, then square, then top-k) and how many contributed."""
    tuner = ctx.tuner
    scheme = tuner.settings.scheme
    contributions = _gather(ctx, "sam_stats", {}, tuner.num_candidates, scheme)
    if scheme == "refine":  # second pass: every node's exact sum at the union U of the first pass's positions
        union = torch.unique(torch.cat([idx for idx, _ in contributions]))
        exact = _gather(ctx, "sam_refine", {"union-index": union.to(torch.int32).numpy()}, union.numel(), "dense")
        contributions = [(union, vals) for _, vals in exact]
    stat = global_statistic(contributions, tuner.num_candidates)
    selected = top_by_square(stat, tuner.shapes, ctx.cfg.mask_density, ctx.cfg.mask_scope)
    return tuner.mask_from_selection(selected), len(contributions)


def _broadcast(ctx: PhaseContext, mask, flat: torch.Tensor) -> int:
    """``query.sam_mask`` to every node; nodes that do not confirm are excluded. Returns the confirmed count."""
    conf = {"fingerprint": ctx.tuner.recipe, "mask-fingerprint": mask.fingerprint}
    payloads = {node: Parts({"mask-index": flat.to(torch.int32).numpy()}, conf) for node in ctx.nodes}
    confirmed = {node for node, reply in ctx.exchange("sam_mask", payloads)
                 if (reply.config or {}).get("fingerprint") == mask.fingerprint}
    for node in [n for n in ctx.nodes if n not in confirmed]:
        ctx.reject(node, "did not confirm the sam mask; node excluded from training")
        ctx.exclude(node)
    if not confirmed:
        raise SelectionError("no node confirmed the sam mask")
    return len(confirmed)


def select_sam(ctx: PhaseContext) -> dict[str, torch.Tensor]:
    """Federated SAM: statistics up, global top-k on the server, positions down once, then values only."""
    tuner = ctx.tuner
    up0, down0 = ctx.traffic()
    saved = ctx.saved.get(SAM_POSITIONS)
    if saved is not None:  # resume: the checkpointed mask, not a new selection from today's clients
        mask, used = tuner.mask_from_flat_index(saved.long()), 0
    else:
        mask, used = _choose(ctx)
    flat = to_flat_index(dict(zip(mask.names, mask.indices)), tuner.shapes)
    confirmed = _broadcast(ctx, mask, flat)
    tuner.install(mask)
    up, down = ctx.traffic()
    tuner.selection_report = {"selection_bytes_up": up - up0, "selection_bytes_down": down - down0,
                              "selection_clients": used, "selection_confirmed": confirmed,
                              "selection_resumed": saved is not None}
    how = "from the checkpoint" if saved is not None else f"from {used} clients ({tuner.settings.scheme})"
    print(f"fedsparse: sam selected k={mask.k} {how}; mask {mask.fingerprint[:12]}; selection up "
          f"{up - up0:,} B, down {down - down0:,} B", flush=True)
    return {SAM_POSITIONS: flat.to(torch.int32)}
