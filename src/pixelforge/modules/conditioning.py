"""A diffusion U-Net together with the encoder of its cross-attention condition, so both train and average as one."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def coordinates(x: torch.Tensor) -> torch.Tensor:
    """B,2,H,W maps of the x and y coordinate of each position, from -1 (left/top) to 1 (right/bottom)."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(h, 1).expand(h, w)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, w).expand(h, w)
    return torch.stack([xs, ys]).expand(b, -1, -1, -1)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the real tokens (B,T,D) -> (B,D); ``mask`` (B,T bool, True = real) or None for all."""
    if mask is None:
        return tokens.mean(1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1)


class ConditionedUNet(nn.Module):
    """U-Net plus its ``cond_stage`` encoder (text or class embedder) and optional concatenated spatial inputs.

    Holding the encoder here puts a trainable one in the same optimizer and EMA as the U-Net (a frozen pretrained
    encoder has no parameters and is neither). ``encode`` turns raw conditions into the keyword dict ``forward``
    takes: ``context``/``context_mask`` for cross-attention, ``y`` for class labels, ``concat`` for B,C,h,w maps
    joined to the input channels. ``coord_channels`` appends two maps of the normalised x and y coordinates
    (CoordConv, Liu et al. 2018; the U-Net then takes 2 more input channels): convolutions and attention are blind
    to absolute position, which prompts such as "in the top left" name.
    """

    def __init__(self, unet: nn.Module, cond_stage: nn.Module | None = None, coord_channels: bool = False) -> None:
        super().__init__()
        self.coord_channels = coord_channels
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
        """Cross-attention keywords for raw conditions (prompts, or labels for a class embedder), and the mean token
        as ``pooled`` when the U-Net takes one."""
        if self.cond_stage is None:
            raise ValueError("this model has no cross-attention condition encoder (cond_stage)")
        context, mask = self.cond_stage(raw)
        cond = {"context": context, "context_mask": mask}
        if getattr(self.unet, "pooled_dim", None) is not None:
            cond["pooled"] = masked_mean(context, mask)
        return cond

    def forward(self, x: torch.Tensor, t: torch.Tensor, concat: torch.Tensor | None = None,
                **cond: torch.Tensor | None) -> torch.Tensor:
        """Predict for ``x`` at ``t``; ``concat`` joins the input channels, ``cond`` goes to the U-Net."""
        inputs = [x]
        if concat is not None:
            inputs.append(concat.to(x.dtype))
        if self.coord_channels:
            inputs.append(coordinates(x))
        return self.unet(torch.cat(inputs, dim=1) if len(inputs) > 1 else x, t, **cond)
