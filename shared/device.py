"""Where the compute runs: the ``device`` and ``precision`` knobs, resolved once per process.

``device``: ``auto`` (CUDA if available, else Apple MPS, else the CPU), or explicitly ``cpu``,
``cuda``, ``cuda:N``, ``mps``. The model, every batch, the value vector and the tuner's index and
pattern tensors live there, and evaluation runs there; everything that travels (wire codecs,
checkpoints, artifacts, the server's global state) is on the CPU: the boundary is where a tuner's
values or head are read out (:func:`to_cpu`) or loaded in (``copy_`` across devices).

``precision``: ``fp32``, or ``bf16`` autocast (the forward's matmuls in bfloat16); the value
vector, the head and the optimizer state stay float32 either way.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import Mapping

import torch

from shared.knobs import ConfigError

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")
PRECISIONS = ("fp32", "bf16")


def check_device_name(name: str) -> None:
    """Raise :class:`ConfigError` unless ``name`` is a device spelling this knob accepts."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise ConfigError(f"run-config key 'device' is {name!r}; use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` for the ``device`` knob; an unavailable one is refused in one line."""
    check_device_name(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but this machine's torch sees no CUDA GPU "
                              f"(torch {torch.__version__}); set device=auto or device=cpu")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={name} but this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); pick one of those or device=auto")
        return torch.device("cuda", index)
    if name == "mps" and not _mps_available():
        raise ConfigError("device=mps but Apple MPS is not available here; set device=auto or device=cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``precision="bf16"``; a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch dict with every tensor on ``device`` (no copy where it already is)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def to_cpu(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies-or-views of a dict of tensors (what may travel)."""
    return {k: v.detach().cpu() for k, v in tensors.items()}


_SPARSE_OK: dict[str, bool] = {}


def sampled_addmm_works(device: torch.device) -> bool:
    """Whether ``torch.sparse.sampled_addmm`` over a CSR pattern runs on ``device`` (probed once, float32)."""
    key = str(device)
    if key not in _SPARSE_OK:
        try:
            crow = torch.tensor([0, 1, 2], device=device)
            col = torch.tensor([1, 0], device=device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                pattern = torch.sparse_csr_tensor(crow, col, torch.zeros(2, device=device), (2, 2),
                                                  check_invariants=True)
            a, b = torch.ones(2, 3, device=device), torch.ones(3, 2, device=device)
            out = torch.sparse.sampled_addmm(pattern, a, b, beta=0.0).values()
            _SPARSE_OK[key] = bool(torch.allclose(out.cpu(), torch.full((2,), 3.0)))
        except (RuntimeError, NotImplementedError, TypeError):
            _SPARSE_OK[key] = False
    return _SPARSE_OK[key]

