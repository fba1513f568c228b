"""SCAFFOLD's control variates on the wire: arrays beside the update's, through the same value codec.

Every variate is one (k + h,) vector in the trainable vector's layout (values, then the flattened head):

==================  ======  =========================================================================
key                 way     what
==================  ======  =========================================================================
``control``         down    the server's ``c``, in ``value-dtype`` (every train message)
``control-own``     down    the node's own ``c_i`` as the server mirrors it, always float32 (exact):
                            only in a node's first train message after the server resumed from a
                            checkpoint (a resumed run's nodes start with empty state)
``control-delta``   up      the client's ``delta c_i``, in ``value-dtype``
==================  ======  =========================================================================

They ride in the message's ``arrays`` record like the values, so the measured message bytes count them:
with SCAFFOLD a train message and its reply each carry two (k + h,) vectors instead of one. The method's
update codec never sees them: :func:`split_control` takes them out first.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from wire.codec import MalformedUpdateError, decode_values, encode_values, expected_keys

CONTROL, CONTROL_OWN, CONTROL_DELTA = "control", "control-own", "control-delta"
CONTROL_KEYS = (CONTROL, CONTROL_OWN, CONTROL_DELTA)
OWN_DTYPE = "float32"  # control-own restores a node's c_i bit for bit


def _is_control(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in CONTROL_KEYS)


def split_control(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the update's arrays, the control-variate arrays) of one message's ``arrays`` record."""
    rest = {k: a for k, a in arrays.items() if not _is_control(k)}
    return rest, {k: a for k, a in arrays.items() if _is_control(k)}


def encode_control(vec: torch.Tensor, key: str, dtype: str, block: int) -> dict[str, np.ndarray]:
    """One (k + h,) variate under ``key`` (``control-own`` always in float32)."""
    return encode_values(vec, OWN_DTYPE if key == CONTROL_OWN else dtype, key, block)


def _decode(arrays: Mapping[str, np.ndarray], key: str, dtype: str, size: int, block: int) -> torch.Tensor:
    return decode_values(arrays, OWN_DTYPE if key == CONTROL_OWN else dtype, size, key, block)


def decode_control_up(arrays: Mapping[str, np.ndarray], dtype: str, size: int, block: int) -> torch.Tensor:
    """Server side: a reply's ``delta c_i`` (size,) float32; exactly its keys, finite, or
    :class:`MalformedUpdateError` (a SCAFFOLD reply without it is refused like any malformed update)."""
    want = expected_keys(dtype, CONTROL_DELTA)
    if set(arrays) != want:
        raise MalformedUpdateError(f"control-variate arrays are {sorted(arrays)[:4]}; a drift-correction='scaffold' "
                                   f"reply carries exactly {sorted(want)}")
    return _decode(arrays, CONTROL_DELTA, dtype, size, block)


def decode_control_down(arrays: Mapping[str, np.ndarray], dtype: str, size: int,
                        block: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Client side: (``c`` (size,), the node's restored ``c_i`` (size,) or ``None``), both float32."""
    own = expected_keys(OWN_DTYPE, CONTROL_OWN) if any(k.startswith(CONTROL_OWN) for k in arrays) else set()
    want = expected_keys(dtype, CONTROL) | own
    if set(arrays) != want:
        raise MalformedUpdateError(f"control-variate arrays are {sorted(arrays)[:4]}; a drift-correction='scaffold' "
                                   f"train message carries {sorted(want)}: is the server running with "
                                   f"drift-correction='scaffold'?")
    c = _decode(arrays, CONTROL, dtype, size, block)
    return c, (_decode(arrays, CONTROL_OWN, dtype, size, block) if own else None)
