"""``lora``: LoRA through PEFT; only the adapter weights travel, merged at the end with PEFT's own merge.

PEFT injects its LoRA layers into the base model (``get_peft_model``, seeded so every node builds the
same initial A matrices). To keep the global state one flat vector, every adapter weight is then
parametrized as a view of the tuner's ``values`` (k,) float32 (adapter parameters in PEFT's
``named_parameters()`` order, each flattened), so the strategy, codec and byte accounting are unchanged.
The final model is built by PEFT on a fresh base and merged with ``merge_and_unload(safe_merge=True)``.
Knobs: ``config.py``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from shared.architectures import is_transposed, query_value_targets
from shared.config import ConfigError, RunConfig
from shared.masks import MaskMismatchError
from shared.methods.base import Tuner
from shared.methods.common import check_vector
from shared.methods.lora.config import LoraSettings
from shared.model import BaseModel
from shared.sparse import MergeError


def lora_config(st: LoraSettings, model: nn.Module) -> LoraConfig:
    """PEFT's LoraConfig from the settings (no task type: the head is ours, trained densely).

    ``auto`` targets the model's query/value projections; ``fan_in_fan_out`` is set when the targets are
    GPT-2's ``Conv1D`` (weight stored (in, out)), as PEFT needs for them.
    """
    targets = st.targets or query_value_targets(model)
    if not targets:
        raise ConfigError("run-config key 'lora-target-modules' must name at least one module of this model, "
                          "e.g. \"query,value\" (BERT), \"c_attn\" (GPT-2), \"q_proj,v_proj\" (Llama)")
    fan_in_fan_out = any(is_transposed(m) for n, m in model.named_modules() if n.rpartition(".")[2] in targets)
    return LoraConfig(r=st.rank, lora_alpha=st.alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                      fan_in_fan_out=fan_in_fan_out)


def wrap_with_lora(model: nn.Module, config: LoraConfig, seed: int) -> PeftModel:
    """``get_peft_model`` with the global RNG seeded (and restored), so all nodes draw the same A."""
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        return get_peft_model(model, config)


def adapter_parameters(peft_model: PeftModel) -> list[tuple[str, nn.Parameter]]:
    """The LoRA weights of the default adapter, in ``named_parameters()`` order."""
    return [(n, p) for n, p in peft_model.named_parameters() if ".lora_" in n and ".default." in n]


class _AdapterSlice(nn.Module):
    """Parametrization: the adapter weight *is* a slice of the tuner's value vector."""

    def __init__(self, tuner: "LoraTuner", start: int, stop: int):
        super().__init__()
        self._tuner = [tuner]
        self.start, self.stop = start, stop

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self._tuner[0].values[self.start:self.stop].view_as(t)


