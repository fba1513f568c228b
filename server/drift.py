"""The server's side of SCAFFOLD: the control variate ``c``, what each train message adds, what each reply owes.

With ``drift-correction='scaffold'`` (Karimireddy et al. 2020, Algorithm 1) the server keeps ``c`` (k + h,)
float32, starting at 0, sends it with every train message (``control``) and takes each accepted reply's
``delta c_i`` (``control-delta``); after the round's wall it sets ``c <- c + (1/N) sum_{i in S} delta c_i``
(N: the nodes admitted at the handshake, S: the accepted replies, summed in partition order). The mean is
uniform, as in the paper, whatever ``aggregator`` does with the updates.

The clients keep their ``c_i`` (``client/drift_state.py``). The server also mirrors each partition's ``c_i``
(the sum of the ``delta c_i`` it accepted from it: N x (k + h) floats, in the checkpoint with ``c``), because
a resumed run's nodes start with empty state: a node's first train message after a resume carries its
mirrored ``c_i`` (``control-own``, float32), so a resumed run is bit-identical to an uninterrupted one. The same
message re-bases a node whose last reply failed or was refused (it may have moved its ``c_i`` while the server did
not count the change), so ``c`` stays the mean of the nodes' ``c_i``.
With ``drift-correction='none'`` every hook here is a no-op and a reply carrying control arrays is refused.

A multi-task run (``views``: partition -> the indices of the values and its task's head in the (k + H,) layout of
every head, ``server/multitask.py``) keeps ``c`` over the whole layout; a node receives and returns its view (k + h_t,)
and the head part of ``c`` averages over that task's N_t nodes (the values' over all N): each task's head has the
variate its own clients' drift defines.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from shared.config import RunConfig
from wire.codec import MalformedUpdateError
from wire.drift import CONTROL, CONTROL_OWN, decode_control_up, encode_control


class ServerDrift:
    """SCAFFOLD's server state (``c``, the mirrored ``c_i``) and its part of each round."""

    def __init__(self, cfg: RunConfig, views: Mapping[int, torch.Tensor] | None = None):
        self.on = cfg.drift_correction == "scaffold"
        self.views = views  # multi-task: partition -> its indices in c (values, then its task's head span)
        self.dtype, self.block = cfg.value_dtype, cfg.int8_block_size
        self.c: torch.Tensor | None = None  # (k + h,) float32, created at the first round (k is known then)
        self.mirror: dict[int, torch.Tensor] = {}  # partition id -> its c_i as the accepted replies built it
        self.restore: set[int] = set()  # partitions whose c_i goes down once (after a resume or a refused reply)
        self.received: dict[int, torch.Tensor] = {}  # node id -> this round's accepted delta c_i
        self.sent: set[int] = set()  # partitions this round's train messages went to

    def start_round(self, size: int) -> None:
        """Forget the last round's replies; ``c`` = 0 (size,) before the first round."""
        self.received, self.sent = {}, set()
        if self.on and self.c is None:
            self.c = torch.zeros(int(size))

    def down(self, partition: int) -> dict[str, np.ndarray]:
        """Arrays a train message to ``partition`` adds: ``control`` (+ ``control-own`` once after a resume)."""
        if not self.on:
            return {}
        self.sent.add(partition)
        view = (lambda t: t) if self.views is None else (lambda t: t[self.views[partition]])
        arrays = encode_control(view(self.c), CONTROL, self.dtype, self.block)
        if partition in self.restore:
            own = self.mirror.get(partition, torch.zeros_like(self.c))
            arrays.update(encode_control(view(own), CONTROL_OWN, self.dtype, self.block))
        return arrays

    def take(self, node: int, control: Mapping[str, np.ndarray], size: int, partition: int | None = None) -> None:
        """Check and keep one reply's ``delta c_i`` (size,) (raises :class:`MalformedUpdateError`: the reply is
        refused); a multi-task node's (its view) is kept widened to ``c``'s layout."""
        if not self.on:
            if control:
                raise MalformedUpdateError(f"reply carries control-variate arrays {sorted(control)[:3]}, but this "
                                           f"run has drift-correction='none'")
            return
        if self.c is None:  # a round aggregated without configure_train (tests feed replies directly)
            self.c = torch.zeros(int(size))
        delta = decode_control_up(control, self.dtype, int(size), self.block)
        if self.views is not None:
            wide = torch.zeros_like(self.c)
            wide[self.views[partition]] = delta
            delta = wide
        self.received[node] = delta

    def absorb(self, accepted: list[tuple[int, int]], num_nodes: int) -> None:
        """``c += sum(delta c_i) / num_nodes`` over ``accepted`` (node, partition) pairs, in partition order.

        A partition sent a train message this round whose change is not absorbed (its reply failed or was
        refused) gets the server's view of its ``c_i`` with its next train message: ``c`` stays the mean ``c_i``.
        """
        if not self.on:
            return
        taken = [(pid, self.received[node]) for node, pid in sorted(accepted, key=lambda a: a[1])
                 if node in self.received]
        self.restore |= self.sent - {pid for pid, _ in taken}
        if not taken:
            return
        total = torch.stack([d for _, d in taken]).double().sum(0)
        if self.views is None:
            self.c = (self.c.double() + total / max(1, int(num_nodes))).float()
        else:  # each coordinate over the nodes that hold it: the values over all, a head over its task's
            holders = torch.zeros_like(total)
            for view in self.views.values():
                holders[view] += 1
            self.c = (self.c.double() + total / holders.clamp(min=1)).float()
        for pid, delta in taken:
            self.mirror[pid] = self.mirror.get(pid, torch.zeros_like(delta)) + delta
            self.restore.discard(pid)  # the node holds it now

    def state(self) -> dict[str, torch.Tensor]:
        """What the checkpoint keeps: ``c`` and ``c-i.<partition>`` ({} when off or before round 1)."""
        if not self.on or self.c is None:
            return {}
        return {"c": self.c, **{f"c-i.{pid}": t for pid, t in sorted(self.mirror.items())}}

    def load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Re-install :meth:`state` from a checkpoint; every mirrored ``c_i`` goes down once more."""
        if not self.on or "c" not in state:
            return
        self.c = state["c"].clone().float()
        self.mirror = {int(k[len("c-i."):]): v.clone().float() for k, v in state.items() if k.startswith("c-i.")}
        self.restore = set(self.mirror)
