"""Exponential moving average of a module's weights, kept as a frozen copy that samples and validates."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def local(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor's shard on this rank (trainer=fsdp shards the model and its EMA copy alike, so the average is
    taken shard by shard), any other tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


class EMA(nn.Module):
    """Shadow copy of ``model`` updated as ``shadow = d * shadow + (1 - d) * model`` after each optimizer step.

    With ``warmup`` the decay starts low and grows as ``min(decay, (1 + n) / (10 + n))`` (CompVis' LitEma), so
    early averages are not dominated by the random initialisation. Buffers (e.g. BatchNorm statistics) are
    copied, not averaged. The shadow is a submodule, so checkpoints keep both weight sets.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True, update_after_step: int = 0):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.update_after_step = update_after_step
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """The decay of the next update (0 before ``update_after_step``: the shadow copies the model)."""
        n = int(self.num_updates)
        if n < self.update_after_step:
            return 0.0
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow weights toward ``model``'s (one fused op per dtype group)."""
        decay = self.current_decay()
        shadow = [local(p) for p in self.module.parameters()]
        live = [local(p.detach()) for p in model.parameters()]
        torch._foreach_lerp_(shadow, live, 1.0 - decay)
        for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
        self.num_updates += 1

    def train(self, mode: bool = True) -> EMA:
        """The shadow always stays in eval mode (no dropout), whatever mode its parent is put in."""
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextmanager
    def swap(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the EMA weights into ``model`` (e.g. for an EMA validation loss), then restore."""
        pairs = list(zip(model.parameters(), self.module.parameters(), strict=True))
        for live, shadow in pairs:
            live.data, shadow.data = shadow.data, live.data
        try:
            yield
        finally:
            for live, shadow in pairs:
                live.data, shadow.data = shadow.data, live.data
