"""HiWi (Liao et al., ACL 2023): an adapter fed the pre-trained feed-forward biases (or weights).

b' = b + f(b), f(x) = W_up · gelu(W_down · x + c_down) + c_up, a bottleneck MLP of width m
(``hiwi-bottleneck``). One adapter per FFN tensor kind (the intermediate and the output linear),
shared by all layers: every layer's tensor is one input row, like tokens through an ordinary
adapter. (A per-layer adapter fed one fixed vector could only learn a free vector, i.e. BitFit.)
With ``hiwi-target = "weight"`` the rows of the FFN weight matrices are the inputs instead.

Only f's parameters train and travel. After training b' is computed once and f thrown away: the
merged model is the base architecture with new biases, the stored artifact the new biases only.
Value layout per kind, in order: W_down (m, d), c_down (m), W_up (d, m), c_up (d).
Bottleneck 16 by default: 63k values on MiniLM, about PaFi's 53k at 0.5 %.

Normalised form (``hiwi-normalize``, on by default): f(x) = 2s · tanh(g(x / s) / 2) with
g(u) = W_up · gelu(W_down · u / √d + c_down) + c_up, W_down stored at unit scale, and s the rms of
all the base tensors of that kind (1 where they are all zero). Each adapter input is one fixed
vector, so its gradients keep their sign from step to step, and Adam moves every stored entry by
about lr per step: in the plain form that moves W_down · b by lr · ‖b‖₁ (≈ 1 per step at lr 5e-3
on MiniLM's intermediate biases). With a fresh optimizer every federated round that grew f(b) to
10× the biases it adapts and collapsed the model to one class. The 1/√d fan-in factor bounds the
move by lr · ‖u‖₁/√d; s makes the change relative to the size of the tensors adapted; tanh caps
every entry's change at 2s, a trust region against the shared drift of the FFN output biases that
still collapsed the residual stream at a doubled rate. All are constants of the base weights or
fixed functions, so merging b' once stays exact. ``hiwi-normalize = false`` is the plain form.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from shared.architectures import PROJECTIONS, ffn_kind
from shared.config import ConfigError, RunConfig
from shared.knobs import build
from shared.masks import MaskMismatchError, mask_fingerprint
from shared.methods.base import Tuner
from shared.methods.common import check_vector, write_head
from shared.methods.hiwi.config import HiwiSettings
from shared.methods.hiwi.final import apply_hiwi_artifact, artifact_fingerprint, finalize_hiwi, save_hiwi_artifact
from shared.model import BaseModel
TRUST = 2.0  # normalised f moves no entry by more than TRUST * s


@dataclass(frozen=True)
class Adapter:
    """One shared bottleneck MLP: input width ``dim``, bottleneck ``width``, slice ``start`` of the values."""

    kind: str  # "intermediate" | "output"
    dim: int
    width: int
    start: int
    scale: float = 0.0  # s of the normalised form; 0 = the plain form

    @property
    def size(self) -> int:
        return 2 * self.dim * self.width + self.width + self.dim

    def apply(self, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f(x) for x (..., dim) -> (..., dim), with parameters read from ``values``."""
        d, m, p = self.dim, self.width, self.start
        w_down = values[p:p + m * d].view(m, d)
        b_down = values[p + m * d:p + m * d + m]
        w_up = values[p + m * d + m:p + 2 * m * d + m].view(d, m)
        b_up = values[p + 2 * m * d + m:p + self.size]
        if not self.scale:
            return F.linear(F.gelu(F.linear(x, w_down, b_down)), w_up, b_up)
        hidden = F.gelu(F.linear(x / self.scale, w_down) / math.sqrt(d) + b_down)
        return torch.tanh(F.linear(hidden, w_up, b_up) / TRUST) * (TRUST * self.scale)


def hiwi_targets(model: nn.Module, attr: str) -> dict[str, str]:
    """FFN parameter name -> adapter kind (``shared.architectures.ffn_kind``), in model order.

    ``attr = "weight"``: the rows of the weight as stored (``Conv1D``: (in, out), so rows of width out)."""
    out = {f"{n}.{attr}": ffn_kind(n) for n, m in model.named_modules()
           if isinstance(m, PROJECTIONS) and ffn_kind(n) and getattr(m, attr, None) is not None}
    if not out:
        hint = "set hiwi-target='weight' (Llama-style decoders have no biases) or use method='pafi'" \
            if attr == "bias" else "use method='pafi'"
        raise ConfigError(f"HiWi found no feed-forward {attr} tensors in this model; {hint}")
    return out


@torch.no_grad()
def _kind_rms(params: dict[str, torch.Tensor], targets: dict[str, str], kind: str) -> float:
    """rms of all base tensors of one kind, in float64 for a value every node computes alike (1.0 if all zero)."""
    tensors = [params[n].detach().double().flatten() for n, k in targets.items() if k == kind]
    rms = float(torch.cat(tensors).pow(2).mean().sqrt())
    return rms if rms > 0 else 1.0


