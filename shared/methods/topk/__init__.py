"""``topk``: dense local training; each upload is the k largest |delta| entries with int32 positions.

The index-carrying baseline a shared mask avoids: k = PaFi's budget (mask-density of the encoder's
matrices). Local training is full's (:class:`~shared.methods.full.tuner.DenseTuner`); what differs
is the update codec (``codec.py``). Its default rates: 2e-4 for the dense body (at full's 3e-5 the
global model stayed at chance for 5 rounds, 49.4 %) and 5e-3 for the head.
"""

from __future__ import annotations

from shared.config import RunConfig
from shared.masks import block_matrix_names
from shared.methods.base import Method
from shared.methods.full.tuner import DenseTuner
from shared.methods.topk.codec import TopkCodec
from shared.model import BaseModel


class TopkTuner(DenseTuner):
    """A dense tuner whose updates travel through :class:`TopkCodec`."""

    def __init__(self, base: BaseModel, digest: str, upload_k: int):
        super().__init__(base, "topk", digest, upload_k)
        self.codec = TopkCodec(upload_k)

    def describe(self) -> dict:
        return {"topk_k": self.upload_k, "index_dtype": "int32"}


def build_topk(base: BaseModel, cfg: RunConfig, digest: str) -> TopkTuner:
    """k = ``mask-density`` of the candidate entries (at least 1)."""
    params = dict(base.model.named_parameters())
    n_cand = sum(params[n].numel() for n in block_matrix_names(base.model))
    return TopkTuner(base, digest, max(1, int(cfg.mask_density * n_cand)))


METHOD = Method(name="topk", help="dense local training; upload = the k largest |delta| with int32 positions",
                build=build_topk, lr=2e-4, head_lr=5e-3, aligned=False)
