"""Where do the mask methods put their k entries? Density per matrix kind and per layer, and overlaps.

For each method that chooses its entries with a static selector (pafi, random, magnitude, ...), builds
the mask every node would build from the base model and prints: the mask's density in each kind of
encoder matrix (query, key, value, attention output, intermediate, output) and in each layer, the
fraction of rows and columns it touches, the |w| of its entries against the candidates', and how much
each pair of masks shares (|A ∩ B| / k). Reads the base weights only: no data, no training.

    python -m simulations.benchmark.mask_layout --methods pafi,random,magnitude -c "mask-density=0.005"

sam chooses its mask federatedly (the clients' gradients at the pre-trained weights), so no static selector
rebuilds it: ``--sam-run`` reads the positions a finished or stopped sam run chose from its checkpoint
(``sel.sam.mask-index``) and lays them out beside the static masks (same model and density required):

    python -m simulations.benchmark.mask_layout --methods pafi,random,magnitude --sam-run docs/results/paper/runs/sam-s42
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch

from shared.config import ConfigError
from shared.masks import Mask, block_matrix_names
from shared.methods import get_method
from shared.methods.mask import select_mask
from shared.model import base_weights_digest, load_base_model
from shared.runtime import num_labels_for
from shared.settings import parse_run_config

_LAYER = re.compile(r"\.layer\.(\d+)\.")


def _kind_and_layer(name: str) -> tuple[str, str]:
    """``bert.encoder.layer.3.attention.self.query.weight`` -> (``attention.self.query``, ``3``)."""
    m = _LAYER.search(name)
    if m is None:
        return name.removesuffix(".weight"), "-"
    return name[m.end():].removesuffix(".weight"), m.group(1)


def layout(model: torch.nn.Module, mask: Mask) -> dict[str, Any]:
    """Where ``mask``'s entries lie in ``model``'s candidate matrices (all figures are fractions)."""
    params = dict(model.named_parameters())
    picked: dict[str, dict[str, int]] = {"kind": {}, "layer": {}}
    sizes: dict[str, dict[str, int]] = {"kind": {}, "layer": {}}
    rows = cols = rows_all = cols_all = 0
    chosen, every = [], []
    in_mask = {name: idx for name, idx, _, _ in mask.items()}
    empty = torch.zeros(0, dtype=torch.long)
    # every candidate matrix counts in the densities, also one the mask left empty (sam's may skip a matrix whole)
    for name in list(dict.fromkeys(block_matrix_names(model) + list(in_mask))):
        idx = in_mask.get(name, empty)
        w = params[name].detach()
        kind, layer = _kind_and_layer(name)
        for key, group in (("kind", kind), ("layer", layer)):
            picked[key][group] = picked[key].get(group, 0) + int(idx.numel())
            sizes[key][group] = sizes[key].get(group, 0) + w.numel()
        if w.dim() == 2:
            rows += int((idx // w.shape[1]).unique().numel())
            cols += int((idx % w.shape[1]).unique().numel())
            rows_all, cols_all = rows_all + w.shape[0], cols_all + w.shape[1]
        chosen.append(w.flatten()[idx].abs())
        every.append(w.flatten().abs())
    chosen_w, every_w = torch.cat(chosen).float(), torch.cat(every).float()
    return {
        "k": mask.k,
        "density": {key: {g: picked[key][g] / sizes[key][g] for g in sizes[key]} for key in sizes},
        "share": {key: {g: picked[key][g] / max(mask.k, 1) for g in sizes[key]} for key in sizes},
        "rows_touched": rows / rows_all if rows_all else 0.0,
        "cols_touched": cols / cols_all if cols_all else 0.0,
        "median_abs_w": float(chosen_w.median()) if chosen_w.numel() else 0.0,
        "max_abs_w": float(chosen_w.max()) if chosen_w.numel() else 0.0,
        "candidate_median_abs_w": float(every_w.median()),
    }


def overlap(a: Mask, b: Mask) -> float:
    """|A ∩ B| / k_A over the positions of two masks on the same model (names matched)."""
    theirs = dict(zip(b.names, b.indices))
    shared = 0
    for name, idx, _, _ in a.items():
        other = theirs.get(name)
        if other is not None and idx.numel() and other.numel():
            shared += int(torch.isin(idx, other).sum())
    return shared / a.k if a.k else 0.0


def format_layouts(layouts: dict[str, dict[str, Any]], masks: dict[str, Mask]) -> str:
    """The tables this module prints: density per kind and per layer (%), row/column reach, |w|, overlaps."""
    names = list(layouts)
    head = "| | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names)
    out = []
    for key, title in (("kind", "matrix kind"), ("layer", "layer")):
        groups = list(next(iter(layouts.values()))["density"][key])
        lines = [f"density per {title} (% of its candidates; share of k in brackets)", head]
        for g in groups:
            cells = [f"{100 * layouts[n]['density'][key][g]:.3f} ({100 * layouts[n]['share'][key][g]:.1f})"
                     for n in names]
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    rows = ["reach and weights", head]
    for label, field, fmt in (("k", "k", "{:,}"), ("rows touched", "rows_touched", "{:.3f}"),
                              ("columns touched", "cols_touched", "{:.3f}"),
                              ("median abs(w) in mask", "median_abs_w", "{:.2e}"),
                              ("max abs(w) in mask", "max_abs_w", "{:.2e}"),
                              ("median abs(w) of candidates", "candidate_median_abs_w", "{:.2e}")):
        rows.append(f"| {label} | " + " | ".join(fmt.format(layouts[n][field]) for n in names) + " |")
    out.append("\n".join(rows))
    pairs = ["overlap |A ∩ B| / k (row A, column B)", head]
    for a in names:
        pairs.append(f"| {a} | " + " | ".join(f"{overlap(masks[a], masks[b]):.4f}" for b in names) + " |")
    out.append("\n".join(pairs))
    return "\n\n".join(out)


def sam_run_mask(run_dir: Path, base, digest: str, model: str, density: float) -> Mask:
    """The mask a sam run selected: its checkpoint's flat positions in the candidate space of ``base``, which must
    be the run's own model at the run's own density (a one-line ConfigError says what differs)."""
    from server.checkpoint import load_checkpoint
    from shared.methods.sam.phase import SAM_POSITIONS

    cfg_path, ck_path = run_dir / "run_config.json", run_dir / "checkpoint.safetensors"
    if not cfg_path.is_file() or not ck_path.is_file():
        raise ConfigError(f"--sam-run {run_dir} has no run_config.json and checkpoint.safetensors; pass a sam run's "
                          f"folder, e.g. docs/results/paper/runs/sam-s42")
    stored = json.loads(cfg_path.read_text())
    stored.pop("data-dir", None)  # no data is read; the folder may be another machine's path
    cfg = parse_run_config(stored)
    method = get_method(cfg.method)
    if method.select is None:  # a static mask: --methods rebuilds it from the base weights
        raise ConfigError(f"--sam-run {run_dir} is a {cfg.method!r} run, whose mask no selection phase chose; pass a "
                          f"sam run's folder (or name {cfg.method} in --methods)")
    if (cfg.model or "") != (model or "") or abs(cfg.mask_density - density) > 1e-12:
        raise ConfigError(f"--sam-run {run_dir} used model {cfg.model or 'bundled MiniLM'!r} at mask-density "
                          f"{cfg.mask_density}; pass -c with the same model and mask-density")
    flat = load_checkpoint(ck_path).selection.get(SAM_POSITIONS)  # digest-checked: a corrupt file is refused
    if flat is None:
        raise ConfigError(f"--sam-run {run_dir}: its checkpoint holds no {SAM_POSITIONS} (the run stopped before its "
                          f"selection finished); pass a run that trained at least one round")
    return method.build(base, cfg, digest).mask_from_flat_index(flat.long())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--run-config", default="", help="run-config overrides (model, mask-density, mask-scope, ...)")
    ap.add_argument("--methods", default="pafi,random,magnitude", help="comma-separated mask methods")
    ap.add_argument("--sam-run", type=Path, help="a sam run's folder: lay out the mask it chose (its checkpoint)")
    args = ap.parse_args(argv)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    from flwr.common.config import parse_config_args

    try:  # every name and knob is checked before the model loads
        if not names:
            raise ConfigError("--methods is empty; pass e.g. --methods pafi,random,magnitude")
        for name in names:
            if get_method(name).selector is None:
                raise ConfigError(f"method {name!r} has no static mask selector; choose mask methods "
                                  f"such as pafi, random, magnitude")
        overrides = dict(parse_config_args([args.run_config])) if args.run_config else {}
        cfgs = {n: parse_run_config({**overrides, "method": n}) for n in names}
    except (ConfigError, ValueError) as exc:
        raise SystemExit(f"mask_layout: {exc}") from None
    first = cfgs[names[0]]
    base = load_base_model(first.model, num_labels_for(first), first.seed)
    digest = base_weights_digest(base.model, base.head_names)
    masks = {n: select_mask(base.model, cfgs[n], digest) for n in names}
    if args.sam_run is not None:
        try:
            masks[f"sam ({args.sam_run.name})"] = sam_run_mask(args.sam_run, base, digest, first.model,
                                                              first.mask_density)
        except (ConfigError, ValueError) as exc:
            raise SystemExit(f"mask_layout: {exc}") from None
    names = list(masks)
    layouts = {n: layout(base.model, masks[n]) for n in names}
    print(f"mask-density {first.mask_density}  mask-scope {first.mask_scope}  model {first.model or 'bundled MiniLM'}\n")
    print(format_layouts(layouts, masks))


if __name__ == "__main__":
    main()
