"""Server-side update rule: (optional DP clip) -> aggregate -> (optional noise) -> server optimizer.

The server treats the aggregated client delta as a pseudo-gradient g (a descent *direction*: the
global moves along +g) and steps with one of (Reddi et al., "Adaptive Federated Optimization",
ICLR 2021, Algorithm 2; Hsu et al. 2019 for momentum), all element-wise on the (d,) vector:

=======  ===================================================================================
sgd      x += lr * g                                                  (FedAvg when lr = 1)
avgm     m = mu*m + g;                         x += lr * m            (FedAvgM)
adam     m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;          x += lr * m / (sqrt(v) + tau)
yogi     m as adam;  v = v - (1-b2)*g^2*sign(v - g^2);         x += lr * m / (sqrt(v) + tau)
=======  ===================================================================================

with m_0 = 0 and v_0 = tau^2 (the paper's v_{-1} >= tau^2), no bias correction (as in the paper).
Optimizer state is a dict of float64 tensors; it goes into the checkpoint, so a resumed run steps
exactly as an uninterrupted one. Step functions are pure: ``(g, state, hp) -> (update, new_state)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from server.aggregation import AggregationError, aggregate
from server.privacy import clip_rows, gaussian_noise, noise_std
from shared.config import RunConfig

OptState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ServerSettings:
    """Knobs of the server update (kebab-case keys in parentheses)."""

    aggregator: str = "fedavg"  # (aggregator)
    lr: float = 1.0  # (server-lr)
    momentum: float = 0.9  # (server-momentum) FedAvgM
    beta1: float = 0.9  # (server-beta1) FedAdam/FedYogi
    beta2: float = 0.99  # (server-beta2)
    tau: float = 1e-3  # (server-tau) adaptivity
    trim_fraction: float = 0.1  # (trim-fraction) trimmed-mean
    cc_tau: float = 0.0  # (cc-tau) centered-clipping radius, 0 = adaptive
    cc_iterations: int = 3  # (cc-iterations)
    krum_f: int = 1  # (krum-f) multi-krum: attackers assumed
    krum_m: int = 0  # (krum-m) multi-krum: replies averaged, 0 = n - f
    dp_clip_norm: float = 0.0  # (dp-clip-norm) 0 = no clipping
    dp_noise_multiplier: float = 0.0  # (dp-noise-multiplier) z; noise std z*C/n
    seed: int = 42

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "ServerSettings":
        out = cls(aggregator=cfg.aggregator, lr=cfg.server_lr, momentum=cfg.server_momentum, beta1=cfg.server_beta1,
                  beta2=cfg.server_beta2, tau=cfg.server_tau, trim_fraction=cfg.trim_fraction, cc_tau=cfg.cc_tau,
                  cc_iterations=cfg.cc_iterations, krum_f=cfg.krum_f, krum_m=cfg.krum_m,
                  dp_clip_norm=cfg.dp_clip_norm, dp_noise_multiplier=cfg.dp_noise_multiplier, seed=cfg.seed)
        plan(out.aggregator)  # fail at start-up, not in round 1
        if out.aggregator == "multi-krum" and cfg.min_train_replies <= 2 * out.krum_f + 2:
            raise AggregationError(f"aggregator 'multi-krum' with krum-f={out.krum_f} needs min-train-replies >= "
                                   f"{2 * out.krum_f + 3} (n > 2f + 2), so that a short round is skipped, not "
                                   f"failed; raise min-train-replies or lower krum-f")
        if out.dp_noise_multiplier > 0 and out.dp_clip_norm <= 0:
            raise AggregationError("dp-noise-multiplier > 0 needs dp-clip-norm > 0 (the noise scale is z*C/n)")
        return out


def sgd_step(g: torch.Tensor, state: OptState, hp: ServerSettings) -> tuple[torch.Tensor, OptState]:
    return hp.lr * g, state


def avgm_step(g: torch.Tensor, state: OptState, hp: ServerSettings) -> tuple[torch.Tensor, OptState]:
    m = hp.momentum * state.get("m", torch.zeros_like(g)) + g
    return hp.lr * m, {"m": m}


def _moments(g: torch.Tensor, state: OptState, hp: ServerSettings) -> tuple[torch.Tensor, torch.Tensor]:
    m = hp.beta1 * state.get("m", torch.zeros_like(g)) + (1 - hp.beta1) * g
    v = state.get("v", torch.full_like(g, hp.tau ** 2))
    return m, v


def adam_step(g: torch.Tensor, state: OptState, hp: ServerSettings) -> tuple[torch.Tensor, OptState]:
    m, v = _moments(g, state, hp)
    v = hp.beta2 * v + (1 - hp.beta2) * g * g
    return hp.lr * m / (v.sqrt() + hp.tau), {"m": m, "v": v}


def yogi_step(g: torch.Tensor, state: OptState, hp: ServerSettings) -> tuple[torch.Tensor, OptState]:
    m, v = _moments(g, state, hp)
    g2 = g * g
    v = v - (1 - hp.beta2) * g2 * torch.sign(v - g2)
    return hp.lr * m / (v.sqrt() + hp.tau), {"m": m, "v": v}


Step = Callable[[torch.Tensor, OptState, ServerSettings], tuple[torch.Tensor, OptState]]
OPTIMIZERS: dict[str, Step] = {"sgd": sgd_step, "avgm": avgm_step, "adam": adam_step, "yogi": yogi_step}

# run-config ``aggregator`` -> (aggregator in AGGREGATORS, optimizer in OPTIMIZERS)
PLANS: dict[str, tuple[str, str]] = {
    "fedavg": ("fedavg", "sgd"),
    "median": ("median", "sgd"),
    "trimmed-mean": ("trimmed-mean", "sgd"),
    "centered-clipping": ("centered-clipping", "sgd"),
    "multi-krum": ("multi-krum", "sgd"),
    "fedavgm": ("fedavg", "avgm"),
    "fedadam": ("fedavg", "adam"),
    "fedyogi": ("fedavg", "yogi"),
}


def plan(name: str) -> tuple[str, str]:
    """(aggregator, optimizer) for the run-config ``aggregator`` value."""
    if name not in PLANS:
        raise AggregationError(f"unknown aggregator {name!r}; set 'aggregator' to one of {sorted(PLANS)}")
    return PLANS[name]


def server_step(deltas: torch.Tensor, weights: torch.Tensor, state: OptState, hp: ServerSettings,
                server_round: int, num_clients: int | None = None, stream: int = 0) -> tuple[torch.Tensor, OptState]:
    """The update to add to the global (d,) vector from stacked client deltas (n, d); float32 (d,).

    With ``dp-clip-norm`` > 0 each row is clipped to that L2 norm and weighted equally (the DP
    sensitivity argument needs equal weights); noise is seeded by (seed, round), so it replays.
    ``num_clients``: how many clients the rows stand for (a secure round passes its one mean row and
    the survivors' count, so the noise std is still z*C/n); default the number of rows. ``stream``: which noise
    stream of the round (a multi-task round steps its values and each task's head apart, each with its own; 0 = the
    values', as in a single-task run).
    """
    agg_name, opt_name = plan(hp.aggregator)
    n = deltas.shape[0] if num_clients is None else int(num_clients)
    if hp.dp_clip_norm > 0:
        deltas = clip_rows(deltas, hp.dp_clip_norm)
        weights = torch.ones(deltas.shape[0], dtype=torch.float64)
    g = aggregate(agg_name, deltas, weights, trim_fraction=hp.trim_fraction, cc_tau=hp.cc_tau,
                  cc_iterations=hp.cc_iterations, krum_f=hp.krum_f, krum_m=hp.krum_m).double()
    if hp.dp_noise_multiplier > 0:
        std = noise_std(hp.dp_noise_multiplier, hp.dp_clip_norm, n)
        g = g + gaussian_noise(g.numel(), std, hp.seed * 1_000_033 + server_round + stream * 7_777_777_777)
    update, new_state = OPTIMIZERS[opt_name](g, state, hp)
    return update.float(), new_state
