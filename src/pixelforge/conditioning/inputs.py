"""Encoders that pass a condition to the U-Net as it is: class labels for its label embedding (``y``) and spatial
maps joined to its input channels (``concat``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn


class Labels(nn.Module):
    """Class labels for the U-Net's own label embedding: ``B`` for one head, ``B,K`` for K heads; label
    ``num_classes[i]`` is head i's null class (the unconditional value)."""

    output: ClassVar[str] = "y"

    def __init__(self, num_classes: int | Sequence[int]) -> None:
        super().__init__()
        self.num_classes = (int(num_classes),) if isinstance(num_classes, int) else tuple(map(int, num_classes))
        if not self.num_classes or min(self.num_classes) < 1:
            raise ValueError(f"num_classes must be a positive class count per head, got {num_classes!r}")
        self.register_buffer("null", torch.tensor(self.num_classes), persistent=False)  # moves with the model

    def forward(self, labels: Any) -> torch.Tensor:
        """The labels as a long tensor on this module's device."""
        return torch.as_tensor(labels, dtype=torch.long, device=self.null.device)

    def unconditional(self, batch_size: int) -> torch.Tensor:
        """The null label of every head for ``batch_size`` samples."""
        null = self.null.expand(batch_size, -1)
        return null[:, 0].contiguous() if len(self.num_classes) == 1 else null.contiguous()


class SpatialMap(nn.Module):
    """A ``B,channels,H,W`` map in image space (a mask, a segmentation, a low-resolution image) joined to the
    U-Net's input; it has no unconditional value, so it is never dropped and both guidance passes see it."""

    output: ClassVar[str] = "concat"

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels

    def forward(self, maps: Any) -> torch.Tensor:
        """The maps as a float tensor, checked to have ``channels`` channels."""
        maps = torch.as_tensor(maps).float()
        if maps.dim() != 4 or maps.shape[1] != self.channels:
            raise ValueError(f"a spatial condition must be B,{self.channels},H,W; got {tuple(maps.shape)}")
        return maps
