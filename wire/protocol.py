"""What travels, as plain numpy arrays and scalars (the app edge wraps them in Flower records).

Messages: ``query`` (round-0 handshake), ``train``, ``evaluate``, and ``query.<route>`` for a
method's own routes (``sam``'s selection phase). Each carries up to three records: ``arrays``,
``config`` (always ``fingerprint``; down also ``value-dtype`` and ``server-round``) and ``metrics``
(up: ``num-examples``, ``train-loss``, ...).

The update format is an :class:`UpdateCodec`. The default, :data:`VALUES`, is the aligned one
every shared-mask method uses: down ``values`` (k,) and ``head`` (h,), up ``delta`` (k,) and
``head-delta`` (h,), each in ``value-dtype``; no index array, ever. A method whose updates carry
positions (``topk``) supplies its own codec; the server and client call only this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from wire.codec import MalformedUpdateError, decode_values, encode_values

ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"  # record names inside a message
HANDSHAKE, TRAIN, EVALUATE = "query", "train", "evaluate"  # message types
DOWN_KEYS = ("values", "head")
UP_KEYS = ("delta", "head-delta")
BYTES_PER_VALUE = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


def route_type(route: str) -> str:
    """Message type of a method's own route: ``query.<route>``."""
    return f"{HANDSHAKE}.{route}"


@dataclass
class Parts:
    """The plain content of one message: arrays, config and metrics (``None`` = no such record)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


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


def decode_pair(arrays: Mapping[str, np.ndarray], keys: tuple[str, str], dtype: str, k: int, h: int,
                block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Strictly decode two vectors; extra or missing keys are an error."""
    known = {key for key in arrays if key in keys or any(key.startswith(p + ".") for p in keys)}
    extra = set(arrays) - known
    if extra:
        raise MalformedUpdateError(f"unexpected arrays {sorted(extra)[:3]}; expected only {list(keys)}")
    return (decode_values(arrays, dtype, k, keys[0], block), decode_values(arrays, dtype, h, keys[1], block))


@dataclass
class Update:
    """A decoded, validated client reply: dense (k,) and (h,) float32 deltas in mask order."""

    delta: torch.Tensor  # (k,) float32
    head_delta: torch.Tensor  # (h,) float32
    num_examples: int
    train_loss: float


class UpdateCodec:
    """The values-only update format; a method with another format subclasses it.

    Every decode is strict (exact keys, dtype, length, finite) and returns dense float32 vectors,
    so whatever the format, the server aggregates aligned (n, k) stacks on one path.
    ``aligned``: each update is a dense vector over the same k coordinates (what secure summation
    needs); ``max_arrays``: the most arrays a valid reply carries (checked before decoding).
    """

    aligned = True
    max_arrays = 4

    def encode_down(self, values: torch.Tensor, head: torch.Tensor, dtype: str, block: int) -> dict[str, np.ndarray]:
        """Server -> client: the global values (k,) and head (h,)."""
        return encode_pair(values, head, DOWN_KEYS, dtype, block)

    def decode_down(self, arrays: Mapping[str, np.ndarray], dtype: str, k: int, h: int,
                    block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client side of :meth:`encode_down`: (values (k,), head (h,)) float32."""
        return decode_pair(arrays, DOWN_KEYS, dtype, k, h, block)

    def encode_up(self, delta: torch.Tensor, head_delta: torch.Tensor, dtype: str, block: int) -> dict[str, np.ndarray]:
        """Client -> server: this client's change (k,) and head change (h,)."""
        return encode_pair(delta, head_delta, UP_KEYS, dtype, block)

    def decode_up(self, arrays: Mapping[str, np.ndarray], dtype: str, k: int, h: int,
                  block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Server side of :meth:`encode_up`: dense (delta (k,), head delta (h,)) float32."""
        return decode_pair(arrays, UP_KEYS, dtype, k, h, block)

    def payload_bytes(self, k: int, h: int, bytes_per_value: int) -> int:
        """One upload without Flower's framing: k values and the head."""
        return (int(k) + int(h)) * int(bytes_per_value)


VALUES = UpdateCodec()

# Under secure aggregation a client's update is one flat vector: delta (k) ‖ head delta (h) ‖ train loss / 64.
# The loss rides inside the masked vector (the server learns only the mean loss); /64 keeps it in the
# clipping range for any loss below 64 * secagg-clipping-range.
SECURE_LOSS_SCALE = 64.0


def secure_vector(delta: torch.Tensor, head_delta: torch.Tensor, train_loss: float) -> np.ndarray:
    """(k + h + 1,) float64: what a client puts under SecAgg+'s masks."""
    loss = np.array([float(train_loss) / SECURE_LOSS_SCALE])
    return np.concatenate([delta.detach().double().numpy(), head_delta.detach().double().numpy(), loss])


def split_secure(vec: np.ndarray, k: int, h: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(delta (k,), head delta (h,), train loss) float32 of an unmasked mean of secure vectors."""
    if vec.shape != (k + h + 1,):
        raise MalformedUpdateError(f"secure vector has shape {vec.shape}, expected ({k + h + 1},)")
    t = torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float64))
    return t[:k].float(), t[k:k + h].float(), float(t[-1]) * SECURE_LOSS_SCALE
