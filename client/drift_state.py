"""The client's side of drift correction: SCAFFOLD's ``c_i`` in the node's state, FedProx's anchor, the reply's
``control-delta`` (the math is ``shared/drift.py``, the keys ``wire/drift.py``).

``c_i`` (k + h,) float32 lives in ``context.state`` under :data:`VARIATE` (an ArrayRecord) with :data:`VARIATE_META`
(the mask fingerprint it belongs to and the last round it changed). Flower keeps a node's state between the
messages of a run, so a node sampled rarely keeps the ``c_i`` of the last round it trained in (stale, by design:
SCAFFOLD's unsampled clients keep theirs); a node never sampled, or whose state belongs to another mask, starts
at 0. A node whose train message carries ``control-own`` (its first after the server resumed from a checkpoint)
takes that as its ``c_i``. After training it stores ``c_i + dec(enc(delta c_i))``, exactly what the server adds.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from torch import nn

from shared.config import RunConfig
from shared.drift import DriftTerms, GradientAdjuster, option_ii
from wire.codec import MalformedUpdateError
from wire.drift import CONTROL_DELTA, decode_control_down, decode_control_up, encode_control

VARIATE, VARIATE_META = "fedsparse.scaffold-c-i", "fedsparse.scaffold-meta"


def load_variate(context: Context, fingerprint: str, size: int) -> torch.Tensor:
    """This node's ``c_i`` (size,) float32 from its state; zeros if it has none for this mask."""
    meta = context.state.config_records.get(VARIATE_META)
    if VARIATE in context.state.array_records and meta is not None and meta.get("fingerprint") == fingerprint:
        stored = context.state.array_records[VARIATE]["c-i"].numpy()
        if stored.shape == (size,):
            return torch.from_numpy(np.array(stored, dtype=np.float32))
    return torch.zeros(int(size))


def keep_variate(context: Context, fingerprint: str, c_i: torch.Tensor, server_round: int) -> None:
    """Store ``c_i`` (size,) float32 in the node's state for its next sampled round."""
    context.state[VARIATE] = ArrayRecord({"c-i": Array(np.ascontiguousarray(c_i.detach().float().numpy()))})
    context.state[VARIATE_META] = ConfigRecord({"fingerprint": fingerprint, "round": int(server_round)})


class ClientDrift:
    """One train message's drift terms: build the step hook before training, the reply's arrays after.

    ``start`` (k + h,): the global vector the client begins from; ``rates`` (k + h,): each coordinate's step rate
    this round; ``params``: the trainable tensors in wire order (values, then head).
    """

    def __init__(self, cfg: RunConfig, context: Context, control: Mapping[str, np.ndarray],
                 params: Sequence[nn.Parameter], start: torch.Tensor, rates: torch.Tensor, fingerprint: str):
        self.cfg, self.context, self.fingerprint = cfg, context, fingerprint
        self.start, self.rates = start, rates
        self.scaffold = cfg.drift_correction == "scaffold"
        if not self.scaffold and control:
            raise MalformedUpdateError(f"train message carries control-variate arrays {sorted(control)[:3]}, but "
                                       f"this run has drift-correction='none'")
        self.c = self.c_i = None
        if self.scaffold:
            self.c, own = decode_control_down(control, cfg.value_dtype, start.numel(), cfg.int8_block_size)
            self.c_i = own if own is not None else load_variate(context, fingerprint, start.numel())
        terms = DriftTerms(correction=None if self.c is None else self.c - self.c_i,
                           anchor=start if cfg.prox_mu > 0 else None, mu=cfg.prox_mu)
        track = self.scaffold and cfg.scaffold_variate == "gradient"
        self.adjuster = GradientAdjuster(params, terms, track_gradients=track) if terms.active else None

    @property
    def adjust(self) -> Callable[[], None] | None:
        """The hook for :func:`shared.training.train_local` (``None``: plain training, bit for bit)."""
        return self.adjuster

    def finish(self, end: torch.Tensor, server_round: int) -> dict[str, np.ndarray]:
        """The reply's ``control-delta`` arrays after training ended at ``end`` (k + h,); {} without SCAFFOLD.

        ``c_i+`` by ``scaffold-variate`` (``shared/drift.py``): the mean raw gradient of the K steps taken, or option
        II; a client that took no step keeps its ``c_i``. The node keeps ``c_i`` + the decoded delta it sends.
        """
        if not self.scaffold:
            return {}
        dtype, block, steps = self.cfg.value_dtype, self.cfg.int8_block_size, self.adjuster.steps
        if self.cfg.scaffold_variate == "gradient":
            new = self.adjuster.mean_gradient() if steps > 0 else self.c_i
        else:
            new = option_ii(self.c_i, self.c, self.start, end, steps, self.rates)
        arrays = encode_control(new - self.c_i, CONTROL_DELTA, dtype, block)
        sent = decode_control_up(arrays, dtype, self.start.numel(), block)
        keep_variate(self.context, self.fingerprint, self.c_i + sent, server_round)
        return arrays
