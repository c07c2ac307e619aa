"""Optimizer and learning-rate schedule wiring shared by every LightningModule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


class RunSchedule(LambdaLR):
    """A per-step LambdaLR that remembers the run length (``total_steps``) it was sized for, in its state.

    Resumed under another length (``-r`` with a changed ``trainer.max_epochs`` or ``max_steps``), it keeps the new
    one: from the resumed step on the lr follows the schedule of the new length (as if the run had been started
    with it), so it jumps there, and a warning gives both lengths and the lr before and after.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float], total_steps: int) -> None:
        self.total_steps = total_steps
        super().__init__(optimizer, factor)

    def load_state_dict(self, state_dict: dict) -> None:
        sized_for = state_dict.get("total_steps", self.total_steps)
        super().load_state_dict({**state_dict, "total_steps": self.total_steps})
        if sized_for == self.total_steps:
            return
        before = [group["lr"] for group in self.optimizer.param_groups]
        after = [base * factor(self.last_epoch) for base, factor in zip(self.base_lrs, self.lr_lambdas, strict=True)]
        for group, lr in zip(self.optimizer.param_groups, after, strict=True):
            group["lr"] = lr
        self._last_lr = after
        rank_zero_warn(f"the lr schedule was sized for {sized_for} steps and this run has {self.total_steps}: from "
                       f"step {self.last_epoch} on it follows the {self.total_steps}-step schedule, so the lr goes "
                       f"from {before[0]:.3g} to {after[0]:.3g}")


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as SimCLR trains with it: SGD with momentum whose step on each weight matrix is
    scaled by the trust ratio ``trust_coefficient x ||w|| / ||g + weight_decay w||``; biases and norm weights (1-D)
    are neither decayed nor adapted. torch has no LARS, and the libraries that do are not dependencies here."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 trust_coefficient: float = 0.001) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(f"LARS needs lr > 0, 0 <= momentum < 1, weight_decay >= 0 and trust_coefficient > 0, "
                             f"got {lr}, {momentum}, {weight_decay}, {trust_coefficient}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                  "trust_coefficient": trust_coefficient})

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    weight_norm, update_norm = p.norm(), update.norm()
                    ratio = group["trust_coefficient"] * weight_norm / update_norm
                    update = update * torch.where((weight_norm > 0) & (update_norm > 0), ratio, 1.0)
                state = self.state[p]
                buffer = state.setdefault("momentum_buffer", torch.zeros_like(p))
                buffer.mul_(group["momentum"]).add_(update)
                p.add_(buffer, alpha=-group["lr"])
        return loss


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.0) -> RunSchedule:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` x lr at ``total_steps``."""
    if warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"need warmup_steps >= 0 and 0 <= min_lr_ratio <= 1, got {warmup_steps}, {min_lr_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return RunSchedule(optimizer, factor, total_steps)


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
