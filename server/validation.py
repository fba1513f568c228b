"""Reply validation: every reply is checked before it can touch the global state.

Pure functions over the reply's plain parts (arrays as numpy, metrics and config as dicts), so
they are tested (and fuzzed) without a Grid or a network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from shared.codec import MalformedUpdateError
from shared.masks import MaskMismatchError
from shared.protocol import UP_KEYS, Update, decode_pair

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


def validate_reply(arrays: Mapping[str, Any], metrics: Mapping[str, Any], config: Mapping[str, Any],
                   expected: Expected) -> Update:
    """Decode and check one reply; raise ``MalformedUpdateError``/``MaskMismatchError`` with the reason."""
    fp = config.get("fingerprint")
    if fp != expected.fingerprint:
        raise MaskMismatchError(f"mask fingerprint {str(fp)[:16]!r} != server's {expected.fingerprint[:16]!r}")
    for key, arr in arrays.items():
        if not isinstance(arr, np.ndarray):
            raise MalformedUpdateError(f"array '{key}' is not an ndarray")
    size = sum(int(a.nbytes) for a in arrays.values())
    if size > expected.max_bytes:
        raise MalformedUpdateError(f"reply carries {size} bytes of arrays, over the {expected.max_bytes}-byte limit")
    n = metrics.get("num-examples")
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n != int(n):
        raise MalformedUpdateError(f"num-examples must be an integer, got {n!r}")
    if not 0 < int(n) <= MAX_NUM_EXAMPLES:
        raise MalformedUpdateError(f"num-examples {int(n)} is outside 1..{MAX_NUM_EXAMPLES}")
    loss = metrics.get("train-loss", 0.0)
    if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
        raise MalformedUpdateError(f"train-loss must be a finite number, got {loss!r}")
    delta, head = decode_pair(arrays, UP_KEYS, expected.value_dtype, expected.k, expected.head_size, expected.block)
    return Update(delta=delta, head_delta=head, num_examples=int(n), train_loss=float(loss))
