"""``lora``'s knobs (``lora-*``)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.knobs import knob


@dataclass(frozen=True)
class LoraSettings:
    """PEFT's LoraConfig, as run-config keys."""

    KNOB_PREFIX = "lora-"
    rank: int = knob(8, "rank r of the LoRA update B·A", low=1)
    alpha: float = knob(16.0, "LoRA scale: the update is B·A·alpha/r", low=0, low_open=True)
    target_modules: str = knob("query,value", "comma-separated names of the linears to adapt")

    @property
    def targets(self) -> list[str]:
        return [t.strip() for t in self.target_modules.split(",") if t.strip()]
