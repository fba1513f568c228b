"""Reply validation: every reply is checked before it can touch the global state.

Pure functions over the reply's plain parts (arrays as numpy, metrics and config as dicts), so
they are tested (and fuzzed) without a Grid or a network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from shared.masks import MaskMismatchError
from wire.codec import MalformedUpdateError
from wire.protocol import VALUES, Update, UpdateCodec

MAX_NUM_EXAMPLES = 10**9


@dataclass(frozen=True)
class Expected:
    """What a valid reply must look like this run."""

    fingerprint: str
    value_dtype: str
    k: int
    head_size: int
    block: int = 256
    max_bytes: int = 512 * 2**20
    codec: UpdateCodec = VALUES  # the method's update format (values-only unless the method says otherwise)


def _finite_number(value: Any, what: str) -> float:
    """``value`` as a finite float; bools, strings, lists and ints too large for a float are errors."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise MalformedUpdateError(f"{what} must be a number, got {type(value).__name__}")
    try:
        out = float(value)
    except OverflowError:
        raise MalformedUpdateError(f"{what} is too large to be a float") from None
    if not math.isfinite(out):
        raise MalformedUpdateError(f"{what} must be finite, got {out}")
    return out


def _check_arrays(arrays: Mapping[str, Any], expected: Expected) -> None:
    """Types, dimensionality, dtype kind and total size, before any decoding work."""
    if len(arrays) > expected.codec.max_arrays:
        raise MalformedUpdateError(f"reply carries {len(arrays)} arrays; a valid one has at most "
                                   f"{expected.codec.max_arrays}")
    size = 0
    for key, arr in arrays.items():
        if not isinstance(key, str) or not isinstance(arr, np.ndarray):
            raise MalformedUpdateError(f"array {str(key)[:40]!r} is not a numpy array")
        if arr.ndim != 1:
            raise MalformedUpdateError(f"array {key[:40]!r} has {arr.ndim} dimensions; updates are 1-D vectors")
        if arr.dtype.kind not in "fiu":
            raise MalformedUpdateError(f"array {key[:40]!r} has non-numeric dtype {arr.dtype}")
        size += int(arr.nbytes)
    if size > expected.max_bytes:
        raise MalformedUpdateError(f"reply carries {size} bytes of arrays, over the {expected.max_bytes}-byte limit")


def validate_reply(arrays: Mapping[str, Any], metrics: Mapping[str, Any], config: Mapping[str, Any],
                   expected: Expected) -> Update:
    """Decode and check one reply; raise ``MalformedUpdateError``/``MaskMismatchError`` with the reason.

    Checks, cheapest first: fingerprint, array types/ndim/dtype kind/total bytes, ``num-examples``
    (an integer in 1..``MAX_NUM_EXAMPLES``), ``train-loss`` (finite), then the method codec's strict
    decode (exact keys, dtype, length, finite values) into dense (k,) / (h,) vectors. Never returns a
    partially valid update.
    """
    fp = config.get("fingerprint")
    if not isinstance(fp, str) or fp != expected.fingerprint:
        raise MaskMismatchError(f"mask fingerprint {str(fp)[:16]!r} != server's {expected.fingerprint[:16]!r}")
    _check_arrays(arrays, expected)
    n = _finite_number(metrics.get("num-examples"), "num-examples")
    if n != int(n) or not 0 < int(n) <= MAX_NUM_EXAMPLES:
        raise MalformedUpdateError(f"num-examples must be an integer in 1..{MAX_NUM_EXAMPLES}, got {n!r}")
    loss = _finite_number(metrics.get("train-loss", 0.0), "train-loss")
    delta, head = expected.codec.decode_up(arrays, expected.value_dtype, expected.k, expected.head_size, expected.block)
    return Update(delta=delta, head_delta=head, num_examples=int(n), train_loss=loss)