class LoraTuner(Tuner):
    """PEFT LoRA installed into the runtime's base model."""

    def __init__(self, base: BaseModel, settings: LoraSettings, seed: int, digest: str):
        self.config, self.seed, self.head_names = lora_config(settings, base.model), seed, tuple(base.head_names)
        params = dict(base.model.named_parameters())
        self._head = {n: params[n] for n in self.head_names}
        self.peft = wrap_with_lora(base.model, self.config, seed)
        adapters = adapter_parameters(self.peft)
        if not adapters:
            raise ConfigError(f"lora-target-modules {self.config.target_modules} matched no module of the model")
        self.names = tuple(n for n, _ in adapters)
        self.shapes = tuple(tuple(p.shape) for _, p in adapters)
        self._init = torch.cat([p.detach().reshape(-1).float() for _, p in adapters])
        self.values = nn.Parameter(self._init.clone())
        modules, start = dict(self.peft.named_modules()), 0
        for name, p in adapters:
            mod_name, _, attr = name.rpartition(".")
            p.requires_grad_(False)  # the original is unused once parametrized; values carry the gradient
            parametrize.register_parametrization(modules[mod_name], attr,
                                                 _AdapterSlice(self, start, start + p.numel()), unsafe=True)
            start += p.numel()
        recipe = f"{digest}|lora|r={self.config.r}|alpha={self.config.lora_alpha}|" \
                 f"targets={sorted(self.config.target_modules)}|seed={seed}|k={self.k}"
        self._fingerprint = hashlib.sha256(recipe.encode()).hexdigest()

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def initial_values(self) -> torch.Tensor:
        """PEFT's own initialisation (A random from the seed, B zero), flattened (k,)."""
        return self._init.clone()

    def adapter_state(self, peft_model: PeftModel, values: torch.Tensor) -> None:
        """Copy ``values`` (k,) into the adapter weights of an unparametrized PEFT model of the same config."""
        check_vector(values, self.k)
        adapters, start = adapter_parameters(peft_model), 0
        if tuple(n for n, _ in adapters) != self.names:
            raise MergeError("the PEFT model's adapters differ from the tuner's; same lora-* settings needed")
        with torch.no_grad():
            for _, p in adapters:
                p.copy_(values[start:start + p.numel()].view_as(p))
                start += p.numel()

    def merge(self, fresh: nn.Module, values: torch.Tensor, head: dict[str, torch.Tensor]) -> nn.Module:
        """PEFT on ``fresh``, adapter weights from ``values``, ``merge_and_unload``; then the head."""
        params = dict(fresh.named_parameters())
        for name, t in head.items():
            if name not in params or params[name].shape != t.shape or not torch.isfinite(t).all():
                raise MergeError(f"head tensor {name} is missing, misshapen or non-finite; nothing merged")
        peft_model = wrap_with_lora(fresh, self.config, self.seed)
        self.adapter_state(peft_model, values)
        merged = peft_model.merge_and_unload(safe_merge=True)
        with torch.no_grad():
            merged_params = dict(merged.named_parameters())
            for name, t in head.items():
                merged_params[name].copy_(t)
        return merged

    def save_artifact(self, out, values: torch.Tensor, head: dict[str, torch.Tensor], cfg: RunConfig,
                      source: str) -> Path:
        """``adapter/``: a PEFT adapter folder (loadable with ``PeftModel.from_pretrained``) plus the head."""
        folder = Path(out) / "adapter"
        folder.mkdir(parents=True, exist_ok=True)
        flat = {}
        start = 0
        for name, shape in zip(self.names, self.shapes):
            size = int(torch.tensor(shape).prod())
            flat[name] = values[start:start + size].view(shape).contiguous()
            start += size
        state = get_peft_model_state_dict(self.peft, state_dict=flat)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
        config = LoraConfig(**{**self.config.to_dict(), "base_model_name_or_path": source})
        config.save_pretrained(str(folder))
        save_file({n: t.detach().float().contiguous() for n, t in head.items()}, str(folder / "head.safetensors"),
                  metadata={"fingerprint": self.fingerprint})
        return folder

    def apply_artifact(self, out, fresh: nn.Module) -> nn.Module:
        """``PeftModel.from_pretrained`` on ``fresh``, PEFT's safe merge, then the head (fingerprint checked)."""
        folder = Path(out) / "adapter"
        with safe_open(str(folder / "head.safetensors"), framework="pt") as fh:
            if (fh.metadata() or {}).get("fingerprint") != self.fingerprint:
                raise MaskMismatchError(f"{folder} was saved by another lora configuration or base model")
            head = {k: fh.get_tensor(k) for k in fh.keys()}
        merged = PeftModel.from_pretrained(fresh, str(folder)).merge_and_unload(safe_merge=True)
        with torch.no_grad():
            params = dict(merged.named_parameters())
            for name, t in head.items():
                params[name].copy_(t)
        return merged

    def describe(self) -> dict:
        """summary.json figures; ``num_params`` counts the base model without PEFT's adapter tensors."""
        n_base = sum(p.numel() for n, p in self.peft.named_parameters() if ".lora_" not in n)
        return {"num_params": n_base, "dense_bytes_per_client_round": 4 * n_base, "lora_rank": self.config.r, "lora_alpha": self.config.lora_alpha,
                "lora_target_modules": sorted(self.config.target_modules), "adapter_params": self.k}


