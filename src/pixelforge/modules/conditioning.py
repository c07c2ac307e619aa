"""A diffusion U-Net together with the encoder of its cross-attention condition, so both train and average as one."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ConditionedUNet(nn.Module):
    """U-Net plus its ``cond_stage`` encoder (text or class embedder) and optional concatenated spatial inputs.

    Holding the encoder here puts a trainable one in the same optimizer and EMA as the U-Net (a frozen pretrained
    encoder has no parameters and is neither). ``encode`` turns raw conditions into the keyword dict ``forward``
    takes: ``context``/``context_mask`` for cross-attention, ``y`` for class labels, ``concat`` for B,C,h,w maps
    joined to the input channels.
    """

    def __init__(self, unet: nn.Module, cond_stage: nn.Module | None = None) -> None:
        super().__init__()
        if cond_stage is not None and getattr(unet, "context_dim", None) != cond_stage.dim:
            raise ValueError(f"the U-Net's context_dim ({getattr(unet, 'context_dim', None)}) must equal the "
                             f"condition encoder's dim ({cond_stage.dim})")
        self.unet = unet
        self.cond_stage = cond_stage

    @property
    def num_classes(self) -> tuple[int, ...] | None:
        """The U-Net's class heads (None when it takes no labels)."""
        return self.unet.num_classes

    def null_labels(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The U-Net's unconditional labels."""
        return self.unet.null_labels(batch_size, device)

    def encode(self, raw: Any) -> dict[str, torch.Tensor]:
        """Cross-attention keywords for raw conditions (prompts, or labels for a class embedder)."""
        if self.cond_stage is None:
            raise ValueError("this model has no cross-attention condition encoder (cond_stage)")
        context, mask = self.cond_stage(raw)
        return {"context": context, "context_mask": mask}

    def forward(self, x: torch.Tensor, t: torch.Tensor, concat: torch.Tensor | None = None,
                **cond: torch.Tensor | None) -> torch.Tensor:
        """Predict for ``x`` at ``t``; ``concat`` joins the input channels, ``cond`` goes to the U-Net."""
        if concat is not None:
            x = torch.cat([x, concat.to(x.dtype)], dim=1)
        return self.unet(x, t, **cond)
