"""Local masked training and evaluation loops (plain torch, no Flower)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from shared.data import Encoded, batch_indices
from shared.tasks import Task
from shared.device import autocast, model_device, to_device


@dataclass
class TrainResult:
    """Outcome of one client's local training: mean loss, examples seen, seconds spent."""

    loss: float
    num_examples: int
    seconds: float


def adamw(param_groups: list[dict], weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over ``param_groups``, with torch's fused kernel where the parameters' device has one (CPU, CUDA).

    The fused step makes one pass over parameters, gradients and moments; the default (foreach) makes about
    ten, each with a temporary as large as the parameters: on full's 22.7 M values it is several times faster on
    one CPU thread (``python -m simulations.performance.perf_benchmark --sections optimizer``; docs/performance.md).
    """
    params = [p for group in param_groups for p in group["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(param_groups, weight_decay=weight_decay, **({"fused": True} if fused else {}))


LOCAL_LOSSES = ("ce", "balanced")  # what train_local runs; the run-config adds "auto" (shared.settings.local_loss)


def balanced_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class weights ``n / (C n_c)`` from a client's own labels (``C`` the classes it holds; 0 for a class it lacks):
    under them every class it holds weighs the same in its local loss, whatever its label skew."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes).double()
    if counts.numel() > num_classes:
        raise ValueError(f"a label is {counts.numel() - 1} but there are {num_classes} classes")
    present = counts > 0
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float()


def train_local(model: nn.Module, param_groups: list[dict], data: Encoded, steps: int, batch_size: int,
                seed: int, weight_decay: float = 0.0, precision: str = "fp32",
                group_by_length: bool = True, loss: str = "ce",
                adjust: Callable[[], None] | None = None) -> TrainResult:
    """Run ``steps`` Adam steps on seeded batches of ``data``; only ``param_groups`` change.

    ``param_groups``: torch optimizer groups, each ``{"params": [...], "lr": float}``. Dropout is on
    (train mode) for the duration and restored afterwards. Batches go to the model's device;
    ``precision="bf16"`` runs forward and loss under bf16 autocast (parameters, gradients and the
    optimizer state stay float32). ``group_by_length``: batches of rows of similar length
    (:func:`shared.data.grouped_pass`), so a step pays for little padding. ``loss``: ``"ce"``, the model's own
    cross-entropy; ``"balanced"``, cross-entropy with :func:`balanced_weights` of the client's labels, which takes
    the client's label prior out of its update (the non-IID start, docs/benchmark.md). ``adjust``: called after
    each backward pass, before the optimizer step (drift correction: :class:`shared.drift.GradientAdjuster`).
    """
    if loss not in LOCAL_LOSSES:
        raise ValueError(f"local loss must be one of {', '.join(LOCAL_LOSSES)}, got {loss!r}")
    if len(data) == 0:
        raise ValueError("this client's partition is empty; use fewer clients or a larger dataset")
    opt = adamw(param_groups, weight_decay)
    device = model_device(model)
    torch.manual_seed(int(seed))  # dropout masks (seeds every device's generator)
    was_training = model.training
    model.train()
    total, seen, t0 = 0.0, 0, time.perf_counter()
    try:
        lengths = data.lengths if group_by_length else None
        weights = None
        if loss == "balanced":
            weights = balanced_weights(data.labels, _num_classes(model, data)).to(device)
        for idx in batch_indices(len(data), batch_size, steps, seed, lengths):
            batch = to_device(data.batch(idx), device)
            with autocast(device, precision):
                if weights is None:
                    step_loss = model(**batch).loss
                else:
                    labels = batch.pop("labels")
                    logits = model(**batch).logits.float()
                    step_loss = F.cross_entropy(logits, labels, weight=weights)
            opt.zero_grad(set_to_none=True)
            step_loss.backward()
            if adjust is not None:
                adjust()
            opt.step()
            total += float(step_loss.detach()) * len(idx)
            seen += len(idx)
    finally:
        model.train(was_training)
        for group in param_groups:
            for p in group["params"]:
                p.grad = None
    loss = total / max(seen, 1)
    if not math.isfinite(loss):
        raise FloatingPointError(f"local training diverged (loss {loss}); lower lr")
    return TrainResult(loss=loss, num_examples=seen, seconds=time.perf_counter() - t0)


def _num_classes(model: nn.Module, data: Encoded) -> int:
    """The width of ``model``'s logits (its config's ``num_labels``; the data's largest label + 1 for a model without
    one), checked against the labels so a class weight exists for every row."""
    top = int(data.labels.max()) + 1
    n = int(getattr(getattr(model, "config", None), "num_labels", 0) or 0)
    if n and top > n:
        raise ValueError(f"a label is {top - 1} but the model has {n} classes; set the model's num_labels to at "
                         f"least {top} or fix the data's labels")
    return n or top


@dataclass
class Evaluation:
    """A model's figures on a held-out split: mean loss (the model's own: cross-entropy, MSE for a regression, the
    mean token cross-entropy for a causal LM), every metric of the task by name, and a few generated samples (a
    generation task: ``{"prompt", "generated", "references"}``)."""

    loss: float
    metrics: dict[str, float]
    samples: list[dict] = field(default_factory=list)


MAX_NEW_TOKENS = 64  # the run-config default (max-new-tokens)


@torch.no_grad()
def evaluate(model: nn.Module, data: Encoded, task: Task, batch_size: int = 64,
             precision: str = "fp32", max_new_tokens: int = MAX_NEW_TOKENS, num_beams: int = 1) -> Evaluation:
    """``model``'s mean loss and ``task``'s metrics (scikit-learn / SciPy on the gathered outputs) on ``data`` (eval
    mode, on the model's device; batches sorted by length, which changes no output). A task with its own
    ``evaluator`` (a causal LM: token loss, perplexity, generation of at most ``max_new_tokens``, greedy or with
    ``num_beams`` beams) evaluates itself.
    """
    if task.evaluator is not None:
        return task.evaluator(model, data, task, batch_size, precision, max_new_tokens, num_beams=num_beams)
    device = model_device(model)
    was_training = model.training
    model.eval()
    loss_sum, n = 0.0, len(data)
    outputs = torch.empty(n, task.num_labels, dtype=torch.float32)
    try:
        for idx in data.eval_batches(batch_size):  # length-sorted: same examples, less padding
            batch = to_device(data.batch(idx), device)
            with autocast(device, precision):
                out = model(**batch)
            loss_sum += float(out.loss) * len(idx)
            outputs[idx] = out.logits.detach().float().cpu().reshape(len(idx), -1)
    finally:
        model.train(was_training)
    metrics = task.score(outputs.numpy(), data.labels.numpy()) if n else {m: 0.0 for m in task.metrics}
    return Evaluation(loss=loss_sum / max(n, 1), metrics=metrics)
