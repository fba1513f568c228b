"""Fault injection is deterministic in (seed, partition, round) and hits the requested rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wire.codec import MalformedUpdateError, decode_values, encode_values
from shared.faults import InjectedFault, act_before_training, planned_fault, poison


def test_planned_faults_are_reproducible_and_near_the_rate():
    plan = [planned_fault(42, p, r, 0.3, "mixed") for p in range(50) for r in range(1, 41)]
    assert plan == [planned_fault(42, p, r, 0.3, "mixed") for p in range(50) for r in range(1, 41)]
    rate = sum(f is not None for f in plan) / len(plan)
    assert 0.27 < rate < 0.33
    assert {f for f in plan if f} == {"raise", "timeout", "nan"}
    assert planned_fault(42, 0, 1, 0.0, "raise") is None
    with pytest.raises(ValueError):
        planned_fault(42, 0, 1, 0.5, "explode")
    with pytest.raises(InjectedFault):
        act_before_training("raise", 1.0, 0, 1)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8"])
def test_poisoned_reply_decodes_to_an_error(dtype):
    arrays = encode_values(torch.ones(10), dtype, "delta", 4)
    bad = poison(arrays)
    assert all(np.array_equal(arrays[k], v) for k, v in encode_values(torch.ones(10), dtype, "delta", 4).items())
    with pytest.raises(MalformedUpdateError):
        decode_values(bad, dtype, 10, "delta", 4)
