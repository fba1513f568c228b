"""The attacks on aligned replies: what a minority of colluding, omniscient attackers send in a round.

Shared by the attack benchmark's one-round matrix (simulations/attack_benchmark.py) and its whole
federations under attack (simulations/robustness/lib/adversary.py).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

HUGE_CLAIM = 1_000_000.0  # num-examples claimed by the lying client of the ``weight-claim`` attack
ATTACKS = ("none", "sign-flip", "scale-20", "alie-zmax", "alie-1.0", "alie-1.5", "ipm-0.1", "ipm-0.5",
           "weight-claim")
# Whole-federation attacks only (not in the one-round matrix): every value 1e30 (finite in float32), all zeros
# (pulls a median-based bound down), or a node that declares DECLARED_CLAIM examples at the handshake and claims
# them in every train reply, sending its sign-flipped delta
FEDERATED_ATTACKS = ("huge", "zeros", "declare-1e9")
HUGE_VALUE = 1e30
DECLARED_CLAIM = 10**9


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al.'s z_max: s = floor(n/2 + 1) - f honest replies must look farther than the attackers."""
    s = math.floor(n / 2 + 1) - f
    return NormalDist().inv_cdf((n - s) / n)


def honest_stats(deltas: torch.Tensor, honest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate mean and std (ddof 1) of the honest rows; float64 (d,) each."""
    h = deltas[honest].double()
    return h.mean(dim=0), h.std(dim=0, unbiased=True)


def attack_rows(attack: str, own: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, n: int) -> torch.Tensor:
    """What the attackers send, from their own true deltas (f, d) and the honest statistics."""
    f = own.shape[0]
    if attack in ("sign-flip", "declare-1e9"):
        return -own
    if attack == "scale-20":
        return -20.0 * own
    if attack.startswith("alie-"):
        z = alie_z_max(n, f) if attack == "alie-zmax" else float(attack[5:])
        return (mean - z * std).float().expand(f, -1).clone()
    if attack.startswith("ipm-"):
        return (-float(attack[4:]) * mean).float().expand(f, -1).clone()
    if attack == "huge":
        return torch.full_like(own, HUGE_VALUE, dtype=torch.float32)
    if attack == "zeros":
        return torch.zeros_like(own, dtype=torch.float32)
    raise ValueError(f"unknown attack {attack!r}; choose one of {ATTACKS + FEDERATED_ATTACKS}")
