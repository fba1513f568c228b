"""``hiwi``'s knobs (``hiwi-*``)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.knobs import knob

HIWI_TARGETS = ("bias", "weight")


@dataclass(frozen=True)
class HiwiSettings:
    """Bottleneck 16 by default: 63k values on MiniLM, about PaFi's 53k at 0.5 %."""

    KNOB_PREFIX = "hiwi-"
    bottleneck: int = knob(16, "width m of the adapter f", low=1)
    target: str = knob("bias", "what f adapts: the FFN biases or the rows of the FFN weights", choices=HIWI_TARGETS)
    normalize: bool = knob(True, "normalised f = 2s·tanh(g(x/s)/2) (false: the plain adapter, for the ablation)")
