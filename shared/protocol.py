"""What travels, as plain numpy arrays and scalars (the app edge wraps them in Flower records).

Down (server -> client, ``train``): arrays ``values`` (k,) and ``head`` (h,) in ``value-dtype``;
config ``fingerprint``, ``value-dtype``, ``server-round``.
Up (client -> server): arrays ``delta`` (k,) and ``head-delta`` (h,) in ``value-dtype``;
metrics ``num-examples``, ``train-loss``; config ``fingerprint``. No index array, ever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from shared.codec import MalformedUpdateError, decode_values, encode_values

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"  # record names inside a message
DOWN_KEYS = ("values", "head")
UP_KEYS = ("delta", "head-delta")


def flatten_head(head: Mapping[str, torch.Tensor], names: tuple[str, ...]) -> torch.Tensor:
    """Concatenate the head tensors (in ``names`` order) into one float32 vector."""
    if not names:
        return torch.zeros(0)
    return torch.cat([head[n].detach().reshape(-1).float() for n in names])


def unflatten_head(vec: torch.Tensor, like: Mapping[str, torch.Tensor], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Split a head vector back into tensors shaped like ``like``."""
    out, pos = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = vec[pos:pos + size].view_as(like[n]).clone()
        pos += size
    if pos != vec.numel():
        raise MalformedUpdateError(f"head vector has {vec.numel()} entries, the model's head needs {pos}")
    return out


def encode_pair(first: torch.Tensor, second: torch.Tensor, keys: tuple[str, str], dtype: str,
                block: int) -> dict[str, np.ndarray]:
    """Encode two vectors under ``keys`` with the same codec."""
    arrays = encode_values(first, dtype, keys[0], block)
    arrays.update(encode_values(second, dtype, keys[1], block))
    return arrays


@dataclass
class Update:
    """A decoded, validated client reply."""

    delta: torch.Tensor  # (k,) float32
    head_delta: torch.Tensor  # (h,) float32
    num_examples: int
    train_loss: float


def decode_pair(arrays: Mapping[str, np.ndarray], keys: tuple[str, str], dtype: str, k: int, h: int,
                block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Strictly decode two vectors; extra or missing keys are an error."""
    known = {key for key in arrays if key in keys or any(key.startswith(p + ".") for p in keys)}
    extra = set(arrays) - known
    if extra:
        raise MalformedUpdateError(f"unexpected arrays {sorted(extra)[:3]}; expected only {list(keys)}")
    return (decode_values(arrays, dtype, k, keys[0], block), decode_values(arrays, dtype, h, keys[1], block))


def config_dict(fingerprint: str, dtype: str, **extra: Any) -> dict[str, Any]:
    return {"fingerprint": fingerprint, "value-dtype": dtype, **extra}