class _Adapted(nn.Module):
    """Parametrization: t -> t + f(t), f reading the tuner's live value vector."""

    def __init__(self, tuner: "HiwiTuner", adapter: Adapter):
        super().__init__()
        self._tuner = [tuner]  # list: keep the tuner out of the module tree
        self.adapter = adapter

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.adapter.apply(self._tuner[0].values, t).to(t.dtype)


class HiwiTuner(Tuner):
    """HiWi's tuner: one shared adapter per FFN tensor kind, parametrizing those tensors."""

    def __init__(self, base: BaseModel, cfg: RunConfig, digest: str):
        self.base, self.cfg = base, cfg
        st = build(HiwiSettings, cfg.options)
        self.attr, self.width, self.normalize = st.target, st.bottleneck, st.normalize
        self.targets = hiwi_targets(base.model, self.attr)
        params = dict(base.model.named_parameters())
        self.adapters: dict[str, Adapter] = {}
        start = 0
        for name, kind in self.targets.items():
            if kind not in self.adapters:
                scale = _kind_rms(params, self.targets, kind) if self.normalize else 0.0
                self.adapters[kind] = Adapter(kind, int(params[name].shape[-1]), self.width, start, scale)
                start += self.adapters[kind].size
            elif params[name].shape[-1] != self.adapters[kind].dim:
                raise ConfigError(f"{name} has width {params[name].shape[-1]}, other {kind} tensors "
                                  f"{self.adapters[kind].dim}; HiWi shares one adapter per kind")
        self._k = start
        recipe = f"hiwi|target={self.attr}|bottleneck={self.width}|" + (
            f"normalized|trust={TRUST}|" if self.normalize else "") + ",".join(
            f"{a.kind}:{a.dim}" for a in self.adapters.values())
        self._fingerprint = mask_fingerprint(digest, recipe, 0.0, list(self.targets),
                                             [torch.zeros(0, dtype=torch.long)] * len(self.targets))
        self._init_value_head(base.model, base.head_names, self._k)
        modules = dict(base.model.named_modules())
        for name, kind in self.targets.items():
            parametrize.register_parametrization(modules[name.rpartition(".")[0]], self.attr,
                                                 _Adapted(self, self.adapters[kind]), unsafe=True)

    # ---- the tuner contract ------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def initial_values(self) -> torch.Tensor:
        """Effective W_down ~ U(±1/√d) from a generator seeded by ``seed``; the rest 0, so f = 0 at the start.

        Normalised, the stored W_down is U(±1) and the forward divides by √d.
        """
        gen = torch.Generator().manual_seed(int(self.cfg.seed) * 7_919 + 29)
        v = torch.zeros(self._k)
        for a in self.adapters.values():
            n = a.width * a.dim
            v[a.start:a.start + n] = (torch.rand(n, generator=gen) * 2 - 1) / (1.0 if a.scale else math.sqrt(a.dim))
        return v

    @torch.no_grad()
    def adapted(self, fresh: nn.Module, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The new tensors t + f(t) computed from ``fresh``'s (unwrapped base) tensors, by name."""
        check_vector(values, self._k)
        params = dict(fresh.named_parameters())
        out = {}
        for name, kind in self.targets.items():
            t = params[name].detach()
            new = t + self.adapters[kind].apply(values.float(), t.float()).to(t.dtype)
            if not torch.isfinite(new).all():
                raise ValueError(f"HiWi produced non-finite entries in {name}; nothing merged")
            out[name] = new
        return out

    def merge(self, fresh: nn.Module, values: torch.Tensor, head: dict[str, torch.Tensor]) -> nn.Module:
        """Write b' = b + f(b) (and the head) into ``fresh``; f is not kept: same architecture as the base."""
        new = self.adapted(fresh, values)
        params = dict(fresh.named_parameters())
        write_head(params, head)
        with torch.no_grad():
            for name, t in new.items():
                params[name].copy_(t)
        return fresh

    def save_artifact(self, out, values: torch.Tensor, head: dict[str, torch.Tensor], cfg: RunConfig, source: str):
        return save_hiwi_artifact(Path(out) / "delta.safetensors", self, values, head, source)

    def apply_artifact(self, out, fresh: nn.Module) -> nn.Module:
        """The stored new FFN tensors and head, written into ``fresh`` (no adapter needed)."""
        path = Path(out) / "delta.safetensors"
        if artifact_fingerprint(path) != self.fingerprint:
            raise MaskMismatchError(f"{path} was made by another hiwi configuration or base model")
        return apply_hiwi_artifact(path, fresh)

    def finalize(self, merged: nn.Module, values: torch.Tensor, score_fn, out) -> dict:
        """Artifact size and the merged model's speed and size next to the base's (``summary.json``)."""
        return finalize_hiwi(self, merged, values, score_fn, out)


def make_hiwi_tuner(base: BaseModel, cfg: RunConfig, digest: str) -> HiwiTuner:
    """The method's ``build``."""
    return HiwiTuner(base, cfg, digest)
