"""``sam``'s knobs (``sam-*``)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.knobs import knob

SCHEMES = ("dense", "local-top", "refine")


@dataclass(frozen=True)
class SamSettings:
    """How the selection statistic is gathered (see ``statistic.py``)."""

    KNOB_PREFIX = "sam-"
    batches: int = knob(8, "local batches whose raw gradients each client sums at the pre-trained weights", low=1)
    scheme: str = knob("dense", "dense (exact), local-top (each client's own top entries) or refine", choices=SCHEMES)
    local_factor: float = knob(2.0, "local-top/refine: each client reports its top local-factor·k entries", low=1)
