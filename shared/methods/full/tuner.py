"""The dense tuner of ``full`` (FedAvg of every pre-trained parameter), also the local model of ``topk``.

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
from torch import nn
from torch.nn.utils import parametrize

from shared.artifacts import head_tensors, read_tensors, write_tensors
from shared.config import RunConfig
from shared.masks import MaskMismatchError
from shared.methods.base import Tuner
from shared.methods.common import check_vector
from shared.model import BaseModel
from shared.sparse import MergeError

FORMAT = "fedsparse-dense-delta-v1"


class _AddDense(nn.Module):
    """Parametrization: tensor + a slice of the tuner's value vector, viewed in the tensor's shape."""

    def __init__(self, tuner: "DenseTuner", index: int, start: int, stop: int):
        super().__init__()
        self._tuner = [tuner]  # list: keep the tuner out of the module tree
        self.index, self.start, self.stop = index, start, stop

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t + self._tuner[0].piece(self.index, self.start, self.stop).view_as(t).to(t.dtype)


class DenseTuner(Tuner):
    """All non-head parameters train; ``values`` (N,) float32 holds their change from the base.

    ``upload_k`` (0 = all N) is how many entries a client uploads per round; it is part of the
    fingerprint (recorded as ``topk=``), so nodes that would send different counts refuse each other.
    """

    def __init__(self, base: BaseModel, method: str, digest: str, upload_k: int = 0):
        model, self.head_names = base.model, tuple(base.head_names)
        params = dict(model.named_parameters())
        self._head = {n: params[n] for n in self.head_names}
        self.names = tuple(n for n in params if n not in self._head)
        self.shapes = tuple(tuple(params[n].shape) for n in self.names)
        sizes = [math.prod(s) for s in self.shapes]
        self.offsets = tuple([0] + list(torch.tensor(sizes).cumsum(0).tolist()))
        self.method, self.upload_k = method, int(upload_k)
        self.values = nn.Parameter(torch.zeros(self.offsets[-1]))
        h = hashlib.sha256(f"{digest}|{method}|dense|{self.offsets[-1]}|topk={self.upload_k}|".encode())
        h.update("|".join(self.names).encode())
        self._fingerprint = h.hexdigest()
        modules = dict(model.named_modules())
        for i, name in enumerate(self.names):
            mod_name, _, attr = name.rpartition(".")
            parametrize.register_parametrization(modules[mod_name], attr,
                                                 _AddDense(self, i, self.offsets[i], self.offsets[i + 1]), unsafe=True)
        # One split of the value vector per forward pass, shared by every parameter: autograd's backward of a
        # split is one concatenation (O(N)), while ~100 separate slices would each scatter their gradient
        # into an N-long zero tensor (O(N) per parameter: most of a full step's time on MiniLM).
        self._pieces: tuple[torch.Tensor, ...] | None = None
        self._sizes = [b - a for a, b in zip(self.offsets[:-1], self.offsets[1:])]
        model.register_forward_pre_hook(self._split_values)
        model.register_forward_hook(self._drop_pieces)

    def _split_values(self, module: nn.Module, args) -> None:
        self._pieces = self.values.split(self._sizes)

    def _drop_pieces(self, module: nn.Module, args, output) -> None:
        self._pieces = None  # outside a forward pass a parameter reads its own slice (always current)

    def piece(self, index: int, start: int, stop: int) -> torch.Tensor:
        """The value entries of parameter ``index``: this forward pass's split, else a slice of ``values``."""
        return self._pieces[index] if self._pieces is not None else self.values[start:stop]

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

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
        meta = {"format": FORMAT, "method": self.method, "fingerprint": self.fingerprint,
                "model": source, "k": str(self.k), "topk_k": str(self.upload_k)}
        return write_tensors(out, tensors, meta)

    def apply_artifact(self, out, fresh: nn.Module) -> nn.Module:
        """Rebuild base + delta from ``out/delta.safetensors`` (checked against this tuner's fingerprint)."""
        path = Path(out) / "delta.safetensors"
        tensors, meta = read_tensors(path)
        if meta.get("format") != FORMAT or meta.get("fingerprint") != self.fingerprint:
            raise MaskMismatchError(f"{path} is not a dense delta for this base model and method ({self.method})")
        values = torch.cat([tensors[f"delta.{n}"].reshape(-1) for n in self.names])
        return self.merge(fresh, values, head_tensors(tensors))
