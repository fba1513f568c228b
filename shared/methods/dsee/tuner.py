"""DSEE (Chen et al.): query/value updates ΔW = (B·A + S)·α/r, S on positions fixed by the base weights.

Per target matrix W (out, in) the value vector holds, in model order, A (r, in), B (out, r) and
the N values of S, whose positions are the N largest |S| of a low-rank + sparse decomposition of
the *pre-trained* W (``lowrank_sparse.sparse_positions``). Positions depend on the base weights
and the knobs only, so every node derives them and they are fingerprinted like a mask; only A, B
and S values travel. After the last round ``finalize`` prunes the merged model (``final.py``).
"""

from __future__ import annotations

import math
import types
from pathlib import Path
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from shared.architectures import linear_weight, query_value_names
from shared.config import ConfigError, RunConfig
from shared.knobs import build
from shared.masks import mask_fingerprint
from shared.methods.base import Tuner
from shared.methods.common import check_vector, write_head
from shared.methods.dsee.config import DseeSettings
from shared.methods.dsee.decompose import sparse_positions
from shared.methods.dsee.prune import supports_head_pruning
from shared.methods.dsee.final import finalize_dsee, read_dsee_values, save_dsee_artifact
from shared.model import BaseModel
from shared.sparse import MergeError

@dataclass(frozen=True)
class Target:
    """One adapted matrix: its parameter name, shape, S positions and slices of the value vector."""

    name: str  # e.g. "bert.encoder.layer.0.attention.self.query.weight"
    shape: tuple[int, int]  # (out, in): nn.Linear's layout, also for a Conv1D (stored (in, out))
    positions: torch.Tensor  # (N,) int64 sorted flat indices of S
    start: int  # A at [start, start + r*in), then B (out*r), then S (N)
    rank: int

    @property
    def a_slice(self) -> slice:
        return slice(self.start, self.start + self.rank * self.shape[1])

    @property
    def b_slice(self) -> slice:
        s = self.a_slice.stop
        return slice(s, s + self.shape[0] * self.rank)

    @property
    def s_slice(self) -> slice:
        s = self.b_slice.stop
        return slice(s, s + self.positions.numel())

    def factors(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views A (r, in), B (out, r), S values (N,) into ``values``."""
        out, inp = self.shape
        return values[self.a_slice].view(self.rank, inp), values[self.b_slice].view(out, self.rank), values[self.s_slice]


def target_names(model: nn.Module) -> list[str]:
    """Weights of the attention query and value projections (GPT-2: the fused c_attn), in model order."""
    mods = query_value_names(model)
    if not mods:
        raise MergeError("DSEE found no attention query/value projections (BERT query/value, GPT-2 c_attn, "
                         "Llama q_proj/v_proj); use method='pafi' for this model")
    return [f"{n}.weight" for n in mods]


def build_targets(model: nn.Module, st: DseeSettings) -> tuple[Target, ...]:
    """Targets with their S positions from the decomposition of the pre-trained weights (in (out, in) layout)."""
    modules, targets, start = dict(model.named_modules()), [], 0
    for name in target_names(model):
        w = linear_weight(modules[name.rpartition(".")[0]]).detach()
        if st.sparse_per_matrix > 0:
            pos = sparse_positions(w, min(st.rank, min(w.shape)), min(st.sparse_per_matrix, w.numel()))
        else:
            pos = torch.zeros(0, dtype=torch.long)
        t = Target(name, (w.shape[0], w.shape[1]), pos, start, st.rank)
        targets.append(t)
        start = t.s_slice.stop
    return tuple(targets)


def dense_deltas(targets: tuple[Target, ...], values: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
    """ΔW = (B·A + scatter(S))·α/r per target, float32 (out, in)."""
    out = {}
    for t in targets:
        a, b, s = t.factors(values.float())
        d = b @ a
        d.view(-1).index_add_(0, t.positions, s)
        out[t.name] = d * scale
    return out


class DseeTuner(Tuner):
    """DSEE's tuner: wraps the targets' forward."""

    def __init__(self, base: BaseModel, cfg: RunConfig, digest: str):
        self.base, self.cfg, self.settings = base, cfg, build(DseeSettings, cfg.options)
        self.targets = build_targets(base.model, self.settings)
        self._k = self.targets[-1].s_slice.stop
        st = self.settings
        recipe = f"dsee|rank={st.rank}|alpha={st.alpha!r}|n={st.sparse_per_matrix}"
        self._fingerprint = mask_fingerprint(digest, recipe, 0.0, [t.name for t in self.targets],
                                             [t.positions for t in self.targets])
        self._init_value_head(base.model, base.head_names, self._k)
        modules = dict(base.model.named_modules())
        for t in self.targets:
            self._wrap(modules[t.name.rpartition(".")[0]], t)

    def _wrap(self, module: nn.Module, t: Target) -> None:
        tuner, scale = self, self.settings.scale
        positions = {t.positions.device: t.positions}  # per device: the mask's copy stays on the CPU

        def forward(mod: nn.Linear, x: torch.Tensor) -> torch.Tensor:
            if mod.weight.device not in positions:
                positions[mod.weight.device] = t.positions.to(mod.weight.device)
            a, b, s = t.factors(tuner.values)
            # S enters through the weight: autograd forms the (out, in) weight gradient and gathers
            # S's N entries from it (affordable for the few query/value matrices); the low-rank
            # path never forms the (out, in) product.
            lw = linear_weight(mod)
            w = lw.reshape(-1).index_add(0, positions[mod.weight.device], s * scale).view(lw.shape)
            return F.linear(x, w, mod.bias) + F.linear(F.linear(x, a), b) * scale

        module.forward = types.MethodType(forward, module)

    # ---- the tuner contract ------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def initial_values(self) -> torch.Tensor:
        """LoRA-style start: A ~ U(±1/√in) from a generator seeded by ``seed``, B = 0, S = 0 (ΔW = 0)."""
        gen = torch.Generator().manual_seed(int(self.cfg.seed) * 7_919 + 17)
        v = torch.zeros(self._k)
        for t in self.targets:
            bound = 1.0 / math.sqrt(t.shape[1])
            v[t.a_slice] = (torch.rand(t.rank * t.shape[1], generator=gen) * 2 - 1) * bound
        return v

    def deltas(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Dense ΔW per target for ``values`` (k,)."""
        check_vector(values, self._k)
        return dense_deltas(self.targets, values, self.settings.scale)

    def merge(self, fresh: nn.Module, values: torch.Tensor, head: dict[str, torch.Tensor]) -> nn.Module:
        """W ← W + (B·A + S)·α/r for every target and the head, in ``fresh`` (a plain base copy)."""
        deltas = self.deltas(values)  # checks values before any write
        params, modules = dict(fresh.named_parameters()), dict(fresh.named_modules())
        write_head(params, head)
        with torch.no_grad():
            for name, d in deltas.items():
                linear_weight(modules[name.rpartition(".")[0]]).add_(d.to(params[name].dtype))
        return fresh

    def save_artifact(self, out, values: torch.Tensor, head: dict[str, torch.Tensor], cfg: RunConfig, source: str):
        return save_dsee_artifact(Path(out) / "delta.safetensors", self, values, head, source)

    def apply_artifact(self, out, fresh: nn.Module) -> nn.Module:
        values, head = read_dsee_values(Path(out) / "delta.safetensors", self)
        return self.merge(fresh, values, head)

    def finalize(self, merged: nn.Module, values: torch.Tensor, score_fn, out) -> dict:
        """Prune the merged model, save it to ``out/model-pruned`` and report accuracy, sparsity and speed."""
        return finalize_dsee(self, merged, values, score_fn, out)


def make_dsee_tuner(base: BaseModel, cfg: RunConfig, digest: str) -> DseeTuner:
    """The method's ``build``; checks the head-pruning knob against the model before any work."""
    heads = int(getattr(base.model.config, "num_attention_heads", 0))
    asked = build(DseeSettings, cfg.options).prune_heads
    if asked and not supports_head_pruning(base.model):
        raise ConfigError(f"run-config key 'dsee-prune-heads' is {asked} but head removal needs a BERT-style encoder "
                          f"(this model is {type(base.model).__name__}); set dsee-prune-heads=0")
    if asked and asked >= heads:
        raise ConfigError(f"run-config key 'dsee-prune-heads' is {asked} but the model has {heads} heads per layer; "
                          f"set it below {heads} (0 = keep all heads)")
    return DseeTuner(base, cfg, digest)
