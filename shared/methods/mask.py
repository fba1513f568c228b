"""Mask methods: a selector picks positions from the base weights alone; a SparseTuner trains them.

Contract of a selector: ``fn(model, density, cfg) -> dict[name, LongTensor]`` mapping a parameter
name to the flat indices selected in it; it must depend only on the base weights and the config
(never on data or node), so every node computes the same mask. A new mask method is one folder
whose ``__init__.py`` says ``METHOD = mask_method(name, help, selector)`` and one registry line.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from shared.artifacts import head_tensors, read_delta
from shared.config import RunConfig
from shared.knobs import knobs
from shared.masks import Mask, MaskError, MaskMismatchError, build_mask
from shared.methods import get_method
from shared.methods.base import Method, NoSettings, Selector
from shared.model import BaseModel, base_weights_digest
from shared.sparse import gather_values, merge_into
from shared.tuner import SparseTuner


def mask_method(name: str, help: str, selector: Selector, settings: type = NoSettings, **fields) -> Method:
    """A :class:`Method` that trains the entries ``selector`` picks (knobs in ``settings``: in the fingerprint)."""
    def build(base: BaseModel, cfg: RunConfig, digest: str) -> SparseTuner:
        return SparseTuner(base.model, select_mask(base.model, cfg, digest, method), base.head_names,
                           sparse_grad=cfg.sparse_grad)

    method = Method(name=name, help=help, build=build, settings=settings, selector=selector, **fields)
    return method


def selector_recipe(method: Method, cfg: RunConfig) -> str:
    """``key=value,...`` of the method's own knobs ("" if none): folded into the fingerprint."""
    settings = method.settings_of(cfg)
    values = {key: getattr(settings, f.name) for key, (f, _) in knobs(method.settings).items()}
    return ",".join(f"{key}={values[key]!r}" for key in sorted(values))


def select_mask(model: nn.Module, cfg: RunConfig, base_digest: str, method: Method | None = None) -> Mask:
    """Run ``cfg.method``'s selector at ``cfg.mask_density`` and fingerprint the result."""
    method = method or get_method(cfg.method)
    if method.selector is None:
        raise MaskError(f"method {method.name!r} does not choose its entries with a mask selector")
    selected = method.selector(model, cfg.mask_density, cfg)
    mask = build_mask(model, selected, method.name, cfg.mask_density, base_digest, selector_recipe(method, cfg))
    if mask.k == 0:
        raise MaskError(f"mask-density {cfg.mask_density} selects no entries; raise mask-density")
    return mask


def apply_delta(path: str | Path, base: BaseModel) -> nn.Module:
    """Rebuild the mask from ``base``, verify the fingerprint and merge the stored values in place."""
    tensors, meta = read_delta(path)
    cfg = RunConfig(method=meta["method"], mask_density=float(meta["mask_density"]), mask_scope=meta["mask_scope"],
                    seed=int(meta["seed"]), options=_options(meta.get("options", "{}")))
    mask = select_mask(base.model, cfg, base_weights_digest(base.model, base.head_names))
    if mask.fingerprint != meta["fingerprint"]:
        raise MaskMismatchError(
            f"{path} was made for mask {meta['fingerprint'][:12]}, this base model gives {mask.fingerprint[:12]}; "
            f"load the base model the delta was trained on ({meta['model']})"
        )
    params = dict(base.model.named_parameters())
    return merge_into(base.model, mask, gather_values(params, mask), tensors["values"], head_tensors(tensors))


def _options(text: str) -> dict:
    """Method knobs as stored in a delta file (JSON; older files stored every value as a string)."""
    out = {}
    for key, value in json.loads(text).items():
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[key] = value
    return out
