"""Train only the masked entries: one (k,) value vector wired into the frozen base model's forward.

The base weights are never written during training; a masked ``nn.Linear`` (or GPT-2's ``Conv1D``, whose
weight is stored (in, out)) computes with
``W_base + scatter(values)``, and its backward forms the weight gradient only at the k masked
positions (dW[i, j] = sum_t g[t, i] * x[t, j]), never the dense d_out x d_in gradient. Other
masked tensors (biases, LayerNorm) add their scattered slice in a parametrization. The optimizer
sees one (k,) parameter plus the small dense head, so its state is O(k), not O(N), and one base
model can serve every client a worker runs: a client's own state is the value vector and the head.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import warnings
from pathlib import Path

from shared.architectures import PROJECTIONS, is_transposed
from shared.artifacts import head_tensors, read_delta, save_delta
from shared.device import model_device, sampled_addmm_works
from shared.masks import Mask, MaskMismatchError
from shared.methods.base import Tuner
from shared.sparse import gather_values, merge_into

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


class _MaskedLinearFn(torch.autograd.Function):
    """y = x @ (W + scatter(vals))^T + b, with a sparse gradient for ``vals``.

    Backward, per call: (1) rows of the output gradient that are exactly zero are dropped (pad
    tokens, and every non-[CLS] token of the last layer, get exactly zero gradient, so this is
    exact, not an approximation); (2) the input gradient is ``g @ w`` on the remaining rows and
    zeros elsewhere; (3) the value gradient is the sampled product (g^T x) at the mask's
    positions, fed to ``sampled_addmm`` in the row-major-over-tokens layout its CPU kernel reads
    without copying (mat1 (d_out, T) contiguous, mat2 given as the transpose of a (d_in, T)
    contiguous tensor). Never forms a d_out x d_in gradient. ``sampled_addmm`` over a CSR pattern
    has CPU and CUDA kernels (CUDA: cuSPARSE SDDMM, float32/float64); where a device has none
    (probed once, :func:`shared.device.sampled_addmm_works`, e.g. MPS) the dense path is used.
    Under bf16 autocast the forward matmul and the input gradient run in bfloat16, the sampled
    value gradient in float32.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, flat_idx, pattern, vals, transposed=False):  # noqa: D401 - autograd signature
        w = weight.detach().clone()
        w.view(-1).index_add_(0, flat_idx, vals.detach().to(w.dtype))
        w = w.t() if transposed else w  # Conv1D stores (in, out): the linear weight is its transpose
        ctx.save_for_backward(x, w)
        ctx.pattern = pattern  # a constant of the layer, not an activation
        ctx.vals_dtype = vals.dtype
        ctx.transposed = transposed
        return F.linear(x, w, bias)  # under autocast (precision=bf16) this matmul runs in bfloat16

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        live = g2.abs().amax(dim=1) != 0  # (T,) rows not exactly zero; NaN rows stay live
        n_live = int(live.sum())
        sub = None if n_live == g2.shape[0] else live.nonzero().squeeze(1)
        gs = g2 if sub is None else g2.index_select(0, sub)
        gx = gvals = None
        if ctx.needs_input_grad[0]:
            gx_s = gs @ (w if w.dtype == gs.dtype else w.to(gs.dtype))  # bf16 under autocast
            gx = gx_s if sub is None else g2.new_zeros(g2.shape[0], w.shape[1]).index_copy_(0, sub, gx_s)
            gx = gx.view(x.shape).to(x.dtype)
        if ctx.needs_input_grad[5]:
            # The sampled product is O(T·k): always in float32 (the value gradient's dtype), also under bf16.
            xs = x2 if sub is None else x2.index_select(0, sub)
            pattern = ctx.pattern if ctx.pattern.dtype == torch.float32 else ctx.pattern.float()
            gvals = _sampled_grad(pattern, gs.float(), xs.float(), ctx.transposed).to(ctx.vals_dtype)
        return gx, None, None, None, None, gvals, None


def _sampled_grad(pattern: torch.Tensor, g: torch.Tensor, x: torch.Tensor, transposed: bool) -> torch.Tensor:
    """The weight gradient at ``pattern``'s positions, in the stored layout: (nnz,) float32.

    ``g`` (T, d_out), ``x`` (T, d_in). ``nn.Linear`` stores (d_out, d_in): dW = gᵀx; ``Conv1D`` stores
    (d_in, d_out): dW = xᵀg. Either way mat1 is a contiguous (rows, T) and mat2 the transpose of a
    contiguous (cols, T), the layout ``sampled_addmm``'s CPU kernel reads without copying.
    """
    rows, cols = (x, g) if transposed else (g, x)
    return torch.sparse.sampled_addmm(pattern, rows.t().contiguous(), cols.t().contiguous().t(), beta=0.0).values()


def _dense_masked_linear(x, weight, bias, flat_idx, vals, transposed=False):
    """Reference path: builds the dense effective weight and lets autograd form the dense gradient."""
    w = weight.detach().reshape(-1).index_add(0, flat_idx, vals).view_as(weight)
    return F.linear(x, w.t() if transposed else w, bias)


