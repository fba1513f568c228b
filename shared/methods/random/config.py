"""``random``'s knob."""

from __future__ import annotations

from dataclasses import dataclass

from shared.knobs import knob


@dataclass(frozen=True)
class RandomSettings:
    """Folded into the fingerprint: two seeds can never be mistaken for the same mask."""

    KNOB_PREFIX = "mask-"
    seed: int = knob(0, "seed of the random mask (every node draws the same positions)", low=0)
