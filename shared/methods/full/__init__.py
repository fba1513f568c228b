"""``full``: dense FedAvg of every pre-trained parameter (the upper bound on bytes).

Its default learning rate is full fine-tuning's (3e-5): at the sparse methods' 5e-3 it diverges
(AG News, 20 clients: loss 1.39 -> 2.62 in 4 rounds, accuracy at chance); centrally, 3e-5 reaches
86.4 % on SST-2 with the bundled MiniLM.
"""

from __future__ import annotations

from shared.config import RunConfig
from shared.methods.base import Method
from shared.methods.full.tuner import DenseTuner
from shared.model import BaseModel


def build_full(base: BaseModel, cfg: RunConfig, digest: str) -> DenseTuner:
    return DenseTuner(base, "full", digest)


METHOD = Method(name="full", help="every non-head parameter (dense FedAvg)", build=build_full, lr=3e-5,
                head_lr=0.0)  # the head at the encoder's rate, as in full fine-tuning