def csr_pattern(shape: tuple[int, int], idx: torch.Tensor) -> torch.Tensor:
    """The CSR pattern of sorted flat indices ``idx`` (int64) into a matrix of ``shape`` as stored.

    Row-major, i.e. exactly mask order, so ``sampled_addmm``'s ``.values()`` is the (k_i,) gradient slice;
    built once per layer, its values (float32 zeros) are ignored (beta=0).
    """
    n_rows, n_cols = shape
    rows, cols = idx // n_cols, idx % n_cols
    crow = torch.zeros(n_rows + 1, dtype=torch.long)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols, torch.zeros(cols.numel()), shape, check_invariants=True)


class _AddScattered(nn.Module):
    """Parametrization: tensor + scatter(slice of the shared value vector)."""

    def __init__(self, tuner: "SparseTuner", flat_idx: torch.Tensor, start: int, stop: int):
        super().__init__()
        self._tuner = [tuner]  # list: keep the tuner out of the module tree
        self.register_buffer("flat_idx", flat_idx, persistent=False)
        self.start, self.stop = start, stop

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        vals = self._tuner[0].values[self.start:self.stop]
        return t.reshape(-1).index_add(0, self.flat_idx, vals.to(t.dtype)).view_as(t)


class SparseTuner(Tuner):
    """Installs a mask's trainable value vector into ``model`` (in place, once per process).

    ``values`` (k,) float32 is the change from the base at the masked positions (mask order).
    ``sparse_grad=False`` switches masked linears to the dense-gradient reference path.

    The tuner of every mask method (``shared/methods/mask.py``) and of ``sam`` once its mask is chosen;
    the contract is :class:`shared.methods.base.Tuner`.
    """

    def __init__(self, model: nn.Module, mask: Mask, head_names: tuple[str, ...], sparse_grad: bool = True):
        self.model, self.mask, self.head_names = model, mask, tuple(head_names)
        self.sparse_grad = sparse_grad
        device = model_device(model)  # the CPU at build time; a SAM mask installed later: the model's device
        self.sparse_kernel = sampled_addmm_works(device)  # else masked linears take the dense path
        params = dict(model.named_parameters())
        self.base_values = gather_values(params, mask)  # (k,) base weights at the mask (CPU)
        self.values = nn.Parameter(torch.zeros(mask.k, device=device))
        self._linears: list[dict[str, torch.Tensor]] = []  # per wrapped linear: its flat index and CSR pattern
        self._head = {n: params[n] for n in self.head_names}
        modules = dict(model.named_modules())
        for name, idx, start, stop in mask.items():
            mod_name, _, attr = name.rpartition(".")
            module = modules[mod_name]
            if isinstance(module, PROJECTIONS) and attr == "weight":
                self._wrap_linear(module, idx, start, stop)
            else:
                scattered = _AddScattered(self, idx.to(self.values.device), start, stop)
                parametrize.register_parametrization(module, attr, scattered, unsafe=True)

    def _wrap_linear(self, module: nn.Module, idx: torch.Tensor, start: int, stop: int) -> None:
        """Replace the forward of an ``nn.Linear`` or ``Conv1D`` (weight (in, out)) by the masked linear."""
        pattern = csr_pattern(tuple(module.weight.shape), idx)
        transposed = is_transposed(module)
        device = self.values.device
        layer = {"idx": idx.to(device), "pattern": pattern.to(device)}
        self._linears.append(layer)
        tuner = self

        def forward(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
            vals = tuner.values[start:stop]
            if tuner.sparse_grad and tuner.sparse_kernel:
                return _MaskedLinearFn.apply(x, mod.weight, mod.bias, layer["idx"], layer["pattern"], vals, transposed)
            return _dense_masked_linear(x, mod.weight, mod.bias, layer["idx"], vals, transposed)

        module.forward = types.MethodType(forward, module)

    def to(self, device: torch.device) -> "SparseTuner":
        """Move the value vector and every wrapped linear's index and CSR pattern (the mask stays on the CPU)."""
        super().to(device)
        for layer in self._linears:
            for key, t in layer.items():
                layer[key] = t.to(device)
        self.sparse_kernel = sampled_addmm_works(torch.device(device))
        return self

    # ---- state exchange -------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.mask.fingerprint

    def merge(self, fresh: nn.Module, values: torch.Tensor, head: dict[str, torch.Tensor]) -> nn.Module:
        """Write base ⊕ scatter(values) and the head into ``fresh`` (an unwrapped base copy)."""
        params = dict(fresh.named_parameters())
        return merge_into(fresh, self.mask, gather_values(params, self.mask), values, head)

    def save_artifact(self, out, values: torch.Tensor, head: dict[str, torch.Tensor], cfg, source: str):
        """``delta.safetensors``: the k values, the head and the recipe that rebuilds the mask."""
        return save_delta(Path(out) / "delta.safetensors", self.mask, values, head, cfg, source)

    def apply_artifact(self, out, fresh: nn.Module) -> nn.Module:
        """Merge ``out/delta.safetensors`` into ``fresh`` after checking it was made for this mask."""
        tensors, meta = read_delta(Path(out) / "delta.safetensors")
        if meta["fingerprint"] != self.fingerprint:
            raise MaskMismatchError(f"{out} holds a delta for mask {meta['fingerprint'][:12]}, this tuner's is "
                                    f"{self.fingerprint[:12]}; load the base model and settings it was trained with")
        return self.merge(fresh, tensors["values"], head_tensors(tensors))
