"""The training loop's AdamW: torch's fused kernel on CPU, the same trajectory as the default implementation."""

from __future__ import annotations

import torch

from shared.training import adamw


def _trajectory(make, steps: int = 20) -> torch.Tensor:
    values, head = torch.nn.Parameter(torch.zeros(5000)), torch.nn.Parameter(torch.zeros(10))
    opt = make([{"params": [values], "lr": 1e-3}, {"params": [head], "lr": 5e-3}])
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        values.grad, head.grad = torch.randn(5000, generator=gen), torch.randn(10, generator=gen)
        opt.step()
    return torch.cat([values.detach(), head.detach()])


def test_the_loop_uses_the_fused_kernel_on_the_cpu():
    opt = adamw([{"params": [torch.nn.Parameter(torch.zeros(3))], "lr": 1e-3}])
    assert opt.defaults["fused"] is True and opt.defaults["weight_decay"] == 0.0


def test_fused_and_default_adamw_follow_the_same_trajectory():
    fused = _trajectory(adamw)
    default = _trajectory(lambda groups: torch.optim.AdamW(groups, weight_decay=0.0, foreach=True))
    assert torch.allclose(fused, default, rtol=0, atol=1e-6)
    assert float(fused.abs().max()) > 1e-2  # 20 steps moved the values: the comparison is not vacuous


def test_weight_decay_reaches_the_optimizer():
    p = torch.nn.Parameter(torch.ones(4))
    opt = adamw([{"params": [p], "lr": 0.1}], weight_decay=0.5)
    p.grad = torch.zeros(4)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((4,), 1 - 0.1 * 0.5))  # decoupled decay with a zero gradient
