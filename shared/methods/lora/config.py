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
    target_modules: str = knob("auto", "comma-separated names of the linears to adapt; auto = the attention query "
                               "and value projections (BERT query,value; GPT-2 c_attn; Llama q_proj,v_proj)")

    @property
    def targets(self) -> list[str]:
        """The names given, or [] for ``auto`` (the tuner asks the model)."""
        return [] if self.target_modules.strip() == "auto" else \
            [t.strip() for t in self.target_modules.split(",") if t.strip()]
