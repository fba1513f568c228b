"""``sam``'s tuner: a mask chosen from federated gradient statistics (``statistic.py``), then values only.

Before the selection phase the tuner is *pending*: k = 0 and its fingerprint is the recipe's
(base digest, density, scope, SAM settings), which the handshake checks. The server's selection
phase computes the mask and broadcasts its positions once; :meth:`SamTuner.install` then wires a
:class:`~shared.tuner.SparseTuner` for that mask and the tuner behaves exactly like a fixed-mask
tuner with the mask's own fingerprint (it delegates every contract method).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from shared.artifacts import head_tensors, read_tensors, write_tensors
from shared.config import RunConfig
from shared.knobs import build
from shared.masks import Mask, MaskError, MaskMismatchError, build_mask
from shared.methods.base import Tuner
from shared.methods.sam.config import SamSettings
from shared.methods.sam.statistic import candidate_shapes, from_flat_index, recipe_fingerprint
from shared.device import model_device
from shared.model import BaseModel, load_base_model
from shared.sparse import gather_values, merge_into
from shared.tuner import SparseTuner

FORMAT = "fedsparse-sam-delta-v1"


class SelectionPendingError(RuntimeError):
    """The sam mask has not been selected yet; run the selection phase first."""


class SamTuner(Tuner):
    """Pending until :meth:`install`; then a delegating wrapper around a :class:`SparseTuner`."""

    def __init__(self, base: BaseModel, cfg: RunConfig, digest: str):
        self.base, self.cfg, self.digest = base, cfg, digest
        self.settings: SamSettings = build(SamSettings, cfg.options)
        self.head_names = tuple(base.head_names)
        self.recipe = recipe_fingerprint(digest, cfg, self.settings)
        self.shapes = candidate_shapes(base.model)
        self.inner: SparseTuner | None = None
        self.active = False
        self.selection_report: dict = {}
        self._empty = nn.Parameter(torch.zeros(0))

    # ---- selection ------------------------------------------------------------------------
    @property
    def num_candidates(self) -> int:
        return int(sum(torch.Size(s).numel() for s in self.shapes.values()))

    def mask_from_selection(self, selected: dict[str, torch.Tensor]) -> Mask:
        """Freeze per-name positions into the sam Mask. Its fingerprint covers the base, density and every
        position (not the scheme), so two schemes that select the same set agree on it."""
        mask = build_mask(self.base.model, selected, "sam", self.cfg.mask_density, self.digest)
        if mask.k == 0:
            raise MaskError(f"mask-density {self.cfg.mask_density} selects no entries; raise mask-density")
        return mask

    def mask_from_flat_index(self, flat_idx: torch.Tensor) -> Mask:
        """The Mask for positions in the flat candidate space (what the server broadcasts)."""
        if flat_idx.numel() and (int(flat_idx.min()) < 0 or int(flat_idx.max()) >= self.num_candidates):
            raise MaskError(f"sam mask positions outside the {self.num_candidates} candidates")
        return self.mask_from_selection(from_flat_index(flat_idx, self.shapes))

    def install(self, mask: Mask) -> None:
        """Train ``mask`` from now on. A different mask than an earlier one gets a freshly loaded base
        (a SparseTuner wires the model in place and cannot be unwired)."""
        if self.inner is not None and self.inner.fingerprint != mask.fingerprint:
            fresh = load_base_model(self.cfg.model, int(self.base.model.config.num_labels), self.cfg.seed,
                                    problem_type=self.base.model.config.problem_type, kind=self.base.kind)
            self.base.model = fresh.model.to(model_device(self.base.model))  # the Runtime shares this BaseModel
            self.inner = None
        if self.inner is None:
            self.inner = SparseTuner(self.base.model, mask, self.base.head_names, sparse_grad=self.cfg.sparse_grad)
        self.active = True

    def to(self, device: torch.device) -> "SamTuner":
        """Move the pending placeholder and, once installed, the inner tuner (built on the model's device)."""
        with torch.no_grad():
            self._empty.data = self._empty.data.to(device)
        if self.inner is not None:
            self.inner.to(device)
        return self

    def reset(self) -> None:
        """Back to pending (a new run on this process): fingerprint = recipe until the next install."""
        self.active = False

    def _tuner(self) -> SparseTuner:
        if not self.active or self.inner is None:
            raise SelectionPendingError("the sam mask is not selected yet; the server runs the selection phase "
                                        "after the handshake")
        return self.inner

    # ---- the tuner contract ---------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint if self.active and self.inner is not None else self.recipe

    @property
    def k(self) -> int:
        return self.inner.k if self.active and self.inner is not None else 0

    @property
    def values(self) -> nn.Parameter:
        return self.inner.values if self.active and self.inner is not None else self._empty

    @property
    def mask(self) -> Mask:
        return self._tuner().mask

    @property
    def _head(self) -> dict[str, nn.Parameter]:  # the live head of the current base model
        params = dict(self.base.model.named_parameters())
        return {n: params[n] for n in self.head_names}

    def load(self, values: torch.Tensor, head: dict[str, torch.Tensor] | None = None) -> None:
        if not self.active and values.numel() == 0:  # pending: only the head can be set
            params = dict(self.base.model.named_parameters())
            with torch.no_grad():
                for name, t in (head or {}).items():
                    params[name].copy_(t)
            return
        self._tuner().load(values, head)

    def trainable(self, train_head: bool = True) -> list[nn.Parameter]:
        return self._tuner().trainable(train_head)

    def merge(self, fresh: nn.Module, values: torch.Tensor, head: dict[str, torch.Tensor]) -> nn.Module:
        return self._tuner().merge(fresh, values, head)

    def save_artifact(self, out, values: torch.Tensor, head: dict[str, torch.Tensor], cfg: RunConfig,
                      source: str) -> Path:
        """``delta.safetensors`` with the positions too: a data-dependent mask cannot be re-derived."""
        mask = self._tuner().mask
        tensors = {"values": values.detach().float().contiguous()}
        tensors.update({f"head.{n}": t.detach().float().contiguous() for n, t in head.items()})
        tensors.update({f"index.{n}": idx.contiguous() for n, idx in zip(mask.names, mask.indices)})
        meta = {"format": FORMAT, "fingerprint": mask.fingerprint, "method": "sam",
                "mask_density": repr(mask.density), "k": str(mask.k), "model": source}
        return write_tensors(out, tensors, meta)

    def apply_artifact(self, out, fresh: nn.Module) -> nn.Module:
        """Rebuild the stored mask from its positions (fingerprint checked), then merge the values."""
        path = Path(out) / "delta.safetensors"
        tensors, meta = read_tensors(path)
        if meta.get("format") != FORMAT:
            raise MaskMismatchError(f"{path} is not a sam artifact")
        selected = {n[len("index."):]: t for n, t in tensors.items() if n.startswith("index.")}
        mask = self.mask_from_selection(selected)
        if mask.fingerprint != meta["fingerprint"]:
            raise MaskMismatchError(f"{path}'s positions rebuild to {mask.fingerprint[:12]} on this base model, "
                                    f"not the recorded {meta['fingerprint'][:12]}; load the base it was trained on")
        params = dict(fresh.named_parameters())
        return merge_into(fresh, mask, gather_values(params, mask), tensors["values"], head_tensors(tensors))

    def describe(self) -> dict:
        st = self.settings
        return {"sam_batches": st.batches, "sam_scheme": st.scheme, "sam_local_factor": st.local_factor,
                **self.selection_report}
