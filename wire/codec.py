"""Value vectors <-> wire arrays, with strict decoding.

A (k,) float32 vector travels as numpy arrays (Flower stores each as ``.npy`` bytes):

=========  ==============================================================
float32    ``{p}``: float32 (k,)
float16    ``{p}``: float16 (k,)
bfloat16   ``{p}``: uint16 (k,) holding the bfloat16 bit patterns
int8       ``{p}``: int8 (k,) and ``{p}.scales``: float32 (ceil(k/block),),
           symmetric per-block scale max|x|/127
=========  ==============================================================

Decoding checks the key set, dtype, shape, length, scale count and finiteness and raises
:class:`MalformedUpdateError` naming what is wrong; it never returns a partially valid vector.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np
import torch


class MalformedUpdateError(ValueError):
    """A wire array set does not decode to a valid value vector."""


def _enc_float32(x: torch.Tensor, p: str, block: int) -> dict[str, np.ndarray]:
    return {p: x.detach().float().numpy().astype(np.float32, copy=True)}


def _check_cast(cast: torch.Tensor, p: str, dtype: str) -> None:
    # A finite float32 can still overflow a narrower float to inf; the receiver would reject the
    # whole update, so refuse here with a message that names the fix.
    if not torch.isfinite(cast).all():
        raise MalformedUpdateError(f"'{p}' has values beyond the {dtype} range (max |x| "
                                   f"{torch.finfo(cast.dtype).max:.4g}); use value-dtype float32 or int8")


def _enc_float16(x: torch.Tensor, p: str, block: int) -> dict[str, np.ndarray]:
    half = x.detach().float().to(torch.float16)
    _check_cast(half, p, "float16")
    return {p: half.numpy().copy()}


def _enc_bfloat16(x: torch.Tensor, p: str, block: int) -> dict[str, np.ndarray]:
    bf = x.detach().float().to(torch.bfloat16)
    _check_cast(bf, p, "bfloat16")
    return {p: bf.view(torch.int16).numpy().view(np.uint16).copy()}


def _enc_int8(x: torch.Tensor, p: str, block: int) -> dict[str, np.ndarray]:
    x = x.detach().float()
    k = x.numel()
    nblocks = math.ceil(k / block) if k else 0
    padded = torch.zeros(nblocks * block)
    padded[:k] = x
    blocks = padded.view(nblocks, block)
    scales = blocks.abs().amax(dim=1) / 127.0
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.clamp(torch.round(blocks / safe[:, None]), -127, 127).to(torch.int8).reshape(-1)[:k]
    return {p: q.numpy().copy(), f"{p}.scales": scales.numpy().astype(np.float32)}


def _expect(arr: object, key: str, dtype: np.dtype, length: int) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise MalformedUpdateError(f"array '{key}' is {type(arr).__name__}, expected a numpy array")
    if arr.dtype != dtype:
        raise MalformedUpdateError(f"array '{key}' has dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if arr.shape != (length,):
        raise MalformedUpdateError(f"array '{key}' has shape {arr.shape}, expected ({length},)")
    return arr


def _dec_simple(np_dtype) -> Callable:
    def dec(arrays: Mapping[str, np.ndarray], p: str, k: int, block: int) -> torch.Tensor:
        arr = _expect(arrays[p], p, np.dtype(np_dtype), k)
        return torch.from_numpy(arr.astype(np.float32))
    return dec


def _dec_bfloat16(arrays: Mapping[str, np.ndarray], p: str, k: int, block: int) -> torch.Tensor:
    arr = _expect(arrays[p], p, np.dtype(np.uint16), k)
    return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16).float()


def _dec_int8(arrays: Mapping[str, np.ndarray], p: str, k: int, block: int) -> torch.Tensor:
    q = _expect(arrays[p], p, np.dtype(np.int8), k)
    nblocks = math.ceil(k / block) if k else 0
    scales = _expect(arrays[f"{p}.scales"], f"{p}.scales", np.dtype(np.float32), nblocks)
    if not np.isfinite(scales).all() or (scales < 0).any():
        raise MalformedUpdateError(f"array '{p}.scales' has negative or non-finite scales")
    if (q == -128).any():
        raise MalformedUpdateError(f"array '{p}' holds -128, outside the symmetric int8 range [-127, 127]")
    # Index per entry rather than np.repeat(scales, block): no block-sized allocation.
    s = torch.from_numpy(scales[np.arange(k) // block])
    return torch.from_numpy(q.astype(np.float32)) * s


CODECS: dict[str, tuple[Callable, Callable, tuple[str, ...]]] = {
    # name: (encode, decode, key suffixes)
    "float32": (_enc_float32, _dec_simple(np.float32), ("",)),
    "float16": (_enc_float16, _dec_simple(np.float16), ("",)),
    "bfloat16": (_enc_bfloat16, _dec_bfloat16, ("",)),
    "int8": (_enc_int8, _dec_int8, ("", ".scales")),
}


def _codec(dtype: str):
    if dtype not in CODECS:
        raise MalformedUpdateError(f"unknown value dtype {dtype!r}; use one of {sorted(CODECS)}")
    return CODECS[dtype]


def encode_values(x: torch.Tensor, dtype: str, prefix: str = "values", block: int = 256) -> dict[str, np.ndarray]:
    """Encode a 1-D float tensor into wire arrays keyed ``prefix`` (+ ``prefix.scales`` for int8)."""
    if x.dim() != 1:
        raise MalformedUpdateError(f"only 1-D vectors are encoded, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise MalformedUpdateError(f"refusing to encode '{prefix}': it has non-finite entries")
    return _codec(dtype)[0](x, prefix, block)


def expected_keys(dtype: str, prefix: str = "values") -> set[str]:
    """The exact array keys :func:`encode_values` produces for ``dtype``."""
    return {prefix + s for s in _codec(dtype)[2]}


def decode_values(arrays: Mapping[str, np.ndarray], dtype: str, length: int, prefix: str = "values",
                  block: int = 256) -> torch.Tensor:
    """Strictly decode the arrays under ``prefix`` into a float32 tensor of shape (length,)."""
    _, dec, _ = _codec(dtype)
    present = {key for key in arrays if key == prefix or key.startswith(prefix + ".")}
    want = expected_keys(dtype, prefix)
    if present != want:
        raise MalformedUpdateError(
            f"arrays for '{prefix}' are {sorted(present)}, a {dtype} vector needs exactly {sorted(want)}"
        )
    out = dec(arrays, prefix, int(length), block)
    if not torch.isfinite(out).all():
        raise MalformedUpdateError(f"array '{prefix}' decodes to non-finite values")
    return out


def relative_error(x: torch.Tensor, dtype: str, block: int = 256) -> float:
    """Relative L2 error ``|decode(encode(x)) - x| / |x|`` of the codec on a 1-D tensor (0 if x is 0)."""
    x = x.detach().float()
    back = decode_values(encode_values(x, dtype, "x", block), dtype, x.numel(), "x", block)
    norm = float(torch.linalg.vector_norm(x))
    return float(torch.linalg.vector_norm(back - x)) / norm if norm > 0 else 0.0


def wire_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Raw data bytes of the arrays (without any container framing)."""
    return int(sum(a.nbytes for a in arrays.values()))


def representable(x: torch.Tensor, dtype: str) -> bool:
    """Whether every entry of ``x`` is finite and stays finite in ``dtype`` (float16's max is 65504)."""
    if not bool(torch.isfinite(x).all()):
        return False
    narrow = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
    return narrow is None or bool(torch.isfinite(x.detach().to(narrow)).all())
