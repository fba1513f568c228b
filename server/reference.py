"""The server's own reference update: what one honest client's update measures, from data the server trusts.

FLTrust (Cao et al., NDSS 2021) bounds every client update by an update the server computes itself on a small
clean sample. Here it sets the scale of the default update bound (``update-bound = "adaptive"``,
:mod:`server.guards`) before any client has answered, so the first round's bound is never a statistic of the
replies it bounds: the server trains the method's values and head from the global state for ``local-steps`` steps
on ``trusted-examples`` rows of the training split (seeded, drawn once), with the clients' optimizer, rates,
schedule and loss, and measures the L2 norm of that delta (values + head, as a reply's is measured).
"""

from __future__ import annotations

import torch

from shared.config import RunConfig
from shared.data import encode, run_splits
from shared.runtime import Runtime
from shared.schedule import lr_factor
from shared.settings import local_loss
from shared.tasks import task_of
from shared.training import train_local
from wire.protocol import flatten_head, unflatten_head


def trusted_sample(cfg: RunConfig, tokenizer):
    """``trusted-examples`` rows of the training split drawn under the seed (the server's root sample), encoded."""
    train = run_splits(cfg)["train"]
    n = min(cfg.trusted_examples, len(train))
    rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 7_919 + 17))[:n]
    return encode(train.select(sorted(rows.tolist())), tokenizer, cfg.max_length, task=task_of(cfg))  # as clients do


def reference_norm(cfg: RunConfig, rt: Runtime, values: torch.Tensor, head: torch.Tensor, server_round: int) -> float:
    """L2 norm of :func:`reference_update`."""
    return float(reference_update(cfg, rt, values, head, server_round).norm())


def reference_update(cfg: RunConfig, rt: Runtime, values: torch.Tensor, head: torch.Tensor,
                     server_round: int, sample=None) -> torch.Tensor:
    """The update (k + h,) float64 the server's own local training makes from (``values`` (k,), ``head`` (h,)) in
    ``server_round``: the clients' recipe on the trusted sample (``sample``: it encoded once by the caller, else
    here). The runtime's tuner is left holding the trained state (every user of it loads the state it needs first)."""
    head_like = rt.tuner.head_state()
    rt.tuner.load(values, unflatten_head(head, head_like, rt.base.head_names))
    params = rt.tuner.trainable()
    lr, head_lr = rt.method.learning_rates(cfg)
    lr = 0.0 if cfg.freeze_values else lr  # as the clients train
    scale = lr_factor(server_round, cfg.num_server_rounds, cfg.lr_schedule, cfg.lr_warmup_rounds, cfg.lr_decay_rounds)
    groups = [{"params": params[:1], "lr": lr * scale}, {"params": params[1:], "lr": head_lr * scale}]
    sample = trusted_sample(cfg, rt.base.tokenizer) if sample is None else sample
    train_local(rt.base.model, groups, sample, cfg.local_steps, cfg.batch_size,
                seed=cfg.seed * 100_003 + 999_983 + server_round, weight_decay=cfg.weight_decay,
                precision=cfg.precision, group_by_length=cfg.group_by_length, loss=local_loss(cfg))
    delta = rt.tuner.values.detach().cpu().double() - values.double()
    head_delta = flatten_head(rt.tuner.head_state(), rt.base.head_names).detach().cpu().double() - head.double()
    return torch.cat([delta, head_delta])
