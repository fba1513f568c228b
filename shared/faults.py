"""Client-side fault injection for tests and benchmarks (``fail-rate``, ``fail-mode``).

Whether client ``partition`` fails in ``round`` is a pure function of (seed, partition, round),
so a run's failures are reproducible and identical after a resume. Modes:
``raise`` (the handler raises: Flower returns an error reply), ``timeout`` (the handler sleeps
past ``round-timeout``: no reply in time), ``nan`` (a reply whose delta holds NaN: the server's
validation must reject it), ``mixed`` (one of the three, drawn per (partition, round)).
"""

from __future__ import annotations

import random
import time
from typing import Mapping

import numpy as np

FAIL_MODES = ("raise", "timeout", "nan", "mixed")


class InjectedFault(RuntimeError):
    """A failure injected on purpose by ``fail-rate``/``fail-mode`` (never in a normal run)."""


def planned_fault(seed: int, partition_id: int, server_round: int, rate: float, mode: str) -> str | None:
    """The fault this client commits this round (``raise``/``timeout``/``nan``) or None."""
    if mode not in FAIL_MODES:
        raise ValueError(f"fail-mode must be one of {FAIL_MODES}, got {mode!r}")
    if rate <= 0:
        return None
    rng = random.Random(f"fault|{seed}|{partition_id}|{server_round}")  # str seeds are stable across processes
    if rng.random() >= rate:
        return None
    return mode if mode != "mixed" else ("raise", "timeout", "nan")[rng.randrange(3)]


def act_before_training(fault: str | None, round_timeout: float, partition_id: int, server_round: int) -> None:
    """Raise or stall now if the planned fault says so."""
    if fault == "raise":
        raise InjectedFault(f"injected failure: partition {partition_id}, round {server_round}")
    if fault == "timeout":
        time.sleep(round_timeout + 2.0)  # just past the server's deadline, so the worker frees up soon


def poison(arrays: Mapping[str, np.ndarray], key: str = "delta") -> dict[str, np.ndarray]:
    """A copy of the wire arrays whose ``key`` vector decodes to NaN (float, bfloat16 or int8 scales)."""
    out = dict(arrays)
    target = f"{key}.scales" if f"{key}.scales" in out else key
    arr = out[target].copy()
    if arr.size:
        arr[0] = 0x7FC0 if arr.dtype == np.uint16 else np.nan  # 0x7FC0: the bfloat16 quiet NaN
    out[target] = arr
    return out
