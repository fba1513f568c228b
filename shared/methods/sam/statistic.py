"""SAM (Fu et al., AAAI 2023) selection statistic, federated: pure torch functions.

The paper ranks entries by grad(L)(theta_0)_i^2 (Theorem 3 with a constant Hessian bound) and keeps
the top floor(m*p); its code sums *raw* gradients over burn-in batches without updating and then
takes the top entries. Federated, the same rule is: every client sums its raw gradients over
``sam-batches`` local batches at the pre-trained weights, the server sums the clients' sums and
squares the result (sum-then-square). That is exactly the centralized accumulated gradient over the
union of the clients' batches, which per-client squaring (a Fisher-like sum of squares) is not.

Candidates are PaFi's (the encoder's attention/FFN matrices), so only the ranking differs between
``pafi``, ``magnitude``, ``random`` and ``sam``. The flat candidate space is their concatenation in
``named_parameters()`` order.

Schemes: ``dense`` (each client sends its (n_cand,) float32 sum; exact) and ``local-top`` (each
client sends only its own top ``sam-local-factor * k`` entries by |g|, as int32 positions + float32
values; the server treats what a client did not send as 0) and ``refine`` (``local-top``, then a
second pass: the server sends the union U of the reported positions and every client returns its exact
sum at U, float32 values only; the top-k is then exact within U).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from shared.config import RunConfig
from shared.data import Encoded, batch_indices
from shared.device import model_device, to_device
from shared.masks import block_matrix_names, select_by_score
from shared.methods.sam.config import SamSettings

def recipe_fingerprint(digest: str, cfg: RunConfig, st: SamSettings) -> str:
    """What every node must agree on before selection: base, density, scope and the SAM settings."""
    text = f"{digest}|sam-recipe|{cfg.mask_density!r}|{cfg.mask_scope}|{st.batches}|{st.scheme}|{st.local_factor!r}|" \
           f"{cfg.batch_size}|{cfg.seed}"
    return hashlib.sha256(text.encode()).hexdigest()


def candidate_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every SAM candidate, in flat-space order."""
    params = dict(model.named_parameters())
    return {n: tuple(params[n].shape) for n in block_matrix_names(model)}


def accumulate_gradients(model: nn.Module, names: list[str], data: Encoded, batches: int, batch_size: int,
                         seed: int) -> torch.Tensor:
    """Sum of raw loss gradients w.r.t. ``names`` over ``batches`` seeded batches, no update; (n_cand,) float32.

    Train mode (dropout on, seeded), as in the paper's burn-in; the parameters' ``requires_grad`` and
    ``grad`` are restored afterwards.
    """
    if len(data) == 0:
        raise ValueError("this client's partition is empty; SAM needs local data")
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in chosen:
        p.requires_grad_(True)
        p.grad = None
    was_training = model.training
    torch.manual_seed(int(seed))
    model.train()
    try:
        for idx in batch_indices(len(data), batch_size, batches, seed):
            model(**to_device(data.batch(idx), model_device(model))).loss.backward()  # .grad: the raw sum
        return torch.cat([p.grad.detach().reshape(-1).float().cpu() for p in chosen])
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), saved):
            p.grad = None
            p.requires_grad_(flag)


def _as_tensors(flat: torch.Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, shape in shapes.items():
        size = int(torch.Size(shape).numel())
        out[name] = flat[start:start + size].view(shape)
        start += size
    return out


def top_by_square(flat: torch.Tensor, shapes: dict[str, tuple[int, ...]], density: float,
                  scope: str) -> dict[str, torch.Tensor]:
    """Per candidate name, the flat positions of the largest ``flat**2`` (global top-k or per matrix)."""
    return select_by_score(_as_tensors(flat, shapes), lambda t: -(t.double() ** 2), density, scope)


def to_flat_index(selected: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> torch.Tensor:
    """Per-name positions -> ascending positions in the flat candidate space (int64)."""
    parts, start = [], 0
    for name, shape in shapes.items():
        if name in selected:
            parts.append(selected[name].to(torch.int64) + start)
        start += int(torch.Size(shape).numel())
    return torch.sort(torch.cat(parts)).values if parts else torch.empty(0, dtype=torch.long)


def from_flat_index(flat_idx: torch.Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Positions in the flat candidate space -> per-name positions."""
    out, start = {}, 0
    for name, shape in shapes.items():
        stop = start + int(torch.Size(shape).numel())
        out[name] = flat_idx[(flat_idx >= start) & (flat_idx < stop)] - start
        start = stop
    return out


def local_top(grad: torch.Tensor, shapes: dict[str, tuple[int, ...]], density: float, factor: float,
              scope: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's cheap report: its own top ``factor * k`` entries by |g| (positions int64, values float32)."""
    idx = to_flat_index(top_by_square(grad, shapes, min(1.0, density * factor), scope), shapes)
    return idx, grad[idx].float()


def global_statistic(contributions: list[tuple[torch.Tensor | None, torch.Tensor]], n: int) -> torch.Tensor:
    """Sum of the clients' accumulated gradients (float64, (n,)); ``(None, g)`` is a dense contribution."""
    acc = torch.zeros(n, dtype=torch.float64)
    for idx, vals in contributions:
        if idx is None:
            acc += vals.double()
        else:
            acc.index_add_(0, idx, vals.double())
    return acc


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a ∩ b| / |a| for two sets of flat positions."""
    if a.numel() == 0:
        return 1.0
    return float(torch.isin(a, b).sum()) / a.numel()
