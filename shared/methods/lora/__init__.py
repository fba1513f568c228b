"""``lora``: LoRA through PEFT (Hu et al. 2022); only the adapter weights travel (``tuner.py``)."""

from __future__ import annotations

from shared.config import RunConfig
from shared.methods.base import Method
from shared.methods.lora.config import LoraSettings
from shared.methods.lora.tuner import LoraTuner
from shared.model import BaseModel


def build_lora(base: BaseModel, cfg: RunConfig, digest: str) -> LoraTuner:
    return LoraTuner(base, METHOD.settings_of(cfg), cfg.seed, digest)


METHOD = Method(name="lora", help="PEFT LoRA on the attention query/value linears", build=build_lora,
                settings=LoraSettings, lr=1e-3)
