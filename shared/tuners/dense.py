"""Dense tuners: ``full`` (FedAvg of every pre-trained parameter) and ``topk`` (dense local training,
index-carrying uploads; the wire side lives in ``shared/topk.py``).

The global state stays one flat float32 vector: ``values`` (N,) is the change from the base of every
parameter except the task head, in ``named_parameters()`` order, wired into the forward with a
parametrization ``W = W_base + values[slice].view_as(W_base)``; the head trains densely as usual.
N is the upper bound on what a client can send (N * 4 bytes in float32).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from shared.config import RunConfig
from shared.masks import encoder_matrix_names
from shared.model import BaseModel
from shared.sparse import MergeError
from shared.tuners.common import ValueHeadMixin, check_vector


class _AddDense(nn.Module):
    """Parametrization: tensor + a slice of the tuner's value vector, viewed in the tensor's shape."""

    def __init__(self, tuner: "DenseTuner", start: int, stop: int):
        super().__init__()
        self._tuner = [tuner]  # list: keep the tuner out of the module tree
        self.start, self.stop = start, stop

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t + self._tuner[0].values[self.start:self.stop].view_as(t).to(t.dtype)


class DenseTuner(ValueHeadMixin):
    """All non-head parameters train; ``values`` (N,) float32 holds their change from the base.

    Implements the tuner contract of ``shared.tuner.SparseTuner``. ``topk_k`` (0 for ``full``) is the
    number of entries a ``topk`` client uploads per round.
    """

    def __init__(self, base: BaseModel, method: str, digest: str, topk_k: int = 0):
        model, self.head_names = base.model, tuple(base.head_names)
        params = dict(model.named_parameters())
        self._head = {n: params[n] for n in self.head_names}
        self.names = tuple(n for n in params if n not in self._head)
        self.shapes = tuple(tuple(params[n].shape) for n in self.names)
        sizes = [math.prod(s) for s in self.shapes]
        self.offsets = tuple([0] + list(torch.tensor(sizes).cumsum(0).tolist()))
        self.method, self.topk_k = method, int(topk_k)
        self.values = nn.Parameter(torch.zeros(self.offsets[-1]))
        h = hashlib.sha256(f"{digest}|{method}|dense|{self.offsets[-1]}|topk={self.topk_k}|".encode())
        h.update("|".join(self.names).encode())
        self._fingerprint = h.hexdigest()
        modules = dict(model.named_modules())
        for i, name in enumerate(self.names):
            mod_name, _, attr = name.rpartition(".")
            parametrize.register_parametrization(modules[mod_name], attr,
                                                 _AddDense(self, self.offsets[i], self.offsets[i + 1]), unsafe=True)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def k(self) -> int:
        return int(self.values.numel())

    def initial_values(self) -> torch.Tensor:
        """No change from the base: zeros (N,)."""
        return torch.zeros(self.k)

    def merge(self, fresh: nn.Module, values: torch.Tensor, head: dict[str, torch.Tensor]) -> nn.Module:
        """Write base + values and the head into ``fresh`` (an unwrapped base copy); checks before writing."""
        check_vector(values, self.k)
        params = dict(fresh.named_parameters())
        for name, t in head.items():
            if name not in params or params[name].shape != t.shape or not torch.isfinite(t).all():
                raise MergeError(f"head tensor {name} is missing, misshapen or non-finite; nothing merged")
        with torch.no_grad():
            for i, name in enumerate(self.names):
                params[name].add_(values[self.offsets[i]:self.offsets[i + 1]].view_as(params[name]))
            for name, t in head.items():
                params[name].copy_(t)
        return fresh

    def save_artifact(self, out, values: torch.Tensor, head: dict[str, torch.Tensor], cfg: RunConfig,
                      source: str) -> Path:
        """``delta.safetensors``: the dense change per parameter and the head (as large as the model)."""
        tensors = {f"delta.{n}": values[self.offsets[i]:self.offsets[i + 1]].view(self.shapes[i]).contiguous()
                   for i, n in enumerate(self.names)}
        tensors.update({f"head.{n}": t.detach().float().contiguous() for n, t in head.items()})
        meta = {"format": "fedsparse-dense-delta-v1", "method": self.method, "fingerprint": self.fingerprint,
                "model": source, "k": str(self.k), "topk_k": str(self.topk_k)}
        path = Path(out) / "delta.safetensors"
        save_file(tensors, str(path), metadata=meta)
        return path

    def payload_bytes(self, bytes_per_value: int) -> int:
        """One client's upload without framing; for topk its k' values with their int32 positions, and the head."""
        if not self.topk_k:
            return super().payload_bytes(bytes_per_value)
        return self.topk_k * (int(bytes_per_value) + 4) + self.head_size * int(bytes_per_value)

    def describe(self) -> dict:
        """Method-specific figures for summary.json."""
        if self.method == "topk":
            return {"topk_k": self.topk_k, "index_dtype": "int32"}
        return {}




def full_tuner(base: BaseModel, cfg: RunConfig, digest: str) -> DenseTuner:
    """``full``: dense FedAvg of every pre-trained parameter (the upper bound on bytes)."""
    return DenseTuner(base, "full", digest)


def topk_tuner(base: BaseModel, cfg: RunConfig, digest: str) -> DenseTuner:
    """``topk``: dense local training; uploads carry PaFi's budget k = density * (candidate entries)."""
    params = dict(base.model.named_parameters())
    n_cand = sum(params[n].numel() for n in encoder_matrix_names(base.model))
    return DenseTuner(base, "topk", digest, topk_k=max(1, int(cfg.mask_density * n_cand)))
