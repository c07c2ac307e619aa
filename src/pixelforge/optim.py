"""Optimizer and learning-rate schedule wiring shared by every LightningModule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` x lr at ``total_steps``."""
    if warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"need warmup_steps >= 0 and 0 <= min_lr_ratio <= 1, got {warmup_steps}, {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant_with_warmup(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Linear warm-up over ``warmup_steps``, then a constant learning rate (``total_steps`` is unused)."""
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps)))


def configure_optimizer(
    params: Iterable[torch.nn.Parameter],
    optimizer: Callable[..., torch.optim.Optimizer],
    scheduler: Callable[..., LambdaLR] | None,
    total_steps: int,
) -> dict:
    """Lightning's ``configure_optimizers`` answer: the optimizer and, if any, a per-step scheduler."""
    opt = optimizer(params)
    if scheduler is None:
        return {"optimizer": opt}
    sched = scheduler(opt, total_steps=int(total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def optimizer_step(module: L.LightningModule, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   scheduler: LRScheduler | None = None) -> None:
    """One manual-optimisation step of ``loss`` (and ``scheduler``); the NonFiniteGuard callback skips a step whose
    loss or gradients are not finite, as it does under automatic optimisation."""
    optimizer.zero_grad(set_to_none=True)
    module.manual_backward(loss)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
