"""``dsee``'s knobs (``dsee-*``)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.knobs import knob


@dataclass(frozen=True)
class DseeSettings:
    """Rank 8 by default: on the 384-wide MiniLM it gives 74.5k values (0.33 % of the model), near PaFi's
    0.5 % of the encoder matrices (53k), so bytes per round compare; the paper's rank 16 was chosen for
    768-wide BERT-base, where it is ~0.5 % of the model. N = 64 sits in the paper's 16-128; 20 % pruning
    and 3 of 12 heads are its final-model settings."""

    KNOB_PREFIX = "dsee-"
    rank: int = knob(8, "rank r of the low-rank part B·A", low=1)
    alpha: float = knob(16.0, "scale: the update is (B·A + S)·alpha/r", low=1e-6, high=1e6)
    sparse_per_matrix: int = knob(64, "N: sparse entries S per query/value matrix", low=0)
    prune_ratio: float = knob(0.2, "final model: global magnitude pruning ratio", low=0, high=0.99)
    prune_heads: int = knob(3, "final model: heads removed per layer (smallest summed |B·A + S|)", low=0)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank
